//go:build cgo

package agent_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edge-agent/edge-agent/agent"
	"github.com/edge-agent/edge-agent/agent/config"
	"github.com/edge-agent/edge-agent/agent/health"
	"github.com/edge-agent/edge-agent/agent/pipeline"
	"github.com/edge-agent/edge-agent/agent/result"
	"github.com/edge-agent/edge-agent/internal/testenv"

	_ "github.com/edge-agent/edge-agent/agent/infer/tflite"
	_ "github.com/edge-agent/edge-agent/hal/sensor/all"
)

// collector is a Sink that keeps results for assertions.
type collector struct {
	mu  sync.Mutex
	all []result.Result
}

func (c *collector) Put(_ context.Context, r *result.Result) error {
	c.mu.Lock()
	c.all = append(c.all, *r)
	c.mu.Unlock()
	return nil
}

func (c *collector) byModel(m string) []result.Result {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []result.Result
	for _, r := range c.all {
		if r.Model == m {
			out = append(out, r)
		}
	}
	return out
}

type running struct {
	once   sync.Once
	a      *agent.Agent
	sink   *collector
	logs   *syncBuffer
	cancel context.CancelFunc
	done   chan error
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

// start parses YAML (with @TESTDATA@ replaced by the testdata folder), builds and runs an agent.
func start(t testing.TB, yml string) *running {
	t.Helper()
	yml = strings.ReplaceAll(yml, "@TESTDATA@", testenv.DataDir(t))
	cfg, err := config.Parse([]byte(yml), t.TempDir())
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	r := &running{sink: &collector{}, logs: &syncBuffer{}, done: make(chan error, 1)}
	f := false
	cfg.Stdout = &f
	if cfg.StateDir == "/var/lib/edge-agent" { // the default: keep tests off the machine's state
		cfg.StateDir = t.TempDir()
		cfg.Outbox.Path = filepath.Join(cfg.StateDir, "outbox.db")
	}
	r.a, err = agent.New(cfg, agent.Options{
		Logger:      slog.New(slog.NewTextHandler(r.logs, nil)),
		Sinks:       []pipeline.Sink{r.sink},
		HealthEvery: 50 * time.Millisecond,
	})
	if err != nil {
		t.Fatalf("agent.New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	go func() { r.done <- r.a.Run(ctx) }()
	t.Cleanup(r.stop)
	return r
}

func (r *running) stop() {
	r.once.Do(func() {
		r.cancel()
		select {
		case <-r.done:
		case <-time.After(20 * time.Second):
			panic("agent did not stop within 20s")
		}
	})
}

func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	testenv.Eventually(t, 20*time.Second, 20*time.Millisecond, func() string { return what }, cond)
}

func TestMNISTDigitsFromPNGFiles(t *testing.T) {
	dir := t.TempDir()
	for d := range 10 {
		b, err := os.ReadFile(testenv.Data(t, fmt.Sprintf("mnist_digit_%d.png", d)))
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(dir, fmt.Sprintf("mnist_digit_%d.png", d)), b, 0o644)
	}
	r := start(t, `
sources:
  - {name: digits, kind: file, queue: 16, file: {path: `+dir+`, poll: 50ms}}
models:
  - name: mnist
    path: @TESTDATA@/mnist_model.tflite
    sources: [digits]
    queue: 16
    input: {image: {resize: area, color: grey, std: [255]}}
    output: {kind: classification, classification: {top_k: 1}}
`)
	waitFor(t, "10 mnist results", func() bool { return len(r.sink.byModel("mnist")) >= 10 })
	right := 0
	digit := regexp.MustCompile(`mnist_digit_(\d)\.png$`)
	for _, res := range r.sink.byModel("mnist")[:10] {
		want := digit.FindStringSubmatch(res.InputRef)[1]
		if got := fmt.Sprint(res.Classes[0].Index); got == want {
			right++
		} else {
			t.Logf("%s classified as %s (score %.3f)", filepath.Base(res.InputRef), got, res.Classes[0].Score)
		}
	}
	if right < 9 {
		t.Fatalf("%d of 10 digits classified correctly; want ≥ 9", right)
	}
}

func TestSSDDetectsPersonFromJPEG(t *testing.T) {
	r := start(t, `
sources:
  - {name: cam, kind: file, file: {path: @TESTDATA@/ssd_example.jpg}}
models:
  - name: ssd
    path: @TESTDATA@/ssd_mobilenet_detect.tflite
    sources: [cam]
    input: {image: {resize: bilinear, color: rgb, mean: [127.5], std: [127.5]}}
    output:
      kind: detection
      labels_file: @TESTDATA@/ssd_labelmap.txt
      label_offset: 1
      detection: {score_threshold: 0.5}
`)
	waitFor(t, "an SSD result", func() bool { return len(r.sink.byModel("ssd")) >= 1 })
	res := r.sink.byModel("ssd")[0]
	persons := 0
	for _, d := range res.Detections {
		if d.Label == "person" && d.Score >= 0.5 {
			persons++
		}
		for _, v := range []float64{d.Box.YMin, d.Box.XMin, d.Box.YMax, d.Box.XMax} {
			if v < 0 || v > 1 {
				t.Errorf("box %+v outside [0,1]", d.Box)
			}
		}
		if d.Box.YMin > d.Box.YMax || d.Box.XMin > d.Box.XMax {
			t.Errorf("box %+v has min > max", d.Box)
		}
	}
	if persons == 0 {
		t.Fatalf("no person with score ≥ 0.5 in %+v", res.Detections)
	}
}

// Broken models are refused with clear reasons while the good models, fed by several
// sources at once, keep serving.
func TestBadModelsDoNotStopTheOthers(t *testing.T) {
	dir := t.TempDir()
	good, _ := os.ReadFile(testenv.Data(t, "mnist_model.tflite"))
	os.WriteFile(filepath.Join(dir, "truncated.tflite"), good[:len(good)/2], 0o644)
	os.WriteFile(filepath.Join(dir, "random.tflite"), bytes.Repeat([]byte{0xA5, 0x17, 0x3C}, 5000), 0o644)
	r := start(t, `
sources:
  - {name: sweep, kind: synthetic, rate: 200, synthetic: {wave: sine, phase: true, offset: -3.14159}}
  - {name: rows, kind: csv, rate: 200, csv: {path: @TESTDATA@/iris.csv, columns: [SepalLength, SepalWidth, PetalLength, PetalWidth], loop: true}}
models:
  - {name: smartreply, path: @TESTDATA@/smartreply.tflite, sources: [sweep]}
  - {name: truncated, path: `+dir+`/truncated.tflite, sources: [sweep]}
  - {name: random, path: `+dir+`/random.tflite, sources: [rows]}
  - {name: missing, path: `+dir+`/missing.tflite, sources: [rows]}
  - {name: sin, path: @TESTDATA@/sin_model.tflite, sources: [sweep], output: {kind: regression, regression: {names: [y]}}}
  - {name: iris, path: @TESTDATA@/iris.tflite, sources: [rows], output: {kind: classification, labels: [setosa, versicolor, virginica]}}
`)
	waitFor(t, "sin and iris results", func() bool {
		return len(r.sink.byModel("sin")) >= 50 && len(r.sink.byModel("iris")) >= 50
	})
	want := map[string]string{
		"model/smartreply": "custom ops",
		"model/truncated":  "not a valid TensorFlow Lite model",
		"model/random":     "not a valid TensorFlow Lite model",
		"model/missing":    "no such file",
	}
	for code, text := range want {
		c, ok := r.a.Health().Get(code)
		if !ok || c.Severity != health.Error || !strings.Contains(c.Message, text) {
			t.Errorf("health %s = %+v (present %v); want an error saying %q", code, c, ok, text)
		}
	}
	for _, res := range r.sink.byModel("iris")[:50] {
		if len(res.Classes) != 1 || res.Classes[0].Label == "" {
			t.Fatalf("iris result without a labelled class: %+v", res)
		}
	}
	for _, st := range r.a.Pipeline().Stats() {
		if st.Name == "smartreply" && st.NoVersion == 0 {
			t.Errorf("frames for the unloaded model were not counted: %+v", st)
		}
	}
}

// Sources that fail are retried with backoff and reported as health conditions.
func TestFailingSourcesRetriedAndReported(t *testing.T) {
	var hits sync.Map
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, _ := hits.LoadOrStore("n", new(int))
		*(n.(*int))++
		http.Error(w, "camera overheated", http.StatusInternalServerError)
	}))
	defer srv.Close()
	unreadable := filepath.Join(t.TempDir(), "frame.png")
	os.WriteFile(unreadable, []byte("not a picture"), 0o644)
	r := start(t, `
sources:
  - {name: cmd, kind: command, command: {argv: [sh, -c, "echo lens cap on >&2; exit 3"], format: ndjson}}
  - {name: ipcam, kind: http, interval: 50ms, http: {url: `+srv.URL+`}}
  - {name: still, kind: file, file: {path: `+unreadable+`}}
models:
  - {name: sin, path: @TESTDATA@/sin_model.tflite, sources: [cmd, ipcam, still]}
`)
	waitFor(t, "the command and http sources to be restarted twice", func() bool {
		restarted := 0
		for _, st := range r.a.SourceStats() {
			if (st.Name == "cmd" || st.Name == "ipcam") && st.Restarts >= 2 {
				restarted++
			}
		}
		return restarted == 2
	})
	for _, c := range []struct{ name, text string }{
		{"cmd", "lens cap on"},
		{"ipcam", "500"},
	} {
		waitFor(t, "health condition for "+c.name, func() bool {
			cond, ok := r.a.Health().Get("source/" + c.name)
			return ok && strings.Contains(cond.Message, c.text)
		})
	}
	for _, st := range r.a.SourceStats() {
		if st.Name == "still" && (st.Errors == 0 || !strings.Contains(st.LastError, "frame.png")) {
			t.Errorf("unreadable file not reported: %+v", st)
		}
	}
}

