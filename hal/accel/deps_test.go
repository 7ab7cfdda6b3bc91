package accel

import (
	"go/build"
	"strings"
	"testing"
)

// TestImports enforces the package comment: accel imports nothing from agent/.
func TestImports(t *testing.T) {
	pkg, err := build.ImportDir(".", 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, imp := range pkg.Imports {
		if strings.HasPrefix(imp, "github.com/edge-agent/edge-agent/agent") {
			t.Errorf("accel imports %s; want nothing from agent/", imp)
		}
	}
}
