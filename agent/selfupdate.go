package agent

// The selfupdate command: download a new agent binary and its minisign signature, check
// them against update.trusted_keys (keys of their own: a bundle or command key cannot vouch
// for a binary), install it with agent/update, then
// stop cleanly so cmd/edge-agent executes the new binary. The new binary must reach ready
// within update.confirm_within or the previous one comes back (agent/update).

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/edge-agent/edge-agent/agent/command"
	"github.com/edge-agent/edge-agent/agent/config"
	"github.com/edge-agent/edge-agent/agent/deploy"
	"github.com/edge-agent/edge-agent/agent/update"
	"github.com/edge-agent/edge-agent/models/sign"
)

// maxSigBytes bounds a downloaded signature file.
const maxSigBytes = 64 << 10

// BinaryVerifier checks minisign signatures of agent binaries against trusted keys (the
// update role's): a signature by one of them, made for an agent binary, naming the version
// and architecture it vouches for (agent/update checks both against the binary).
func BinaryVerifier(trusted []string) (func(bin, sig []byte) (update.Signed, error), error) {
	if len(trusted) == 0 {
		return nil, errors.New("no update.trusted_keys: a new binary must be signed by one of them")
	}
	v, err := sign.VerifierFromConfig(trusted)
	if err != nil {
		return nil, err
	}
	return func(bin, sig []byte) (update.Signed, error) {
		r, err := v.Verify(bin, sig)
		if err != nil {
			return update.Signed{}, err
		}
		b, err := sign.ParseBinary(r)
		if err != nil {
			return update.Signed{}, fmt.Errorf("key %s: %w", r.KeyID, err)
		}
		return update.Signed{KeyID: r.KeyID, Version: b.Version, Arch: b.Arch, Downgrade: b.Downgrade}, nil
	}, nil
}

func (a *Agent) selfupdateHandler(h map[string]command.Handler) {
	h["selfupdate"] = func(ctx context.Context, c command.Command, progress command.Progress) (any, error) {
		var args struct {
			URL    string `json:"url"`
			SHA256 string `json:"sha256"`
			SigURL string `json:"sig_url"`
		}
		if err := json.Unmarshal(c.Args, &args); err != nil || args.URL == "" || args.SHA256 == "" {
			return nil, errors.New(`selfupdate needs args {"url": BINARY_URL, "sha256": HEX, "sig_url": optional (default URL.minisig)}`)
		}
		if a.exe == "" {
			return nil, errors.New("this agent was not started as the edge-agent binary (edge-agent run): it cannot replace itself")
		}
		verify, err := BinaryVerifier(a.cfg.Keys(config.RoleUpdate))
		if err != nil {
			return nil, err
		}
		if args.SigURL == "" {
			args.SigURL = args.URL + ".minisig"
		}
		sig, err := a.fetchSmall(ctx, args.SigURL, maxSigBytes)
		if err != nil {
			return nil, fmt.Errorf("signature: %w", err)
		}
		path, err := a.downloadFile(ctx, args.URL, args.SHA256, update.MaxBinaryBytes, progress)
		if err != nil {
			return nil, err
		}
		defer os.Remove(path)
		f, err := os.Open(path)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		progress(1, "downloaded; checking the signature and running the new binary's preflight")
		p, err := update.Apply(ctx, f, sig, args.SHA256, update.Options{Exe: a.exe, Verify: verify,
			ConfirmWithin: a.cfg.Update.ConfirmWithin, FromVersion: Version})
		if err != nil {
			return nil, err
		}
		select { // Run waits reloadDelay, so the done reply goes out first
		case a.reload <- ErrExec:
		default:
		}
		return map[string]any{"version": p.Version, "from_version": Version, "signed_by": p.KeyID,
			"confirm_within": p.ConfirmWithin.String(), "restarting": true}, nil
	}
}

// fetchSmall GETs a small file (a signature) whole, from an allowed URL.
func (a *Agent) fetchSmall(ctx context.Context, url string, limit int64) ([]byte, error) {
	if err := a.allowed.Check(url); err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := a.allowed.Client(&http.Client{Timeout: time.Minute}).Do(req)
	if err != nil {
		fe := &deploy.FetchError{URL: url, Detail: err}
		a.log.Warn("download failed", "url", url, "err", err)
		return nil, fe
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("get %s: %s", url, resp.Status)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err == nil && int64(len(b)) > limit {
		err = fmt.Errorf("larger than %d bytes", limit)
	}
	if err != nil {
		return nil, fmt.Errorf("get %s: %w", url, err)
	}
	return b, nil
}

// downloadFile is downloadBundle for any file: from an allowed URL, one download at a time,
// resumable, capped by the kind's limit and deploy.download_budget. The caller removes the
// file when it is done with it.
func (a *Agent) downloadFile(ctx context.Context, url, sum string, maxBytes int64, progress command.Progress) (string, error) {
	if err := a.allowed.Check(url); err != nil {
		return "", err
	}
	maxBytes = min(maxBytes, int64(a.cfg.Deploy.DownloadBudget))
	select {
	case a.downloading <- struct{}{}:
	default:
		progress(0, "waiting for another download to finish")
		select {
		case a.downloading <- struct{}{}:
		case <-ctx.Done():
			return "", fmt.Errorf("waiting for another download: %w", context.Cause(ctx))
		}
	}
	defer func() { <-a.downloading }()
	client := a.allowed.Client(&http.Client{Timeout: 30 * time.Minute})
	path, err := deploy.Download(ctx, client, url, strings.ToLower(sum), filepath.Join(a.cfg.StateDir, "downloads"), maxBytes, func(done, total int64) {
		if total > 0 {
			progress(float64(done)/float64(total), fmt.Sprintf("downloaded %d of %d bytes", done, total))
		} else {
			progress(0, fmt.Sprintf("downloaded %d bytes", done))
		}
	})
	if fe := (*deploy.FetchError)(nil); errors.As(err, &fe) {
		a.log.Warn("download failed", "url", fe.URL, "err", fe.Detail)
	}
	return path, err
}
