package deploy

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestAllowList(t *testing.T) {
	l, err := ParseAllowList([]string{"https://fleet.example.net:443/bundles/", "http://10.0.0.2:8080", "https://cdn.example.net"})
	if err != nil {
		t.Fatal(err)
	}
	for raw, want := range map[string]bool{
		"https://fleet.example.net/bundles/sin-1.1.0.bundle":  true,
		"https://fleet.example.net/bundles":                   true,
		"https://FLEET.example.net/bundles/a":                 true,
		"https://fleet.example.net:443/bundles/a":             true, // the entry's port is https's default
		"https://fleet.example.net/bundlesX/a":                false,
		"https://fleet.example.net/bundles/../admin":          false,
		"https://fleet.example.net/other":                     false,
		"http://fleet.example.net/bundles/a":                  false, // scheme
		"https://fleet.example.net:8443/bundles/a":            false, // a port the entry does not name
		"https://user:pw@fleet.example.net/bundles/a":         false,
		"http://10.0.0.2:8080/x":                              true,
		"http://10.0.0.2:22/x":                                false,
		"http://10.0.0.2/x":                                   false,
		"https://cdn.example.net:9443/x":                      true, // no port in the entry: any
		"https://cdn.example.net.evil.org/x":                  false,
		"https://evil.org/https://fleet.example.net/bundles/": false,
		"file:///etc/passwd":                                  false,
		"ftp://fleet.example.net/bundles/a":                   false,
	} {
		if got := l.Check(raw) == nil; got != want {
			t.Errorf("Check(%s) allowed=%v; want %v (%v)", raw, got, want, l.Check(raw))
		}
	}
	if err := l.Check("https://user:secret@fleet.example.net/x?token=abc"); err == nil || strings.Contains(err.Error(), "secret") || strings.Contains(err.Error(), "abc") {
		t.Errorf("refusal %v; want one that does not repeat credentials or the query", err)
	}
	if err := (AllowList{}).Check("https://fleet.example.net/b"); err == nil || !strings.Contains(err.Error(), "deploy.allowed_urls") {
		t.Errorf("empty list: %v; want a refusal naming deploy.allowed_urls", err)
	}
	for _, bad := range []string{"fleet.example.net", "ftp://x/", "https://", "https://h/?q=1", "https://u@h/"} {
		if _, err := ParseAllowList([]string{bad}); err == nil {
			t.Errorf("ParseAllowList(%q) accepted it", bad)
		}
	}
}

// Redirects are followed only inside the list; a redirect out of it is refused and named.
func TestDownloadRedirectsStayInside(t *testing.T) {
	body := []byte(strings.Repeat("bundle", 100))
	s := sha256.Sum256(body)
	sum := hex.EncodeToString(s[:])
	outside := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write(body) }))
	defer outside.Close()
	var inside *httptest.Server
	inside = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/ok":
			w.Write(body)
		case "/here":
			http.Redirect(w, r, inside.URL+"/ok", http.StatusFound)
		case "/away":
			http.Redirect(w, r, outside.URL+"/b", http.StatusFound)
		case "/loop":
			http.Redirect(w, r, inside.URL+"/loop", http.StatusFound)
		}
	}))
	defer inside.Close()
	l, err := ParseAllowList([]string{inside.URL})
	if err != nil {
		t.Fatal(err)
	}
	client := l.Client(&http.Client{Timeout: time.Minute})
	if _, err := Download(context.Background(), client, inside.URL+"/here", sum, t.TempDir(), 1<<20, nil); err != nil {
		t.Errorf("a redirect inside the list: %v", err)
	}
	for path, why := range map[string]string{"/away": "not under deploy.allowed_urls", "/loop": "more than 5 times"} {
		_, err := Download(context.Background(), client, inside.URL+path, sum, t.TempDir(), 1<<20, nil)
		if err == nil || !strings.Contains(err.Error(), why) {
			t.Errorf("%s: %v; want refused: %s", path, err, why)
		}
	}
}

