//go:build cgo

package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/edge-agent/edge-agent/agent/result"
	"github.com/edge-agent/edge-agent/internal/testenv"
)

func cli(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var o, e bytes.Buffer
	code = run(args, &o, &e)
	return code, o.String(), e.String()
}

func TestPredictMNISTJSON(t *testing.T) {
	spec := filepath.Join(t.TempDir(), "mnist.yaml")
	os.WriteFile(spec, []byte("input: {image: {resize: area, color: grey, std: [255]}}\noutput: {kind: classification, classification: {top_k: 3}}\n"), 0o644)
	code, out, errOut := cli(t, "predict", "--model", testenv.Data(t, "mnist_model.tflite"),
		"--input", testenv.Data(t, "mnist_digit_7.png"), "--spec", spec, "--json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	var r result.Result
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("output is not a result: %v\n%s", err, out)
	}
	if len(r.Classes) != 3 || r.Classes[0].Index != 7 || r.Schema != result.Schema {
		t.Fatalf("result %+v; want 3 classes with 7 first", r)
	}
}

func TestPredictSSDText(t *testing.T) {
	dir := t.TempDir()
	spec := filepath.Join(dir, "ssd.yaml")
	os.WriteFile(spec, []byte(`input: {image: {mean: [127.5], std: [127.5]}}
output: {kind: detection, labels_file: `+testenv.Data(t, "ssd_labelmap.txt")+`, label_offset: 1}
`), 0o644)
	code, out, errOut := cli(t, "predict", "--model", testenv.Data(t, "ssd_mobilenet_detect.tflite"),
		"--input", testenv.Data(t, "ssd_example.jpg"), "--spec", spec)
	if code != 0 || !strings.Contains(out, "person") {
		t.Fatalf("exit %d, stdout %q, stderr %q; want a person", code, out, errOut)
	}
}

// With no spec, a quantised uint8 input is fed the pixel bytes as they are (its own scale and
// zero point say so), and the raw outputs already hold a confident detection.
func TestPredictQuantisedImageWithoutSpec(t *testing.T) {
	code, out, errOut := cli(t, "predict", "--model", testenv.Data(t, "ssd_mobilenet_detect.tflite"),
		"--input", testenv.Data(t, "ssd_example.jpg"), "--json")
	var r result.Result
	if code != 0 || json.Unmarshal([]byte(out), &r) != nil || len(r.Outputs) != 4 {
		t.Fatalf("exit %d out %q err %q", code, out, errOut)
	}
	if top := r.Outputs[2][0]; top < 0.5 {
		t.Fatalf("top detection score %.3f; want ≥ 0.5 (scores %v)", top, r.Outputs[2])
	}
}

func TestPredictNumbersFromJSON(t *testing.T) {
	in := filepath.Join(t.TempDir(), "x.json")
	os.WriteFile(in, []byte("[[1, 0]]"), 0o644)
	code, out, errOut := cli(t, "predict", "--model", testenv.Data(t, "xor_model.tflite"), "--input", in, "--json")
	var r result.Result
	if code != 0 || json.Unmarshal([]byte(out), &r) != nil || len(r.Outputs) != 1 || r.Outputs[0][0] < 0.5 {
		t.Fatalf("exit %d out %q err %q; want xor(1,0) > 0.5", code, out, errOut)
	}
}

func TestPredictErrors(t *testing.T) {
	bad := filepath.Join(t.TempDir(), "bad.tflite")
	os.WriteFile(bad, []byte("definitely not a model"), 0o644)
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"predict"}, 2, "--model and --input are required"},
		{[]string{"predict", "--model", bad, "--input", testenv.Data(t, "mnist_digit_1.png")}, 1, "not a valid TensorFlow Lite model"},
		{[]string{"predict", "--model", testenv.Data(t, "mnist_model.tflite"), "--input", testenv.Data(t, "ssd_labelmap.txt")}, 1, "not a PNG, JPEG or .npy"},
		{[]string{"predict", "--model", testenv.Data(t, "mnist_model.tflite"), "--input", testenv.Data(t, "mnist_digit_1.png"), "--delegate", "tpu"}, 1, "unknown delegate"},
		{[]string{"frobnicate"}, 2, "unknown command"},
		{[]string{"run", "--config", "/nonexistent/config.yaml"}, 1, "no such file"},
	} {
		code, _, errOut := cli(t, c.args...)
		if code != c.code || !strings.Contains(errOut, c.want) {
			t.Errorf("%v: exit %d, stderr %q; want exit %d mentioning %q", c.args, code, errOut, c.code, c.want)
		}
	}
}

func TestInspectJSON(t *testing.T) {
	code, out, errOut := cli(t, "inspect", "--json", testenv.Data(t, "ssd_mobilenet_detect.tflite"))
	var info struct {
		Inputs []struct {
			DType string `json:"dtype"`
			Shape []int  `json:"shape"`
			Quant struct {
				Scale     float64 `json:"scale"`
				ZeroPoint int     `json:"zero_point"`
			} `json:"quantization"`
		} `json:"inputs"`
		Ops []string `json:"ops"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &info) != nil {
		t.Fatalf("exit %d: %s %s", code, out, errOut)
	}
	if in := info.Inputs[0]; in.DType != "uint8" || in.Quant.Scale == 0 || len(in.Shape) != 4 {
		t.Errorf("input %+v; want quantised uint8 4-D", in)
	}
}

func TestVersion(t *testing.T) {
	code, out, _ := cli(t, "version")
	if code != 0 || !strings.Contains(out, "TensorFlow Lite 2.9") {
		t.Fatalf("exit %d: %q; want the runtime version", code, out)
	}
}

// The real binary serves results on stdout and stops cleanly on SIGTERM.
func TestBinaryRunsAndStopsOnSIGTERM(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "edge-agent")
	build := exec.Command("go", "build", "-o", bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	cfg := filepath.Join(t.TempDir(), "config.yaml")
	os.WriteFile(cfg, []byte(`device: test-board
state_dir: `+t.TempDir()+`
sources:
  - {name: sweep, kind: synthetic, rate: 100, synthetic: {wave: sine, phase: true, offset: -3.14159}}
models:
  - {name: sin, path: `+testenv.Data(t, "sin_model.tflite")+`, sources: [sweep], output: {kind: regression, regression: {names: [y]}}}
`), 0o644)
	cmd := exec.Command(bin, "run", "--config", cfg)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(stdout)
	for i := 0; i < 5; i++ {
		if !sc.Scan() {
			cmd.Process.Kill()
			t.Fatalf("stdout ended after %d lines; stderr:\n%s", i, stderr.String())
		}
		var r result.Result
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil || r.Device != "test-board" || r.Model != "sin" || r.Values["y"] < -1.2 {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
	}
	go func() {
		for sc.Scan() {
		}
	}()
	cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v\n%s", err, stderr.String())
		}
	case <-time.After(15 * time.Second):
		cmd.Process.Kill()
		t.Fatal("still running 15s after SIGTERM")
	}
	if !strings.Contains(stderr.String(), "edge-agent stopped") {
		t.Errorf("stderr has no clean stop line:\n%s", stderr.String())
	}
}
