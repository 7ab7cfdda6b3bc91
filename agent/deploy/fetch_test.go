package deploy

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// A server that breaks the first transfer half way: the second attempt resumes with a
// Range request and the result is the exact file.
func TestDownloadResumesAfterInterruption(t *testing.T) {
	body := make([]byte, 300_000)
	for i := range body {
		body[i] = byte(rand.IntN(256))
	}
	sum := sha256.Sum256(body)
	want := hex.EncodeToString(sum[:])
	var calls atomic.Int32
	var ranges []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if calls.Add(1) == 1 {
			// Promise the whole body, send a third, then drop the connection.
			w.Header().Set("Content-Length", "300000")
			w.WriteHeader(http.StatusOK)
			w.Write(body[:100_000])
			w.(http.Flusher).Flush()
			conn, _, _ := w.(http.Hijacker).Hijack()
			conn.Close()
			return
		}
		ranges = append(ranges, r.Header.Get("Range"))
		http.ServeContent(w, r, "b", time.Time{}, bytes.NewReader(body))
	}))
	defer srv.Close()
	dir := t.TempDir()
	if _, err := Download(context.Background(), srv.Client(), srv.URL, want, dir, 1<<20, nil); err == nil {
		t.Fatal("first attempt succeeded; the server cut it")
	}
	var seen []int64
	path, err := Download(context.Background(), srv.Client(), srv.URL, want, dir, 1<<20, func(done, total int64) { seen = append(seen, done) })
	if err != nil {
		t.Fatal(err)
	}
	if len(ranges) != 1 || !strings.HasPrefix(ranges[0], "bytes=") || ranges[0] == "bytes=0-" {
		t.Errorf("Range headers %q; want one resuming request", ranges)
	}
	got, _ := os.ReadFile(path)
	if !bytes.Equal(got, body) {
		t.Fatalf("downloaded %d bytes differ from the served %d", len(got), len(body))
	}
	if len(seen) == 0 || seen[len(seen)-1] != int64(len(body)) {
		t.Errorf("progress %v; want it to end at %d", seen, len(body))
	}
	if _, err := os.Stat(filepath.Join(dir, want+".partial")); !os.IsNotExist(err) {
		t.Errorf("partial file left behind: %v", err)
	}
}

func TestDownloadRefusesWrongSumAndOversize(t *testing.T) {
	body := []byte(strings.Repeat("bundle", 1000))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.ServeContent(w, r, "b", time.Time{}, bytes.NewReader(body))
	}))
	defer srv.Close()
	dir := t.TempDir()
	wrong := strings.Repeat("ab", 32)
	_, err := Download(context.Background(), srv.Client(), srv.URL, wrong, dir, 1<<20, nil)
	if !errors.Is(err, ErrChecksum) {
		t.Errorf("wrong sum: %v; want ErrChecksum", err)
	}
	if left, _ := filepath.Glob(filepath.Join(dir, "*")); len(left) != 0 {
		t.Errorf("files left after a refused download: %v", left)
	}
	sum := sha256.Sum256(body)
	if _, err := Download(context.Background(), srv.Client(), srv.URL, hex.EncodeToString(sum[:]), dir, 100, nil); err == nil || !strings.Contains(err.Error(), "limit") {
		t.Errorf("oversize: %v; want a limit error", err)
	}
	if _, err := Download(context.Background(), srv.Client(), srv.URL, "xyz", dir, 100, nil); err == nil {
		t.Error("a malformed sha256 was accepted")
	}
}