// A download that fails tells the fleet the same thing whether the port is closed, answers
// with something that is not HTTP, or never answers: nothing about the network behind it.
func TestFetchErrorSaysNothingAboutPorts(t *testing.T) {
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedAddr := closed.Addr().String()
	closed.Close()
	ssh, _ := net.Listen("tcp", "127.0.0.1:0") // a listener that talks another protocol
	defer ssh.Close()
	go func() {
		for {
			c, err := ssh.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("SSH-2.0-OpenSSH_9.2\r\n"))
			c.Close()
		}
	}()
	silent, _ := net.Listen("tcp", "127.0.0.1:0") // accepts and says nothing
	defer silent.Close()
	go func() {
		for {
			c, err := silent.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	client := &http.Client{Timeout: 300 * time.Millisecond}
	seen := map[string]string{}
	for name, addr := range map[string]string{"closed": closedAddr, "ssh": ssh.Addr().String(), "silent": silent.Addr().String()} {
		_, err := Download(context.Background(), client, "http://"+addr+"/b", strings.Repeat("0", 64), t.TempDir(), 1<<20, nil)
		var fe *FetchError
		if !errors.As(err, &fe) || fe.Detail == nil {
			t.Fatalf("%s: %v; want a FetchError with the detail kept", name, err)
		}
		seen[name] = strings.ReplaceAll(err.Error(), addr, "ADDR")
	}
	if seen["closed"] != seen["ssh"] || seen["ssh"] != seen["silent"] {
		t.Errorf("the errors differ by what listens:\n%s", fmt.Sprint(seen))
	}
	for _, word := range []string{"refused", "timeout", "malformed", "EOF", "deadline"} {
		if strings.Contains(seen["closed"]+seen["ssh"]+seen["silent"], word) {
			t.Errorf("an error says %q: %v", word, seen)
		}
	}
}

// The downloads folder holds one download: partials of broken downloads, and finished files
// nobody removed, go when the next download starts; an oversized one leaves nothing.
func TestDownloadKeepsOneFile(t *testing.T) {
	body := bytes.Repeat([]byte("b"), 200_000)
	s := sha256.Sum256(body)
	sum := hex.EncodeToString(s[:])
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/broken" {
			w.Header().Set("Content-Length", "200000")
			w.WriteHeader(http.StatusOK)
			w.Write(body[:50_000])
			w.(http.Flusher).Flush()
			c, _, _ := w.(http.Hijacker).Hijack()
			c.Close()
			return
		}
		http.ServeContent(w, r, "b", time.Time{}, bytes.NewReader(body))
	}))
	defer srv.Close()
	dir := t.TempDir()
	for i := range 3 {
		other := fmt.Sprintf("%064x", i+1)
		if _, err := Download(context.Background(), srv.Client(), srv.URL+"/broken", other, dir, 1<<20, nil); err == nil {
			t.Fatal("a broken download succeeded")
		}
	}
	if files, _ := filepath.Glob(filepath.Join(dir, "*")); len(files) != 1 {
		t.Errorf("after 3 broken downloads the folder holds %v; want the last partial only", files)
	}
	os.WriteFile(filepath.Join(dir, strings.Repeat("c", 64)+".bundle"), []byte("an old finished file"), 0o640)
	path, err := Download(context.Background(), srv.Client(), srv.URL+"/ok", sum, dir, 1<<20, nil)
	if err != nil {
		t.Fatal(err)
	}
	if files, _ := filepath.Glob(filepath.Join(dir, "*")); len(files) != 1 || files[0] != path {
		t.Errorf("after a good download the folder holds %v; want only %s", files, path)
	}
	os.Remove(path)
	if _, err := Download(context.Background(), srv.Client(), srv.URL+"/ok", sum, dir, 100_000, nil); err == nil {
		t.Fatal("an oversized download succeeded")
	}
	if files, _ := filepath.Glob(filepath.Join(dir, "*")); len(files) != 0 {
		t.Errorf("an oversized download left %v", files)
	}
}
