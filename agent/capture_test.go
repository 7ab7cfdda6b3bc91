//go:build cgo

package agent_test

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edge-agent/edge-agent/internal/mqtttest"
	"github.com/edge-agent/edge-agent/internal/testenv"
)

// capSample is a sample record as the fleet receives it.
type capSample struct {
	Capture  string `json:"capture"`
	N, Of    int
	Model    string `json:"model"`
	InputRef string `json:"input_ref"`
	Frame    *struct {
		PNG    []byte    `json:"png"`
		Values []float64 `json:"values"`
	} `json:"frame"`
	Inputs, Outputs []struct {
		DType string `json:"dtype"`
		Shape []int  `json:"shape"`
		Data  []byte `json:"data"`
	}
	Result struct {
		Values  map[string]float64 `json:"values"`
		Classes []struct{ Index int }
	} `json:"result"`
}

func float32At(b []byte, i int) float64 {
	return float64(math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:])))
}

func capSamples(t *testing.T, k *mqtttest.Consumer, device, capture string) []capSample {
	t.Helper()
	var out []capSample
	for _, raw := range k.Records("samples", device) {
		var s capSample
		if err := json.Unmarshal(raw, &s); err != nil {
			t.Fatalf("sample is not a sample record: %v: %.300s", err, raw)
		}
		if s.Capture == capture {
			out = append(out, s)
		}
	}
	return out
}

