package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/edge-agent/edge-agent/agent"
	"github.com/edge-agent/edge-agent/agent/config"
	"github.com/edge-agent/edge-agent/agent/result"
	"github.com/edge-agent/edge-agent/agent/update"
)

// testFault is set only by the self-update tests (-ldflags -X main.testFault=F) to build a
// new binary that fails in one way: crash (panics once the agent is built), hang (runs, never
// ready), exit (run fails before anything) or wedge (run blocks before anything). Release
// builds leave it empty.
var testFault string

// restartExitCode is what `edge-agent run` exits with after a selfupdate command installed a
// new binary under a service manager; the unit restarts on it (RestartForceExitStatus), so the
// new binary's start goes through the previous binary's guard and the start timeout.
const restartExitCode = 75

var errRestart = errors.New("a new binary is installed: exiting so that the service manager starts it (exit status 75)")

// underServiceManager reports whether systemd started this process (it sets INVOCATION_ID
// for every service it runs).
func underServiceManager() bool { return os.Getenv("INVOCATION_ID") != "" }

// cmdGuard: edge-agent guard [--exe FILE]. The unit runs it from the previous binary before
// every start (ExecStartPre=-/opt/edge-agent/bin/edge-agent.previous guard): it counts the
// start of a pending update and restores the previous binary after update.MaxStarts starts
// that did not confirm. It exits 0 when there is nothing to do.
func cmdGuard(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("guard", flag.ContinueOnError)
	fs.SetOutput(stderr)
	exe := fs.String("exe", "", "the binary the service runs (default: this binary's path without .previous)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Errorf("unexpected arguments %v", fs.Args())}
	}
	if *exe == "" {
		self, err := update.Executable()
		if err != nil {
			return fmt.Errorf("find this binary: %w (give --exe)", err)
		}
		*exe = strings.TrimSuffix(self, ".previous")
	}
	r, err := update.Guard(*exe)
	if err != nil {
		return err
	}
	if r != nil {
		fmt.Fprintf(stderr, "edge-agent guard: update to %s rolled back (%s): %s is the previous binary again\n", r.Version, r.Reason, *exe)
	}
	return nil
}

// beginTrial counts this start of a pending update's new binary (agent/update.Begin).
func beginTrial(exe string, exeErr error, stderr io.Writer) (*update.Trial, error) {
	if exeErr != nil {
		fmt.Fprintf(stderr, "edge-agent: cannot find the running binary (%v): self-update checks skipped\n", exeErr)
		return nil, nil
	}
	t, err := update.Begin(exe)
	switch {
	case errors.Is(err, update.ErrReverted):
		r, _ := update.LastResult(exe)
		fmt.Fprintf(stderr, "edge-agent: update to %s rolled back (%s): starting the previous binary\n", r.Version, r.Reason)
	case err != nil:
		fmt.Fprintf(stderr, "edge-agent: %v\n", err)
	}
	return t, err
}

// execSelf replaces this process with the binary at exe, with the same arguments and
// environment (the service keeps its process id).
func execSelf(exe string) error {
	err := syscall.Exec(exe, os.Args, os.Environ())
	return fmt.Errorf("execute %s: %w (start the service again)", exe, err)
}

// reportUpdate sends the last update's outcome as an event, once.
func reportUpdate(a *agent.Agent, exe string, log *slog.Logger) {
	r, ok := update.LastResult(exe)
	if !ok || r.Reported {
		return
	}
	e := result.Event{Type: "update." + r.Outcome, Severity: "info", Component: "update",
		Message: fmt.Sprintf("agent updated from %s to %s", r.FromVersion, r.Version),
		Data:    map[string]any{"version": r.Version, "from_version": r.FromVersion, "at": r.At}}
	if r.Outcome == update.OutcomeRolledBack {
		e.Severity = "warning"
		e.Message = fmt.Sprintf("update from %s to %s rolled back: %s", r.FromVersion, r.Version, r.Reason)
		e.Data["reason"] = r.Reason
	}
	a.Event(e)
	log.Info("self-update", "outcome", r.Outcome, "version", r.Version, "from", r.FromVersion, "reason", r.Reason)
	if err := update.MarkReported(exe); err != nil {
		log.Warn("self-update: record that the outcome was reported", "err", err)
	}
}

// cmdUpdate: edge-agent update --from URL|FILE [--sig URL|FILE] [--sha256 HEX] [--config FILE]
func cmdUpdate(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("update", flag.ContinueOnError)
	fs.SetOutput(stderr)
	from := fs.String("from", "", "the new binary: an http(s) URL or a file")
	sigFrom := fs.String("sig", "", "its minisign signature: URL or file (default FROM.minisig)")
	sum := fs.String("sha256", "", "its sha256 (hex), checked when given")
	path := fs.String("config", config.DefaultPath, "configuration file (for update.trusted_keys and update.confirm_within)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *from == "" || fs.NArg() > 0 {
		return usageError{errors.New("update needs --from URL|FILE and no other arguments")}
	}
	if *sigFrom == "" {
		*sigFrom = *from + ".minisig"
	}
	cfg, err := config.Load(*path)
	if err != nil {
		return err
	}
	verify, err := agent.BinaryVerifier(cfg.Keys(config.RoleUpdate))
	if err != nil {
		return fmt.Errorf("config %s: %w", *path, err)
	}
	ctx, stop := context.WithTimeout(context.Background(), 30*time.Minute)
	defer stop()
	sig, err := readSource(ctx, *sigFrom, 64<<10)
	if err != nil {
		return fmt.Errorf("signature: %w", err)
	}
	bin, err := openSource(ctx, *from)
	if err != nil {
		return err
	}
	defer bin.Close()
	p, err := update.Apply(ctx, bin, sig, *sum, update.Options{Verify: verify, ConfirmWithin: cfg.Update.ConfirmWithin, FromVersion: agent.Version})
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "installed edge-agent %s (was %s), signed by %s\n", p.Version, agent.Version, p.KeyID)
	fmt.Fprintf(stdout, "restart the agent to run it (systemctl restart edge-agent); it must be ready within %v or the previous binary comes back\n", p.ConfirmWithin)
	return nil
}

func isURL(s string) bool { return strings.HasPrefix(s, "http://") || strings.HasPrefix(s, "https://") }

// openSource opens a file or GETs a URL.
func openSource(ctx context.Context, src string) (io.ReadCloser, error) {
	if !isURL(src) {
		return os.Open(src)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, src, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("get %s: %w", src, err)
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		return nil, fmt.Errorf("get %s: %s", src, resp.Status)
	}
	return resp.Body, nil
}

func readSource(ctx context.Context, src string, limit int64) ([]byte, error) {
	r, err := openSource(ctx, src)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	b, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err == nil && int64(len(b)) > limit {
		err = fmt.Errorf("%s is larger than %d bytes", src, limit)
	}
	return b, err
}
