//go:build cgo

package agent_test

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edge-agent/edge-agent/agent/config"
	"github.com/edge-agent/edge-agent/internal/mqtttest"
	"github.com/edge-agent/edge-agent/internal/testenv"
)

// edgectl builds the real fleet console once per test.
func edgectl(t testing.TB) func(args ...string) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "edgectl")
	build := exec.Command("go", "build", "-o", bin, "./cmd/edgectl")
	build.Dir = testenv.Root(t)
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/edgectl: %v\n%s", err, out)
	}
	return func(args ...string) string {
		t.Helper()
		out, err := exec.Command(bin, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("edgectl %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
}

// driftEvent is a drift.alert event as the fleet receives it.
type driftEvent struct {
	Type, Severity, Component, Code, Model, Version, Message string
	Data                                                     struct {
		Feature     string  `json:"feature"`
		Statistic   string  `json:"statistic"`
		Value       float64 `json:"value"`
		Threshold   float64 `json:"threshold"`
		ClearBelow  float64 `json:"clear_below"`
		Consecutive int     `json:"consecutive"`
		Window      struct {
			Size       int
			Index      int
			Start, End time.Time
		} `json:"window"`
		Reference, Observed struct {
			Source  string
			Samples int
			Mean    float64
			Std     float64
		}
	} `json:"data"`
}

// End to end: `edgectl bundle pack` computes the sin model's reference from 2,000 inputs
// drawn from N(0, 1); the agent serves that bundle from a source whose inputs are N(1, 1).
// A drift.alert event with its evidence arrives on edge/<device>/events, the frames kept
// from the drifting window arrive on edge/<device>/samples marked reason "drift", and the
// agent's DriftScores show the raised alert.
func TestDriftAlertEndToEnd(t *testing.T) {
	broker := testenv.MosquittoWith(t, testenv.BrokerConfig{})
	k := mqtttest.NewConsumer(t, broker.URL, "edge/+/events", "edge/+/samples")
	ctl := edgectl(t)
	dir := t.TempDir()
	ctl("keygen", "--out", filepath.Join(dir, "fleet"), "--unencrypted")
	pub, err := os.ReadFile(filepath.Join(dir, "fleet.pub"))
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(pub)), "\n")
	rng := rand.New(rand.NewPCG(1, 2))
	var csv strings.Builder
	csv.WriteString("x\n")
	for range 2000 {
		fmt.Fprintf(&csv, "%.6f\n", rng.NormFloat64())
	}
	os.WriteFile(filepath.Join(dir, "ref.csv"), []byte(csv.String()), 0o644)
	os.WriteFile(filepath.Join(dir, "bundle.yaml"), []byte(fmt.Sprintf(`name: sin
version: 1.0.0
sequence: 1
model: %s
samples: ref.csv
processing: {output: {kind: regression, regression: {names: [y]}}}
`, testenv.Data(t, "sin_model.tflite"))), 0o644)
	bundlePath := filepath.Join(dir, "sin-1.0.0.tar.gz")
	if out := ctl("bundle", "pack", "--spec", filepath.Join(dir, "bundle.yaml"), "--key", filepath.Join(dir, "fleet.key"), "-o", bundlePath); !strings.Contains(out, "reference from 2000 samples") {
		t.Fatalf("edgectl bundle pack: %s; want a reference from 2000 samples", out)
	}

	r := start(t, fmt.Sprintf(`
device: drift-1
state_dir: %s
trusted_keys: [%s]
mqtt: {broker: %s, backoff_min: 50ms, backoff_max: 200ms, batch_wait: 20ms}
drift: {window: 100, hysteresis: 2, max_captures: 5}
sources:
  - {name: shifted, kind: synthetic, rate: 500, synthetic: {wave: noise, amplitude: 1, offset: 1, seed: 3}}
models:
  - {name: sin, sources: [shifted]}
`, t.TempDir(), lines[len(lines)-1], broker.URL))
	if _, err := r.a.Deploy().InstallFile(context.Background(), bundlePath); err != nil {
		t.Fatalf("install the packed bundle: %v", err)
	}

	var alert driftEvent
	mqtttest.WaitFor(t, 30*time.Second, "a drift.alert event for sin's input x (ks)", func() bool {
		for _, raw := range k.Records("events", "drift-1") {
			var e driftEvent
			if json.Unmarshal(raw, &e) == nil && e.Type == "drift.alert" && e.Data.Feature == "x" && e.Data.Statistic == "ks" {
				alert = e
				return true
			}
		}
		return false
	})
	d := alert.Data
	if alert.Severity != "warning" || alert.Component != "drift" || alert.Model != "sin" || alert.Version != "1.0.0" ||
		alert.Code != "drift/sin/x/ks" || !strings.Contains(alert.Message, "input feature x of sin 1.0.0 drifted") {
		t.Errorf("event %+v", alert)
	}
	// N(1,1) against N(0,1): the KS statistic is about 0.38; the critical value for windows
	// of 100 against 2,000 reference samples at alpha 0.01 is 1.628·√(2100/200000) = 0.167.
	if !(d.Value > d.Threshold && math.Abs(d.Threshold-1.627624*math.Sqrt(2100.0/200000)) < 1e-4) || math.Abs(d.ClearBelow-0.8*d.Threshold) > 1e-12 || d.Consecutive != 2 {
		t.Errorf("evidence %+v; want KS (about 0.38) above the critical value 0.167, two windows in a row", d)
	}
	if d.Window.Size != 100 || d.Window.Index < 2 || !d.Window.End.After(d.Window.Start) {
		t.Errorf("window %+v; want 100 results, index ≥ 2, a time range", d.Window)
	}
	if d.Reference.Source != "bundle" || d.Reference.Samples != 2000 || math.Abs(d.Reference.Mean) > 0.1 || math.Abs(d.Reference.Std-1) > 0.1 {
		t.Errorf("reference summary %+v; want the bundle's N(0,1) of 2000 samples", d.Reference)
	}
	if math.Abs(d.Observed.Mean-1) > 0.35 || d.Observed.Samples != 100 {
		t.Errorf("observed summary %+v; want a mean near 1 over 100 values", d.Observed)
	}

	// The kept frames of the window that raised the alert.
	capture := fmt.Sprintf("drift-sin-1.0.0-w%d", d.Window.Index)
	type driftSample struct {
		Reason string `json:"reason"`
		Drift  struct {
			Feature, Statistic string
			Window             int
		} `json:"drift"`
		capSample
		Version string `json:"version"`
	}
	var samples []driftSample
	mqtttest.WaitFor(t, 30*time.Second, "5 samples of capture "+capture, func() bool {
		samples = samples[:0]
		for _, raw := range k.Records("samples", "drift-1") {
			var s driftSample
			if err := json.Unmarshal(raw, &s); err != nil {
				t.Fatalf("sample record: %v: %.300s", err, raw)
			}
			if s.Capture == capture {
				samples = append(samples, s)
			}
		}
		return len(samples) == 5
	})
	for i, s := range samples {
		// They come with the first alert of the window: psi or ks of x (both raise at once).
		if s.Reason != "drift" || s.Drift.Feature != "x" || (s.Drift.Statistic != "ks" && s.Drift.Statistic != "psi") || s.Drift.Window != d.Window.Index ||
			s.N != i+1 || s.Of != 5 || s.Model != "sin" || s.Version != "1.0.0" || len(s.Inputs) != 1 || len(s.Outputs) != 1 {
			t.Fatalf("sample %d: %+v", i, s)
		}
		x, y := float32At(s.Inputs[0].Data, 0), float32At(s.Outputs[0].Data, 0)
		if s.Frame == nil || len(s.Frame.Values) != 1 || math.Abs(s.Frame.Values[0]-x) > 1e-6 || math.Abs(s.Result.Values["y"]-y) > 1e-6 {
			t.Errorf("sample %d: frame %+v, input %.4f, output %.4f, result %v: want the frame's value as input and the output as result", i, s.Frame, x, y, s.Result.Values)
		}
	}

	found := false
	for _, s := range r.a.DriftScores() {
		if s.Model == "sin" && s.Version == "1.0.0" && s.Feature == "x" && s.Statistic == "ks" {
			found = s.Alert && s.Windows >= 2 && s.Value > s.Threshold
		}
	}
	if !found {
		t.Errorf("DriftScores %+v; want sin 1.0.0 x ks raised", r.a.DriftScores())
	}
}

