package health

import (
	"go/build"
	"strings"
	"testing"
)

// TestImports enforces the package comment: health is a leaf and imports nothing from
// agent/* or hal/*.
func TestImports(t *testing.T) {
	pkg, err := build.ImportDir(".", 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, imp := range pkg.Imports {
		for _, banned := range []string{"github.com/edge-agent/edge-agent/agent", "github.com/edge-agent/edge-agent/hal"} {
			if strings.HasPrefix(imp, banned) {
				t.Errorf("health imports %s; want nothing from %s", imp, banned)
			}
		}
	}
}
