package depcheck

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/edge-agent/edge-agent/internal/testenv"
)

const mod = "github.com/edge-agent/edge-agent/"

type pkg struct {
	ImportPath string
	Imports    []string
	GoFiles    []string
	Dir        string
}

func list(t *testing.T, env ...string) []pkg {
	t.Helper()
	cmd := exec.Command("go", "list", "-json", "./...")
	cmd.Dir = testenv.Root(t)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	var pkgs []pkg
	dec := json.NewDecoder(bytes.NewReader(out))
	for dec.More() {
		var p pkg
		if err := dec.Decode(&p); err != nil {
			t.Fatal(err)
		}
		pkgs = append(pkgs, p)
	}
	return pkgs
}

func rel(p string) string { return strings.TrimPrefix(p, mod) }

func TestImportRules(t *testing.T) {
	stages := []string{"agent/preprocess", "agent/infer/tflite", "agent/postprocess", "agent/outbox", "agent/link", "agent/drift"}
	owners := map[string]string{
		"github.com/mattn/go-tflite":          "agent/infer/tflite",
		"github.com/eclipse/paho.mqtt.golang": "agent/link",
		"go.etcd.io/bbolt":                    "agent/outbox",
	}
	for _, p := range list(t) {
		me := rel(p.ImportPath)
		for _, imp := range p.Imports {
			dep := rel(imp)
			if (strings.HasPrefix(me, "hal/") || strings.HasPrefix(me, "models/")) && strings.HasPrefix(dep, "agent") {
				t.Errorf("%s imports %s: hal and models must not import agent", me, dep)
			}
			for _, s := range stages {
				if strings.HasPrefix(me, s) && dep != s && !strings.HasPrefix(dep, s+"/") {
					for _, other := range stages {
						if other != s && (dep == other || strings.HasPrefix(dep, other+"/")) {
							t.Errorf("stage %s imports stage %s: join them in agent/pipeline or agent/agent.go", me, dep)
						}
					}
				}
			}
			for lib, owner := range owners {
				// internal/mqtttest is the fleet-side consumer tests use; TestTestHelpersStayOutOfBinaries keeps it out of binaries.
				if me == "internal/mqtttest" && lib == "github.com/eclipse/paho.mqtt.golang" {
					continue
				}
				// The fleet console's client (edgectl) is the other end of the link, not a second device link.
				if me == "internal/fleetclient" && lib == "github.com/eclipse/paho.mqtt.golang" {
					continue
				}
				// The small state store (command ids) is bbolt's second and last importer (DESIGN.md).
				if me == "agent/state" && lib == "go.etcd.io/bbolt" {
					continue
				}
				if (imp == lib || strings.HasPrefix(imp, lib+"/")) && me != owner {
					t.Errorf("%s imports %s; only %s may", me, imp, owner)
				}
			}
			if strings.HasPrefix(me, "agent/") && strings.HasPrefix(dep, "cmd/") {
				t.Errorf("%s imports %s: dependencies point from cmd to agent", me, dep)
			}
		}
	}
}

// Test helpers (real brokers, consumers, signed fixture bundles) never end up in a binary.
func TestTestHelpersStayOutOfBinaries(t *testing.T) {
	cmd := exec.Command("go", "list", "-deps", "./cmd/...")
	cmd.Dir = testenv.Root(t)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	for _, dep := range strings.Fields(string(out)) {
		switch rel(dep) {
		case "internal/mqtttest", "internal/testenv", "internal/bundletest":
			t.Errorf("a binary under cmd/ depends on the test helper %s", rel(dep))
		}
	}
}