// capture uploads the next N inputs with their outputs: for the sin model each sample's
// output tensor is sin of its input tensor (the model's job, checked against math.Sin) and
// equals the published result; for mnist the sample's frame is the PNG the source read,
// pixel for pixel, and the input tensor is that picture scaled by 1/255. Bad requests and a
// second capture of a busy model are refused.
func TestCaptureUploadsSamples(t *testing.T) {
	broker := testenv.MosquittoWith(t, testenv.BrokerConfig{})
	con := newConsole(t, broker.URL)
	k := mqtttest.NewConsumer(t, broker.URL, "edge/+/samples")
	digits := t.TempDir()
	for d := range 10 {
		b, err := os.ReadFile(testenv.Data(t, fmt.Sprintf("mnist_digit_%d.png", d)))
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(digits, fmt.Sprintf("mnist_digit_%d.png", d)), b, 0o644)
	}
	r := start(t, fmt.Sprintf(`
device: cap-1
state_dir: %s
%s
mqtt: {broker: %s, backoff_min: 50ms, backoff_max: 200ms, batch_wait: 20ms}
sources:
  - {name: sweep, kind: synthetic, rate: 200, synthetic: {wave: sine, phase: true, offset: -3.14159}}
  - {name: digits, kind: file, queue: 16, file: {path: %s, poll: 50ms}}
models:
  - {name: sin, path: @TESTDATA@/sin_model.tflite, sources: [sweep], output: {kind: regression, regression: {names: [y]}}}
  - name: mnist
    path: @TESTDATA@/mnist_model.tflite
    sources: [digits]
    queue: 16
    input: {image: {resize: area, color: grey, std: [255]}}
    output: {kind: classification, classification: {top_k: 1}}
`, t.TempDir(), con.keys(), broker.URL, digits))
	mqtttest.WaitFor(t, 20*time.Second, "the agent online", func() bool {
		return strings.Contains(fmt.Sprint(r.a.FleetStats()["mqtt"]), "online")
	})

	con.send("edge/cap-1/cmd", con.cmd("c-sin", "capture", `{"model":"sin","count":5}`))
	if rs := con.final("c-sin"); rs[len(rs)-1]["status"] != "done" {
		t.Fatalf("capture sin: %v", rs)
	}
	mqtttest.WaitFor(t, 20*time.Second, "5 sin samples", func() bool { return len(capSamples(t, k, "cap-1", "c-sin")) == 5 })
	for i, s := range capSamples(t, k, "cap-1", "c-sin") {
		if s.N != i+1 || s.Of != 5 || s.Model != "sin" || len(s.Inputs) != 1 || len(s.Outputs) != 1 || s.Inputs[0].DType != "float32" {
			t.Fatalf("sample %d: %+v", i, s)
		}
		x, y := float32At(s.Inputs[0].Data, 0), float32At(s.Outputs[0].Data, 0)
		if math.Abs(y-math.Sin(x)) > 0.15 {
			t.Errorf("sample %d: output %.3f for input %.3f; sin is %.3f", i, y, x, math.Sin(x))
		}
		if s.Frame == nil || len(s.Frame.Values) != 1 || math.Abs(s.Frame.Values[0]-x) > 1e-6 {
			t.Errorf("sample %d: frame %+v; want the source's value %.6f", i, s.Frame, x)
		}
		if math.Abs(s.Result.Values["y"]-y) > 1e-6 {
			t.Errorf("sample %d: result y %.6f, output tensor %.6f", i, s.Result.Values["y"], y)
		}
	}

	con.send("edge/cap-1/cmd", con.cmd("c-mnist", "capture", `{"model":"mnist","count":3}`))
	// The file source reads each picture once: write them again so there are frames to take.
	for d := range 10 {
		b, _ := os.ReadFile(testenv.Data(t, fmt.Sprintf("mnist_digit_%d.png", d)))
		os.WriteFile(filepath.Join(digits, fmt.Sprintf("again_%d.png", d)), b, 0o644)
	}
	if rs := con.final("c-mnist"); rs[len(rs)-1]["status"] != "done" {
		t.Fatalf("capture mnist: %v", rs)
	}
	mqtttest.WaitFor(t, 20*time.Second, "3 mnist samples", func() bool { return len(capSamples(t, k, "cap-1", "c-mnist")) == 3 })
	for _, s := range capSamples(t, k, "cap-1", "c-mnist") {
		if s.Frame == nil || len(s.Frame.PNG) == 0 {
			t.Fatalf("mnist sample %d has no PNG frame", s.N)
		}
		got, err := png.Decode(bytes.NewReader(s.Frame.PNG))
		if err != nil {
			t.Fatal(err)
		}
		f, err := os.Open(s.InputRef)
		if err != nil {
			t.Fatalf("input_ref %q: %v", s.InputRef, err)
		}
		want, _, err := image.Decode(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		in := s.Inputs[0]
		if len(in.Data) != 28*28*4 || in.DType != "float32" {
			t.Fatalf("mnist input tensor %s %v", in.DType, in.Shape)
		}
		b := want.Bounds()
		for y := b.Min.Y; y < b.Max.Y; y++ {
			for x := b.Min.X; x < b.Max.X; x++ {
				wr, wg, wb, wa := want.At(x, y).RGBA()
				gr, gg, gb, ga := got.At(x, y).RGBA()
				if wr != gr || wg != gg || wb != gb || wa != ga {
					t.Fatalf("sample %d pixel (%d,%d) differs from %s", s.N, x, y, s.InputRef)
				}
			}
		}
		// The input tensor is the picture shrunk to 28×28 (area) in grey/255: compare with
		// an exact box filter computed here.
		ref := boxGrey(want, 28)
		diff := 0.0
		for i := range 28 * 28 {
			diff += math.Abs(float32At(in.Data, i) - ref[i])
		}
		if diff /= 28 * 28; diff > 0.01 {
			t.Errorf("sample %d: input tensor differs from the picture shrunk to 28x28 by %.3f on average", s.N, diff)
		}
		if len(s.Result.Classes) != 1 {
			t.Errorf("sample %d result %+v; want its top-1 class", s.N, s.Result)
		}
	}

	// Refusals: bad counts, an unknown model, and a second capture while one runs.
	for id, args := range map[string]string{"c-big": `{"model":"sin","count":5000}`, "c-none": `{"model":"nope","count":1}`, "c-which": `{"count":1}`} {
		con.send("edge/cap-1/cmd", con.cmd(id, "capture", args))
		if rs := con.final(id); rs[len(rs)-1]["status"] != "failed" || rs[len(rs)-1]["reason"] == "" {
			t.Errorf("%s %s: %v; want failed with a reason", id, args, rs)
		}
	}
	con.send("edge/cap-1/cmd", con.cmd("c-long", "capture", `{"model":"sin","count":1000}`))
	mqtttest.WaitFor(t, 10*time.Second, "the long capture started", func() bool { return len(capSamples(t, k, "cap-1", "c-long")) > 0 })
	con.send("edge/cap-1/cmd", con.cmd("c-busy", "capture", `{"model":"sin","count":1}`))
	if rs := con.final("c-busy"); !strings.Contains(fmt.Sprint(rs[len(rs)-1]["reason"]), "already running") {
		t.Errorf("a second capture of sin: %v; want failed: already running", rs)
	}
	if rs := con.final("c-long"); rs[len(rs)-1]["status"] != "done" {
		t.Fatalf("capture 1000: %v", rs[len(rs)-1])
	}
	mqtttest.WaitFor(t, 30*time.Second, "1000 samples", func() bool { return len(capSamples(t, k, "cap-1", "c-long")) == 1000 })
}

// boxGrey shrinks img to n×n grey values in 0..1, each the exact area-weighted mean of the
// source pixels it covers.
func boxGrey(img image.Image, n int) []float64 {
	b := img.Bounds()
	sx, sy := float64(b.Dx())/float64(n), float64(b.Dy())/float64(n)
	out := make([]float64, n*n)
	for oy := range n {
		for ox := range n {
			x0, x1 := float64(ox)*sx, float64(ox+1)*sx
			y0, y1 := float64(oy)*sy, float64(oy+1)*sy
			sum, area := 0.0, 0.0
			for y := int(y0); float64(y) < y1; y++ {
				hy := math.Min(y1, float64(y+1)) - math.Max(y0, float64(y))
				for x := int(x0); float64(x) < x1; x++ {
					w := hy * (math.Min(x1, float64(x+1)) - math.Max(x0, float64(x)))
					g := color.GrayModel.Convert(img.At(b.Min.X+x, b.Min.Y+y)).(color.Gray)
					sum += w * float64(g.Y) / 255
					area += w
				}
			}
			out[oy*n+ox] = sum / area
		}
	}
	return out
}
