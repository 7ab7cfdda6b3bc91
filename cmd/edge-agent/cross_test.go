package main

import (
	"bytes"
	"context"
	"debug/elf"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/edge-agent/edge-agent/agent/result"
	"github.com/edge-agent/edge-agent/internal/testenv"
)

// aarch64Sysroot is where Debian's libc6-arm64-cross keeps the arm64 loader and libc; qemu's -L
// points the emulated binary's interpreter there.
const aarch64Sysroot = "/usr/aarch64-linux-gnu"

// crossBuild is one cross/build.sh output tree and how to run its binaries.
type crossBuild struct {
	dir  string   // OUT/linux-ARCH
	wrap []string // the emulator command line in front of the binary, if any
}

func (c crossBuild) run(t *testing.T, bin string, args ...string) (stdout string) {
	t.Helper()
	// Bounded: a hung emulator fails the test instead of eating the suite's timeout.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	argv := append(append(slices.Clone(c.wrap), filepath.Join(c.dir, bin)), args...)
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s: %v\nstdout: %s\nstderr: %s", strings.Join(argv, " "), err, o.String(), e.String())
	}
	return o.String()
}

func (c crossBuild) predict(t *testing.T, args ...string) result.Result {
	t.Helper()
	out := c.run(t, "edge-agent", append([]string{"predict", "--json"}, args...)...)
	var r result.Result
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("predict %v: output is not a result: %v\n%s", args, err, out)
	}
	return r
}

// needCrossTools fails (never skips) with what to install when the toolchain or emulator is missing.
func needCrossTools(t *testing.T) string {
	t.Helper()
	const hint = "run scripts/deps.sh as root (or apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user-static)"
	qemu, err := exec.LookPath("qemu-aarch64-static")
	if err != nil {
		t.Fatalf("qemu-aarch64-static not found: %s", hint)
	}
	if _, err := exec.LookPath("aarch64-linux-gnu-gcc"); err != nil {
		t.Fatalf("the arm64 cross compiler aarch64-linux-gnu-gcc is not found: %s", hint)
	}
	if _, err := os.Stat(filepath.Join(aarch64Sysroot, "lib", "crt1.o")); err != nil {
		t.Fatalf("the arm64 C library for cross builds is missing (%v): %s", err, hint)
	}
	return qemu
}

