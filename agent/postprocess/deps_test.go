package postprocess

import (
	"go/parser"
	"go/token"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestImports enforces the package comment: of the agent's packages, postprocess imports only
// agent/infer (for its tensor types); never another stage, the pipeline or cgo.
func TestImports(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	const module = "github.com/edge-agent/edge-agent/"
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(token.NewFileSet(), name, nil, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		for _, imp := range f.Imports {
			path, _ := strconv.Unquote(imp.Path.Value)
			rel, ours := strings.CutPrefix(path, module)
			switch {
			case path == "C":
				t.Errorf("%s imports C; postprocess must build with CGO_ENABLED=0", name)
			case ours && strings.HasPrefix(rel, "agent/") && rel != "agent/infer":
				t.Errorf("%s imports %s; postprocess may import only agent/infer of the agent's packages", name, path)
			}
		}
	}
}
