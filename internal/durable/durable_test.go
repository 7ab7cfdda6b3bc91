package durable

import (
	"os"
	"path/filepath"
	"testing"
)

func TestSync(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "f")
	if err := os.WriteFile(f, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{f, dir} {
		if err := Sync(p); err != nil {
			t.Errorf("Sync(%s) = %v; want nil", p, err)
		}
	}
	if err := Sync(filepath.Join(dir, "missing")); !os.IsNotExist(err) {
		t.Errorf("Sync(missing) = %v; want a not-exist error", err)
	}
}