// The drift block: defaults, and every bad value refused naming its field.
func TestDriftConfig(t *testing.T) {
	cfg, err := config.Parse([]byte("device: d\n"), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	d := cfg.Drift
	if !d.On() || d.OutputsOnly() || d.Window != 500 || d.PSI != 0.2 || d.KSAlpha != 0.01 || d.KS != 0 || d.ClassPSI != 0.2 ||
		d.ConfidenceDrop != 0.1 || d.Hysteresis != 3 || d.ClearRatio != 0.8 || d.MaxCaptures != 20 || d.Pixels != 256 {
		t.Errorf("defaults %+v", d)
	}
	for yml, field := range map[string]string{
		"drift: {window: 10}":          "drift.window",
		"drift: {psi: -1}":             "drift.psi",
		"drift: {ks_alpha: 0.7}":       "drift.ks_alpha",
		"drift: {ks: 1.5}":             "drift.ks",
		"drift: {class_psi: -0.1}":     "drift.class_psi",
		"drift: {confidence_drop: -1}": "drift.confidence_drop",
		"drift: {hysteresis: -2}":      "drift.hysteresis",
		"drift: {clear_ratio: 1.5}":    "drift.clear_ratio",
		"drift: {max_captures: 500}":   "drift.max_captures",
		"drift: {pixels: 4}":           "drift.pixels",
		"drift: {windw: 100}":          "windw",
	} {
		if _, err := config.Parse([]byte("device: d\n"+yml+"\n"), t.TempDir()); err == nil || !strings.Contains(err.Error(), field) {
			t.Errorf("%s: %v; want an error naming %s", yml, err, field)
		}
	}
	cfg, err = config.Parse([]byte("device: d\ndrift: {enabled: false}\n"), t.TempDir())
	if err != nil || cfg.Drift.On() {
		t.Errorf("enabled false: %v, on %v", err, cfg.Drift.On())
	}
}

// A model with a fixed path has no reference: unmonitored by default, and with
// drift.enabled: true its outputs are (classes and confidence against its first window).
// drift.enabled: false turns the monitor off.
func TestDriftPathModelOutputsOnly(t *testing.T) {
	yml := `
state_dir: %s
drift: {enabled: %s, window: 50}
sources:
  - {name: digit, kind: file, rate: 400, file: {path: @TESTDATA@/mnist_digit_4.png, loop: true}}
models:
  - name: mnist
    path: @TESTDATA@/mnist_model.tflite
    sources: [digit]
    input: {image: {resize: area, color: grey, std: [255]}}
    output: {kind: classification, classification: {top_k: 1}}
`
	on := start(t, fmt.Sprintf(yml, t.TempDir(), "true"))
	waitFor(t, "class_psi and confidence_drop scores of mnist", func() bool {
		n := 0
		for _, s := range on.a.DriftScores() {
			if s.Model == "mnist" && s.Version == "0" && s.Windows >= 2 && !s.Alert && s.Value < s.Threshold &&
				(s.Feature == "classes" && s.Statistic == "class_psi" || s.Feature == "confidence" && s.Statistic == "confidence_drop") {
				n++
			}
		}
		return n == 2
	})
	for _, s := range on.a.DriftScores() {
		if s.Statistic == "psi" || s.Statistic == "ks" {
			t.Errorf("input score %+v for a model without a reference", s)
		}
	}
	on.stop()

	for _, enabled := range []string{"null", "false"} {
		r := start(t, fmt.Sprintf(yml, t.TempDir(), enabled))
		waitFor(t, "150 results", func() bool { return len(r.sink.byModel("mnist")) >= 150 })
		if s := r.a.DriftScores(); s != nil {
			t.Errorf("enabled %s: scores %+v; want none", enabled, s)
		}
		r.stop()
	}
}
