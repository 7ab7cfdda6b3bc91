package depcheck

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/edge-agent/edge-agent/internal/testenv"
)

// checkTracked runs scripts/check-tracked.sh (the check `make lint` runs) on repo.
func checkTracked(t *testing.T, repo string) (string, error) {
	t.Helper()
	cmd := exec.Command("bash", filepath.Join(testenv.Root(t), "scripts", "check-tracked.sh"), repo)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// gitRepo makes a repository in a temporary folder holding files (path → content), all added.
func gitRepo(t *testing.T, files map[string][]byte) string {
	t.Helper()
	dir := t.TempDir()
	git := func(args ...string) {
		cmd := exec.Command("git", args...)
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("git %v: %v\n%s", args, err, out)
		}
	}
	git("init", "-q")
	for name, data := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	git("add", "-A")
	return dir
}

// The lint check refuses a tracked executable (a real ELF binary, whatever its mode and name)
// and a tracked file over 1 MiB, and accepts both inside a testdata/ folder.
func TestCheckTrackedRefusesBinariesAndLargeFiles(t *testing.T) {
	self, err := os.Executable() // this test binary: a real ELF executable
	if err != nil {
		t.Fatal(err)
	}
	elf, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	big := bytes.Repeat([]byte("0123456789abcdef\n"), 70000) // 1.13 MiB of text
	clean := map[string][]byte{
		"README.md":                 []byte("# hello\n"),
		"scripts/run.sh":            []byte("#!/bin/sh\necho hi\n"),
		"testdata/model.bin":        big,
		"pkg/testdata/tool":         elf,
		"docs/picture-under-1m.png": bytes.Repeat([]byte{0x89, 'P', 'N', 'G'}, 1000),
	}
	if out, err := checkTracked(t, gitRepo(t, clean)); err != nil {
		t.Fatalf("a clean repository was refused: %v\n%s", err, out)
	}
	for _, tc := range []struct{ name, path, want string }{
		{"binary", "edgectl", "edgectl is tracked and is an executable binary"},
		{"renamed binary", "docs/notes.txt", "docs/notes.txt is tracked and is an executable binary"},
		{"large file", "data/big.txt", "data/big.txt is tracked and 1190000 bytes (over 1 MiB)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			files := map[string][]byte{"README.md": []byte("# hello\n")}
			files[tc.path] = elf
			if tc.name == "large file" {
				files[tc.path] = big
			}
			out, err := checkTracked(t, gitRepo(t, files))
			if err == nil {
				t.Fatalf("check passed with %s tracked; want a failure\n%s", tc.path, out)
			}
			if !strings.Contains(out, tc.want) {
				t.Errorf("output %q; want it to say %q", out, tc.want)
			}
		})
	}
}

// The repository itself passes the check.
func TestRepositoryTracksNoBuildOutput(t *testing.T) {
	if out, err := checkTracked(t, testenv.Root(t)); err != nil {
		t.Fatalf("scripts/check-tracked.sh refused this repository: %v\n%s", err, out)
	}
}