func TestShutdownIsCleanAndDrains(t *testing.T) {
	before := runtime.NumGoroutine()
	r := start(t, `
sources:
  - {name: sweep, kind: synthetic, rate: 500, synthetic: {wave: sine, phase: true, offset: -3.14159}}
models:
  - {name: sin, path: @TESTDATA@/sin_model.tflite, sources: [sweep], workers: 2}
`)
	waitFor(t, "some results", func() bool { return len(r.sink.byModel("sin")) >= 20 })
	r.once.Do(func() {
		r.cancel()
		select {
		case err := <-r.done:
			if err != nil {
				t.Fatalf("Run after cancel = %v; want nil", err)
			}
		case <-time.After(15 * time.Second):
			t.Fatal("agent did not stop within 15s of cancel")
		}
	})
	n := len(r.sink.byModel("sin"))
	time.Sleep(100 * time.Millisecond)
	if m := len(r.sink.byModel("sin")); m != n {
		t.Fatalf("results still arriving after Run returned (%d → %d)", n, m)
	}
	if !strings.Contains(r.logs.String(), "edge-agent stopped") {
		t.Errorf("no stop line in the log:\n%s", r.logs.String())
	}
	// Every goroutine the agent started has ended.
	testenv.WaitGoroutines(t, before, 5*time.Second)
}

