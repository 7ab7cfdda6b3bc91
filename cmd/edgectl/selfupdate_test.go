//go:build cgo

package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// edgectl sign writes a standard minisign signature of a whole file: the real minisign CLI
// verifies it with the public key, and refuses it once the file changes.
func TestSignFileVerifiesWithMinisign(t *testing.T) {
	dir := t.TempDir()
	prefix, id := keygen(t, dir, "fleet")
	bin := filepath.Join(dir, "edge-agent-2.0.0")
	writeFile(t, bin, strings.Repeat("pretend this is an ELF binary\n", 1000))
	out := mustRun(t, "sign", "--key", prefix+".key", bin)
	if !strings.Contains(out, id) {
		t.Errorf("sign output %q does not name key %s", out, id)
	}
	if code, out := minisign(t, dir, "-Vm", bin, "-p", prefix+".pub"); code != 0 {
		t.Fatalf("minisign -V: exit %d\n%s", code, out)
	}
	f, _ := os.OpenFile(bin, os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString("one more byte")
	f.Close()
	if code, _ := minisign(t, dir, "-Vm", bin, "-p", prefix+".pub"); code == 0 {
		t.Fatal("minisign verified a changed file")
	}
	if code, _, stderr := edgectl(t, "selfupdate", "--device", "d", "--broker", "tcp://127.0.0.1:1", bin); code != 2 || !strings.Contains(stderr, "--url") {
		t.Errorf("selfupdate without --url: exit %d, %s; want a usage error naming --url", code, stderr)
	}
}
