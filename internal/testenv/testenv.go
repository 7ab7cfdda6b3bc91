// Package testenv finds the real test inputs the project's tests use: the shared test data
// beside the repository (../shared/testdata) and the example models shipped in the pinned
// go-tflite module. A missing input fails the test with what to do; it never skips.
package testenv

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// Root is the repository root (the directory holding go.mod).
func Root(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		if dir == filepath.Dir(dir) {
			t.Fatal("testenv: go.mod not found above the test's directory")
		}
		dir = filepath.Dir(dir)
	}
}

// Shared returns the path of a file in ../shared/testdata, failing the test when it is absent.
func Shared(t testing.TB, name string) string {
	t.Helper()
	p := filepath.Join(Root(t), "..", "shared", "testdata", name)
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("test data %s is missing (%v): the tests read ../shared/testdata beside the repository checkout", p, err)
	}
	return p
}

// GoTflite returns the path of a file inside the pinned github.com/mattn/go-tflite module
// (its example models), downloading the module through the Go module proxy if needed.
func GoTflite(t testing.TB, rel string) string {
	t.Helper()
	cmd := exec.Command("go", "mod", "download", "-json", "github.com/mattn/go-tflite@v1.0.5")
	cmd.Dir = Root(t)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go mod download github.com/mattn/go-tflite@v1.0.5: %v (the module proxy must be reachable)", err)
	}
	const key = `"Dir": "`
	i := strings.Index(string(out), key)
	if i < 0 {
		t.Fatalf("go mod download gave no Dir: %s", out)
	}
	dir := string(out[i+len(key):])
	dir = dir[:strings.Index(dir, `"`)]
	p := filepath.Join(dir, rel)
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("go-tflite example file %s is missing: %v", p, err)
	}
	return p
}