// BlazeFace (MediaPipe's short-range face detector, raw SSD heads over 896 anchors) on the
// people-at-laptops photo, through the real TFLite runtime: the anchors format decodes its two
// outputs into faces with 6 keypoints each, and each face lies inside a person the SSD model
// (an independent model and decoder) finds in the same picture.
func TestBlazeFaceDecodesRealOutputs(t *testing.T) {
	r := start(t, `
sources:
  - {name: cam, kind: file, file: {path: @TESTDATA@/ssd_example.jpg}}
models:
  - name: faces
    path: @TESTDATA@/face_detection_short_range.tflite
    sources: [cam]
    input: {image: {resize: area, color: rgb, mean: [127.5], std: [127.5]}}
    output:
      kind: detection
      labels: [face]
      detection: {format: anchors, sigmoid: true, score_threshold: 0.5}
  - name: ssd
    path: @TESTDATA@/ssd_mobilenet_detect.tflite
    sources: [cam]
    input: {image: {resize: bilinear, color: rgb, mean: [127.5], std: [127.5]}}
    output: {kind: detection, labels_file: @TESTDATA@/ssd_labelmap.txt, label_offset: 1, detection: {score_threshold: 0.5}}
`)
	waitFor(t, "a face and an SSD result", func() bool { return len(r.sink.byModel("faces")) >= 1 && len(r.sink.byModel("ssd")) >= 1 })
	faces, people := r.sink.byModel("faces")[0].Detections, r.sink.byModel("ssd")[0].Detections
	if len(faces) < 2 {
		t.Errorf("%d faces scoring at least 0.5: %+v; the photo shows three people, two facing the camera", len(faces), faces)
	}
	for _, f := range faces {
		b := f.Box
		cx, cy := (b.XMin+b.XMax)/2, (b.YMin+b.YMax)/2
		inside := false
		for _, p := range people {
			if p.Label == "person" && p.Box.XMin <= cx && cx <= p.Box.XMax && p.Box.YMin <= cy && cy <= p.Box.YMax {
				inside = true
			}
		}
		if f.Label != "face" || len(f.Keypoints) != 6 || !inside {
			t.Errorf("face %+v: want 6 keypoints and its centre inside a person of %+v", f, people)
		}
		for _, k := range f.Keypoints[:4] { // eyes, nose, mouth: inside the face (ears may stick out)
			if k.X < b.XMin || k.X > b.XMax || k.Y < b.YMin || k.Y > b.YMax {
				t.Errorf("face %+v: keypoint %+v outside its box", b, k)
			}
		}
	}
	t.Logf("%d faces: %+v", len(faces), faces)
}
