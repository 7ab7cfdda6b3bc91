//go:build cgo

package main

import (
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// edgectl sign writes a standard minisign signature of a whole ELF executable whose trusted
// comment names its purpose, version and architecture: the real minisign CLI verifies it
// with the public key and shows that comment, and refuses it once the file changes. A file
// that is not an ELF executable (a shell script) is not signed, nor is one whose version is
// unknown.
func TestSignFileVerifiesWithMinisign(t *testing.T) {
	dir := t.TempDir()
	prefix, id := keygen(t, dir, "fleet")
	bin := filepath.Join(dir, "edge-agent-2.0.0")
	elfBytes, err := os.ReadFile("/bin/true") // an ELF executable of this machine
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, bin, string(elfBytes))
	if code, _, stderr := edgectl(t, "sign", "--key", prefix+".key", bin); code == 0 || !strings.Contains(stderr, "--version") {
		t.Errorf("sign of a binary of unknown version: exit %d, %q; want a refusal asking for --version", code, stderr)
	}
	out := mustRun(t, "sign", "--key", prefix+".key", "--version", "2.0.0", bin)
	if !strings.Contains(out, id) {
		t.Errorf("sign output %q does not name key %s", out, id)
	}
	code, vout := minisign(t, dir, "-Vm", bin, "-p", prefix+".pub")
	if code != 0 {
		t.Fatalf("minisign -V: exit %d\n%s", code, vout)
	}
	if want := "Trusted comment: edge-agent binary 2.0.0 " + runtime.GOARCH; !strings.Contains(vout, want) {
		t.Errorf("minisign -V output %q; want %q", vout, want)
	}
	mustRun(t, "sign", "--key", prefix+".key", "--version", "2.0.0", "--downgrade", "7", bin)
	if code, vout := minisign(t, dir, "-Vm", bin, "-p", prefix+".pub"); code != 0 || !strings.Contains(vout, "Trusted comment: edge-agent binary 2.0.0 "+runtime.GOARCH+" downgrade 7") {
		t.Errorf("minisign -V of a downgrade signature: exit %d, %q", code, vout)
	}
	f, _ := os.OpenFile(bin, os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString("one more byte")
	f.Close()
	if code, _ := minisign(t, dir, "-Vm", bin, "-p", prefix+".pub"); code == 0 {
		t.Fatal("minisign verified a changed file")
	}
	script := filepath.Join(dir, "evil.sh")
	writeFile(t, script, "#!/bin/sh\ntouch /tmp/pwned\n")
	if code, _, stderr := edgectl(t, "sign", "--key", prefix+".key", "--version", "9.9.9", script); code == 0 || !strings.Contains(stderr, "not an ELF executable") {
		t.Errorf("sign of a shell script: exit %d, %q; want a refusal", code, stderr)
	}
	if _, err := os.Stat(script + ".minisig"); !os.IsNotExist(err) {
		t.Errorf("a signature was written for the script (stat: %v)", err)
	}
	if code, _, stderr := edgectl(t, "selfupdate", "--device", "d", "--broker", "tcp://127.0.0.1:1", bin); code != 2 || !strings.Contains(stderr, "--url") {
		t.Errorf("selfupdate without --url: exit %d, %s; want a usage error naming --url", code, stderr)
	}
}

// The version a binary was built with is read from its -ldflags, in each spelling go build takes.
func TestLinkedVersion(t *testing.T) {
	for ld, want := range map[string]string{
		"-X github.com/edge-agent/edge-agent/agent.Version=1.4.0":               "1.4.0",
		"-s -w -X 'github.com/edge-agent/edge-agent/agent.Version=v2.0.0-rc1'":  "v2.0.0-rc1",
		"-X=github.com/edge-agent/edge-agent/agent.Version=3.1 -X main.other=1": "3.1",
		"-X main.testFault=crash": "",
		"":                        "",
	} {
		if got := linkedVersion(ld); got != want {
			t.Errorf("linkedVersion(%q) = %q; want %q", ld, got, want)
		}
	}
}