// On the device only agent/status may run an HTTP server; other agent packages may be HTTP
// clients. The fleet server (edgectl serve) is the console's own server.
func TestOneHTTPServer(t *testing.T) {
	root := testenv.Root(t)
	for _, p := range list(t) {
		if r := rel(p.ImportPath); r == "agent/status" || r == "cmd/edgectl" {
			continue
		}
		for _, f := range p.GoFiles {
			b, err := os.ReadFile(filepath.Join(p.Dir, f))
			if err != nil {
				t.Fatal(err)
			}
			for _, s := range []string{"http.Server{", "ListenAndServe(", "http.Serve("} {
				if bytes.Contains(b, []byte(s)) {
					r, _ := filepath.Rel(root, filepath.Join(p.Dir, f))
					t.Errorf("%s uses %s: the HTTP server lives in agent/status only", r, s)
				}
			}
		}
	}
}

// Everything but the engine builds without cgo, and then the engine package is empty.
func TestBuildsWithoutCgo(t *testing.T) {
	cmd := exec.Command("go", "build", "./...")
	cmd.Dir = testenv.Root(t)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("CGO_ENABLED=0 go build ./...: %v\n%s", err, out)
	}
	for _, p := range list(t, "CGO_ENABLED=0") {
		for _, imp := range p.Imports {
			if imp == "github.com/mattn/go-tflite" {
				t.Errorf("%s imports go-tflite in a CGO_ENABLED=0 build", rel(p.ImportPath))
			}
		}
	}
}

// A binary built without cgo still runs and says clearly that it has no inference engine.
func TestNoCgoBinarySaysNoEngine(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "edge-agent")
	build := exec.Command("go", "build", "-o", bin, "./cmd/edge-agent")
	build.Dir = testenv.Root(t)
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("CGO_ENABLED=0 go build: %v\n%s", err, out)
	}
	out, err := exec.Command(bin, "version").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "no inference engine") {
		t.Errorf("version: %v\n%s\nwant it to say there is no inference engine", err, out)
	}
	out, err = exec.Command(bin, "predict", "--model", "m.tflite", "--input", testenv.Data(t, "mnist_digit_1.png")).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "no inference engine in this build") || !strings.Contains(string(out), "CGO_ENABLED=1") {
		t.Errorf("predict: %v\n%s\nwant a failure saying how to get an engine", err, out)
	}
}

// Packages whose comment limits what they may import of this module: the full list of their
// allowed module imports (an import outside it fails).
func TestLeafPackages(t *testing.T) {
	allowed := map[string][]string{
		"agent/health":          {},
		"agent/outbox":          {"internal/durable", "internal/boltcheck"},
		"agent/state":           {"internal/durable", "internal/boltcheck"},
		"internal/boltcheck":    {},
		"agent/command":         {},
		"internal/rollout":      {"agent/command", "internal/durable"},
		"agent/update":          {"internal/durable"},
		"agent/drift":           {"agent/infer", "models/bundle"},
		"agent/status":          {"agent/health", "agent/infer", "agent/pipeline", "agent/result", "hal/sensor", "hal/sensor/file"},
		"internal/simfleet":     {"agent/link", "agent/command", "agent/result"},
		"agent/link":            {"hal/sensor"},
		"agent/result":          {},
		"agent/infer":           {"internal/registry"},
		"agent/infer/tflitefmt": {},
		"agent/preprocess":      {"agent/infer", "hal/sensor", "models/spec"},
		"agent/postprocess":     {"agent/infer", "agent/result", "models/spec"},
		"models/spec":           {},
		"hal/accel":             {"hal/internal/hostfs"},
		"hal/board":             {"hal/internal/hostfs"},
	}
	for _, p := range list(t) {
		want, ok := allowed[rel(p.ImportPath)]
		if !ok {
			continue
		}
		for _, imp := range p.Imports {
			if !strings.HasPrefix(imp, mod) {
				if imp == "C" {
					t.Errorf("%s imports C; it must build without cgo", rel(p.ImportPath))
				}
				continue
			}
			if !slices.Contains(want, rel(imp)) {
				t.Errorf("%s imports %s; it may import only %v of this module", rel(p.ImportPath), rel(imp), want)
			}
		}
	}
}