// The arm64 build from cross/build.sh (what `make cross` runs) is a real aarch64 program with
// TensorFlow Lite 2.9 that, run under qemu, gives the same inference results as the amd64 build.
// The test binary itself needs no cgo (no build tag): the script builds both with cgo.
func TestCrossArm64MatchesAmd64(t *testing.T) {
	if runtime.GOOS != "linux" || runtime.GOARCH != "amd64" {
		// The comparison needs an amd64 host: it cross-builds arm64 and emulates it. On an
		// arm64 board the rest of the suite already runs the arm64 build natively.
		t.Skipf("cross test runs on linux/amd64 hosts; this is %s/%s", runtime.GOOS, runtime.GOARCH)
	}
	qemu := needCrossTools(t)
	root := testenv.Root(t)
	out := t.TempDir() // not dist/: `make cross` or another test may be writing there now
	const version = "0.0.0-crosstest"
	build := exec.Command("bash", filepath.Join(root, "cross", "build.sh"), "-o", out, "arm64", "amd64")
	build.Dir = root
	build.Env = append(os.Environ(), "GO_LDFLAGS=-X github.com/edge-agent/edge-agent/agent.Version="+version)
	start := time.Now()
	if b, err := build.CombinedOutput(); err != nil {
		t.Fatalf("cross/build.sh: %v\n%s", err, b)
	}
	t.Logf("cross/build.sh arm64 amd64 took %s", time.Since(start).Round(time.Second))

	arm := crossBuild{dir: filepath.Join(out, "linux-arm64"), wrap: []string{qemu, "-L", aarch64Sysroot}}
	amd := crossBuild{dir: filepath.Join(out, "linux-amd64")}

	t.Run("layout", func(t *testing.T) {
		for _, c := range []struct {
			b       crossBuild
			machine elf.Machine
		}{{arm, elf.EM_AARCH64}, {amd, elf.EM_X86_64}} {
			for _, name := range []string{"edge-agent", "edgectl", "lib/libtensorflowlite_c.so", "lib/libexternal_delegate_obj.so"} {
				checkELF(t, filepath.Join(c.b.dir, name), c.machine, !strings.HasPrefix(name, "lib/"))
			}
		}
	})

	t.Run("version", func(t *testing.T) {
		got := arm.run(t, "edge-agent", "version")
		for _, want := range []string{"edge-agent " + version, "TensorFlow Lite 2.9.0", "linux/arm64"} {
			if !strings.Contains(got, want) {
				t.Errorf("arm64 edge-agent version:\n%s\nwant it to mention %q", got, want)
			}
		}
		if got := arm.run(t, "edgectl", "version"); !strings.Contains(got, version) {
			t.Errorf("arm64 edgectl version: %q; want %q", got, version)
		}
	})

	// Both builds pick the same delegate for auto, so the comparison below is like for like.
	t.Run("auto delegate", func(t *testing.T) {
		for _, b := range []crossBuild{arm, amd} {
			var info struct{ Delegate, Runtime string }
			out := b.run(t, "edge-agent", "inspect", "--json", "--delegate", "auto", testenv.Data(t, "mnist_model.tflite"))
			if err := json.Unmarshal([]byte(out), &info); err != nil {
				t.Fatalf("inspect: %v\n%s", err, out)
			}
			if info.Delegate != "xnnpack" || info.Runtime != "tflite 2.9.0" {
				t.Errorf("%s: delegate %q runtime %q; want xnnpack on tflite 2.9.0", b.dir, info.Delegate, info.Runtime)
			}
		}
	})

	// The outputs are not bit-identical: the arm64 library runs NEON kernels and the amd64 one
	// AVX2/FMA kernels, which round and sum in a different order (seen: at most 3.6e-7, six
	// float32 ulps, on sin, and a relative 4e-6 on MNIST's smallest scores). So:
	//   - sin is a sum of O(1) terms: absolute difference ≤ 1e-5 (about 80 float32 ulps at 1);
	//   - MNIST scores are softmax outputs, whose relative error is the absolute error of the
	//     logits: relative difference ≤ 1e-4, which is still orders of magnitude below what a
	//     wrong layout, input or kernel would give.
	gt := testenv.Data(t, "sin_model.tflite")
	mnist, digitDir := testenv.Data(t, "mnist_model.tflite"), testenv.DataDir(t)
	spec := filepath.Join(t.TempDir(), "mnist.yaml")
	if err := os.WriteFile(spec, []byte("input: {image: {resize: area, color: grey, std: [255]}}\noutput: {kind: classification, classification: {top_k: 10}}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, delegate := range []string{"cpu", "xnnpack"} {
		t.Run("sin/"+delegate, func(t *testing.T) {
			var worst float64
			for _, x := range []float64{-3, -2, -1, -0.5, 0, 0.5, 1, 2, 3} {
				in := filepath.Join(t.TempDir(), "x.json")
				if err := os.WriteFile(in, []byte("[["+strconv.FormatFloat(x, 'g', -1, 64)+"]]"), 0o644); err != nil {
					t.Fatal(err)
				}
				args := []string{"--model", gt, "--input", in, "--delegate", delegate}
				a, b := arm.predict(t, args...), amd.predict(t, args...)
				if len(a.Outputs) != 1 || len(a.Outputs[0]) != 1 || len(b.Outputs) != 1 || len(b.Outputs[0]) != 1 {
					t.Fatalf("x=%g: outputs arm64 %v amd64 %v; want one value each", x, a.Outputs, b.Outputs)
				}
				ya, yb := a.Outputs[0][0], b.Outputs[0][0]
				// The model approximates sin on [-3.3, 3.4] to about 0.12: a run that ignored
				// its input could not match it.
				if math.Abs(ya-math.Sin(x)) > 0.2 {
					t.Errorf("x=%g: arm64 gives %g; want about sin(x) = %.3f", x, ya, math.Sin(x))
				}
				d := math.Abs(ya - yb)
				worst = max(worst, d)
				if d > 1e-5 {
					t.Errorf("x=%g: arm64 %.9g, amd64 %.9g differ by %.3g; want ≤ 1e-5", x, ya, yb, d)
				}
			}
			t.Logf("largest arm64/amd64 difference: %.3g", worst)
		})
		t.Run("mnist/"+delegate, func(t *testing.T) {
			var worst float64
			for digit := range 10 {
				args := []string{"--model", mnist, "--input", filepath.Join(digitDir, fmt.Sprintf("mnist_digit_%d.png", digit)), "--spec", spec, "--delegate", delegate}
				a, b := arm.predict(t, args...), amd.predict(t, args...)
				if len(a.Classes) != 10 || len(b.Classes) != 10 {
					t.Fatalf("digit %d: %d and %d classes; want all 10", digit, len(a.Classes), len(b.Classes))
				}
				if a.Classes[0].Index != b.Classes[0].Index {
					t.Errorf("digit %d: arm64 says %d, amd64 says %d", digit, a.Classes[0].Index, b.Classes[0].Index)
				}
				if digit == 7 && a.Classes[0].Index != 7 {
					t.Errorf("digit 7: arm64 says %d (%+v)", a.Classes[0].Index, a.Classes)
				}
				scores := map[int]float64{}
				for _, c := range b.Classes {
					scores[c.Index] = c.Score
				}
				for _, c := range a.Classes {
					want, ok := scores[c.Index]
					if !ok {
						t.Fatalf("digit %d: class %d only on arm64", digit, c.Index)
					}
					rel := 0.0
					if c.Score != want {
						rel = math.Abs(c.Score-want) / max(math.Abs(c.Score), math.Abs(want))
					}
					worst = max(worst, rel)
					if rel > 1e-4 {
						t.Errorf("digit %d class %d: arm64 %.9g, amd64 %.9g (relative %.3g); want ≤ 1e-4", digit, c.Index, c.Score, want, rel)
					}
				}
			}
			t.Logf("largest arm64/amd64 relative difference: %.3g", worst)
		})
	}
}

// checkELF asserts a file is an ELF object for machine; for executables, also that they need
// the TensorFlow Lite library and find it through the rpath the packages rely on.
func checkELF(t *testing.T, path string, machine elf.Machine, executable bool) {
	t.Helper()
	f, err := elf.Open(path)
	if err != nil {
		t.Errorf("%s: %v", path, err)
		return
	}
	defer f.Close()
	if f.Machine != machine || f.Class != elf.ELFCLASS64 {
		t.Errorf("%s: %v %v; want 64-bit %v", path, f.Class, f.Machine, machine)
	}
	if !executable {
		return
	}
	libs, _ := f.ImportedLibraries()
	if !slices.Contains(libs, "libtensorflowlite_c.so") {
		t.Errorf("%s needs %v; want libtensorflowlite_c.so among them (built without cgo?)", path, libs)
	}
	rp, _ := f.DynString(elf.DT_RUNPATH)
	if len(rp) != 1 || rp[0] != "$ORIGIN/lib:$ORIGIN/../lib:/opt/edge-agent/lib" {
		t.Errorf("%s: runpath %q; want $ORIGIN/lib:$ORIGIN/../lib:/opt/edge-agent/lib", path, rp)
	}
	// Release builds are stripped (-s -w): no symbol table and no DWARF.
	for _, name := range []string{".symtab", ".debug_info", ".zdebug_info"} {
		if f.Section(name) != nil {
			t.Errorf("%s has a %s section; want a stripped release build (cross/build.sh links with -s -w)", path, name)
		}
	}
}
