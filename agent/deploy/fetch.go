package deploy

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	neturl "net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// ErrChecksum means a downloaded artifact's sha256 is not the one the command named.
var ErrChecksum = errors.New("sha256 mismatch")

// Download fetches url into dir as <sha256>.bundle and returns its path. The bytes land in
// <sha256>.partial first; an interrupted download resumes from there with an HTTP Range
// request (a server that ignores Range sends it all again, and the partial file is
// replaced). The result must be exactly wantSHA256 (hex) and at most maxBytes, or it is
// deleted and refused. progress, if set, is called with the bytes so far and the total (-1
// when unknown). A file already complete in dir is returned at once.
//
// dir holds one download at a time (the caller serialises them): any other file in it, a
// partial of another download or a finished file nobody removed, is deleted first, so
// broken downloads cannot pile up. A download that would leave less than FreeReserve bytes
// free on dir's filesystem is refused (the outbox and the model store share it). The caller
// removes the returned file once it is installed.
func Download(ctx context.Context, client *http.Client, url, wantSHA256, dir string, maxBytes int64, progress func(done, total int64)) (string, error) {
	want := strings.ToLower(wantSHA256)
	if b, err := hex.DecodeString(want); err != nil || len(b) != sha256.Size {
		return "", fmt.Errorf("download %s: sha256 %q is not 64 hex digits", url, wantSHA256)
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return "", fmt.Errorf("download %s: %w", url, err)
	}
	final := filepath.Join(dir, want+".bundle")
	partial := filepath.Join(dir, want+".partial")
	removeOthers(dir, final, partial)
	if ok, _ := fileHasSum(final, want); ok {
		return final, nil
	}
	f, err := os.OpenFile(partial, os.O_RDWR|os.O_CREATE, 0o640)
	if err != nil {
		return "", fmt.Errorf("download %s: %w", url, err)
	}
	defer f.Close()
	discard := func() { f.Close(); os.Remove(partial) } // a download that cannot be used
	have, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return "", fmt.Errorf("download %s: %w", url, err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", fmt.Errorf("download %s: %w", url, err)
	}
	if have > 0 {
		req.Header.Set("Range", "bytes="+strconv.FormatInt(have, 10)+"-")
	}
	resp, err := client.Do(req)
	if err != nil {
		return "", &FetchError{URL: redactRaw(url), Detail: err}
	}
	defer resp.Body.Close()
	total := int64(-1)
	switch resp.StatusCode {
	case http.StatusPartialContent:
		if resp.ContentLength >= 0 {
			total = have + resp.ContentLength
		}
	case http.StatusOK: // no resume: start over
		if err := f.Truncate(0); err != nil {
			return "", fmt.Errorf("download %s: %w", url, err)
		}
		if _, err := f.Seek(0, io.SeekStart); err != nil {
			return "", fmt.Errorf("download %s: %w", url, err)
		}
		have, total = 0, resp.ContentLength
	case http.StatusRequestedRangeNotSatisfiable: // the partial file is complete (or wrong)
		total = have
	default:
		return "", fmt.Errorf("download %s: HTTP %s", url, resp.Status)
	}
	if total > maxBytes {
		discard()
		return "", fmt.Errorf("download %s: %d bytes is over the %d-byte limit", url, total, maxBytes)
	}
	if free, ok := freeBytes(dir); ok && total > have && total-have > free-FreeReserve {
		discard()
		return "", fmt.Errorf("download %s: %d bytes would leave less than %d MiB free on the device (%d MiB free): free disk space, or send a smaller bundle",
			url, total-have, FreeReserve>>20, free>>20)
	}
	done := have
	var last time.Time
	buf := make([]byte, 64<<10)
	for resp.StatusCode != http.StatusRequestedRangeNotSatisfiable {
		n, rerr := resp.Body.Read(buf)
		if n > 0 {
			if done+int64(n) > maxBytes {
				discard()
				return "", fmt.Errorf("download %s: over the %d-byte limit", url, maxBytes)
			}
			if _, err := f.Write(buf[:n]); err != nil {
				discard() // a full disk: give the space back at once
				return "", fmt.Errorf("download %s: %w (the partial file was deleted)", url, err)
			}
			done += int64(n)
			if progress != nil && time.Since(last) > 200*time.Millisecond {
				last = time.Now()
				progress(done, total)
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return "", fmt.Errorf("download %s: the transfer broke off at byte %d (the next attempt resumes there): %w", redactRaw(url), done, &FetchError{URL: redactRaw(url), Detail: rerr})
		}
	}
	if err := f.Sync(); err != nil {
		return "", fmt.Errorf("download %s: %w", url, err)
	}
	if progress != nil {
		progress(done, total)
	}
	if ok, got := fileHasSum(partial, want); !ok {
		discard()
		return "", fmt.Errorf("download %s: %w: got %s, want %s (the file was deleted)", url, ErrChecksum, got, want)
	}
	if err := os.Rename(partial, final); err != nil {
		return "", fmt.Errorf("download %s: %w", url, err)
	}
	return final, nil
}

// FreeReserve is the free space a download must leave on the state folder's filesystem.
const FreeReserve = 64 << 20

// removeOthers deletes every file in dir but keep (one download lives there at a time).
func removeOthers(dir string, keep ...string) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		p := filepath.Join(dir, e.Name())
		if !slices.Contains(keep, p) {
			os.RemoveAll(p)
		}
	}
}

func redactRaw(raw string) string {
	u, err := neturl.Parse(raw)
	if err != nil {
		return "(an unparsable URL)"
	}
	return redact(u)
}

// fileHasSum reports whether path's sha256 is want, and the sum it has.
func fileHasSum(path, want string) (bool, string) {
	f, err := os.Open(path)
	if err != nil {
		return false, ""
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return false, ""
	}
	got := hex.EncodeToString(h.Sum(nil))
	return got == want, got
}
