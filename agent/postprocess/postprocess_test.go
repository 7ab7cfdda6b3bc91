package postprocess

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/edge-agent/edge-agent/agent/infer"
	"github.com/edge-agent/edge-agent/internal/testenv"
	"github.com/edge-agent/edge-agent/models/spec"
)

func info(dt infer.DType, shape ...int) infer.TensorInfo {
	return infer.TensorInfo{Name: "out", DType: dt, Shape: shape, Bytes: infer.Elements(shape) * dt.Size()}
}

func f32(shape []int, v ...float32) infer.Tensor { return infer.FromFloat32(shape, v) }

func mustNew(t testing.TB, s spec.Output, outputs []infer.TensorInfo) *Postprocessor {
	t.Helper()
	p, err := New(s, outputs, nil)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return p
}

func TestLoadLabels(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []string
	}{
		{"", nil},
		{"a", []string{"a"}},
		{"a\nb\n", []string{"a", "b"}},
		{"a\r\nb\r\n", []string{"a", "b"}},
		{"???\nperson\n\nbicycle", []string{"???", "person", "", "bicycle"}},
		{"  cat \n\tdog\t\n", []string{"cat", "dog"}},
		{"a\n\n", []string{"a", ""}},
		{"\xef\xbb\xbfone\ntwo", []string{"one", "two"}},
		{"\n", []string{""}},
	} {
		if got := LoadLabels([]byte(tc.in)); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("LoadLabels(%q) = %q; want %q", tc.in, got, tc.want)
		}
	}
}

func TestClassification(t *testing.T) {
	labels := []string{"zero", "one", "two", "three"}
	logits := f32([]int{1, 4}, 1, 3, 2, 0)
	e := []float64{math.Exp(1), math.Exp(3), math.Exp(2), math.Exp(0)}
	sum := e[0] + e[1] + e[2] + e[3]
	for _, tc := range []struct {
		name string
		c    spec.Classification
		s    spec.Output
		in   infer.Tensor
		q    infer.Quant
		want []Class
	}{
		{"top-1 by default", spec.Classification{}, spec.Output{Labels: labels}, logits, infer.Quant{},
			[]Class{{Index: 1, Label: "one", Score: 3}}},
		{"top-3 sorted", spec.Classification{TopK: 3}, spec.Output{Labels: labels}, logits, infer.Quant{},
			[]Class{{Index: 1, Label: "one", Score: 3}, {Index: 2, Label: "two", Score: 2}, {Index: 0, Label: "zero", Score: 1}}},
		{"top-k capped at the class count", spec.Classification{TopK: 10}, spec.Output{}, logits, infer.Quant{},
			[]Class{{Index: 1, Label: "", Score: 3}, {Index: 2, Label: "", Score: 2}, {Index: 0, Label: "", Score: 1}, {Index: 3, Label: "", Score: 0}}},
		{"softmax", spec.Classification{TopK: 2, Softmax: true}, spec.Output{}, logits, infer.Quant{},
			[]Class{{Index: 1, Label: "", Score: e[1] / sum}, {Index: 2, Label: "", Score: e[2] / sum}}},
		{"softmax of huge logits stays finite", spec.Classification{TopK: 2, Softmax: true}, spec.Output{}, f32([]int{1, 2}, 1000, 999), infer.Quant{},
			[]Class{{Index: 0, Label: "", Score: 1 / (1 + math.Exp(-1))}, {Index: 1, Label: "", Score: math.Exp(-1) / (1 + math.Exp(-1))}}},
		{"threshold drops low scores", spec.Classification{TopK: 4, Threshold: 1.5}, spec.Output{}, logits, infer.Quant{},
			[]Class{{Index: 1, Label: "", Score: 3}, {Index: 2, Label: "", Score: 2}}},
		{"threshold compares at the scores' float32 precision", spec.Classification{TopK: 2, Threshold: 0.3}, spec.Output{}, f32([]int{1, 3}, 0.1, 0.3, 0.2999), infer.Quant{},
			[]Class{{Index: 1, Label: "", Score: float64(float32(0.3))}}},
		{"threshold may drop everything", spec.Classification{Threshold: 5}, spec.Output{}, logits, infer.Quant{},
			[]Class{}},
		{"label offset", spec.Classification{TopK: 2}, spec.Output{Labels: []string{"background", "zero", "one", "two", "three"}, LabelOffset: 1}, logits, infer.Quant{},
			[]Class{{Index: 1, Label: "one", Score: 3}, {Index: 2, Label: "two", Score: 2}}},
		{"labels too short give no label", spec.Classification{TopK: 2}, spec.Output{Labels: []string{"zero", "one"}, LabelOffset: 1}, logits, infer.Quant{},
			[]Class{{Index: 1, Label: "", Score: 3}, {Index: 2, Label: "", Score: 2}}},
		{"ties keep index order", spec.Classification{TopK: 3}, spec.Output{}, f32([]int{1, 4}, 1, 5, 5, 5), infer.Quant{},
			[]Class{{Index: 1, Label: "", Score: 5}, {Index: 2, Label: "", Score: 5}, {Index: 3, Label: "", Score: 5}}},
		{"quantised uint8 scores", spec.Classification{TopK: 2}, spec.Output{}, infer.FromUint8([]int{1, 3}, []uint8{0, 255, 128}), infer.Quant{Scale: 1.0 / 256},
			[]Class{{Index: 1, Label: "", Score: 255.0 / 256}, {Index: 2, Label: "", Score: 0.5}}},
		{"quantised int8 with zero point", spec.Classification{TopK: 1}, spec.Output{}, infer.Tensor{DType: infer.Int8, Shape: []int{1, 3}, Data: []byte{0x80, 0x7f, 0}}, infer.Quant{Scale: 0.5, ZeroPoint: -128},
			[]Class{{Index: 1, Label: "", Score: 127.5}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.s.Kind = spec.OutputClassification
			tc.s.Classification = tc.c
			o := infer.TensorInfo{DType: tc.in.DType, Shape: tc.in.Shape, Quant: tc.q}
			p := mustNew(t, tc.s, []infer.TensorInfo{o})
			got, err := p.Apply([]infer.Tensor{tc.in})
			if err != nil {
				t.Fatalf("Apply: %v", err)
			}
			if !classesNear(got.Classes, tc.want) {
				t.Errorf("got %v; want %v", got.Classes, tc.want)
			}
		})
	}
}

func classesNear(a, b []Class) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].Index != b[i].Index || a[i].Label != b[i].Label || math.Abs(a[i].Score-b[i].Score) > 1e-9 {
			return false
		}
	}
	return true
}

func TestTopKLarge(t *testing.T) {
	// More than 16 classes asked: the sorting path agrees with the insertion path.
	rng := rand.New(rand.NewPCG(1, 1))
	scores := make([]float64, 1001)
	for i := range scores {
		scores[i] = float64(rng.IntN(50)) // many ties
	}
	all := topK(scores, 40)
	for k := 1; k <= 16; k++ {
		if got := topK(scores, k); !reflect.DeepEqual(got, all[:k]) {
			t.Fatalf("topK(%d) = %v; want %v", k, got, all[:k])
		}
	}
	for i := 1; i < len(all); i++ {
		a, b := all[i-1], all[i]
		if scores[a] < scores[b] || (scores[a] == scores[b] && a > b) {
			t.Fatalf("topK order broken at %d: %d (%v) before %d (%v)", i, a, scores[a], b, scores[b])
		}
	}
}

// ssdOutputs describes TFLite_Detection_PostProcess with n detections.
func ssdOutputs(n int) []infer.TensorInfo {
	return []infer.TensorInfo{info(infer.Float32, 1, n, 4), info(infer.Float32, 1, n), info(infer.Float32, 1, n), info(infer.Float32, 1)}
}

func ssdTensors(boxes [][4]float32, classes, scores []float32, count float32) []infer.Tensor {
	var b []float32
	for _, x := range boxes {
		b = append(b, x[:]...)
	}
	n := len(classes)
	return []infer.Tensor{f32([]int{1, n, 4}, b...), f32([]int{1, n}, classes...), f32([]int{1, n}, scores...), f32([]int{1}, count)}
}

func TestDetection(t *testing.T) {
	coco := LoadLabels([]byte("???\nperson\nbicycle\ncar\n"))
	boxes := [][4]float32{{0.1, 0.2, 0.5, 0.6}, {-0.1, 0.3, 1.2, 0.9}, {0.2, 0.2, 0.3, 0.3}, {0, 0, 1, 1}, {0.4, 0.4, 0.6, 0.6}}
	for _, tc := range []struct {
		name    string
		d       spec.Detection
		classes []float32
		scores  []float32
		count   float32
		want    []Detection
	}{
		{"default threshold 0.5, sorted by score, boxes clamped", spec.Detection{},
			[]float32{0, 2, 1, 0, 0}, []float32{0.6, 0.9, 0.4, 0.5, 0.2}, 5,
			[]Detection{
				{Class: 2, Label: "car", Score: 0.9, Box: Box{YMin: 0, XMin: 0.3, YMax: 1, XMax: 0.9}},
				{Class: 0, Label: "person", Score: 0.6, Box: Box{YMin: 0.1, XMin: 0.2, YMax: 0.5, XMax: 0.6}},
				{Class: 0, Label: "person", Score: 0.5, Box: Box{YMin: 0, XMin: 0, YMax: 1, XMax: 1}},
			}},
		{"count smaller than N ignores the rest", spec.Detection{},
			[]float32{0, 2, 1, 0, 0}, []float32{0.6, 0.9, 0.8, 0.95, 0.99}, 2,
			[]Detection{{Class: 2, Label: "car", Score: 0.9, Box: Box{YMin: 0, XMin: 0.3, YMax: 1, XMax: 0.9}}, {Class: 0, Label: "person", Score: 0.6, Box: Box{YMin: 0.1, XMin: 0.2, YMax: 0.5, XMax: 0.6}}}},
		{"count above N is capped; float32 0.95 passes 0.95", spec.Detection{ScoreThreshold: 0.95},
			[]float32{0, 2, 1, 0, 0}, []float32{0.6, 0.9, 0.8, 0.95, 0.99}, 50,
			[]Detection{{Class: 0, Label: "person", Score: 0.99, Box: Box{YMin: 0.4, XMin: 0.4, YMax: 0.6, XMax: 0.6}}, {Class: 0, Label: "person", Score: 0.95, Box: Box{YMin: 0, XMin: 0, YMax: 1, XMax: 1}}}},
		{"negative count is none", spec.Detection{},
			[]float32{0, 0, 0, 0, 0}, []float32{1, 1, 1, 1, 1}, -3, []Detection{}},
		{"score threshold and max detections", spec.Detection{ScoreThreshold: 0.3, MaxDetections: 2},
			[]float32{0, 2, 1, 0, 0}, []float32{0.6, 0.9, 0.4, 0.5, 0.2}, 5,
			[]Detection{{Class: 2, Label: "car", Score: 0.9, Box: Box{YMin: 0, XMin: 0.3, YMax: 1, XMax: 0.9}}, {Class: 0, Label: "person", Score: 0.6, Box: Box{YMin: 0.1, XMin: 0.2, YMax: 0.5, XMax: 0.6}}}},
		{"class outside the labels gets no label", spec.Detection{},
			[]float32{89, -1, 3, 0, 0}, []float32{0.9, 0.8, 0.7, 0, 0}, 5,
			[]Detection{{Class: 89, Label: "", Score: 0.9, Box: Box{YMin: 0.1, XMin: 0.2, YMax: 0.5, XMax: 0.6}}, {Class: -1, Label: "???", Score: 0.8, Box: Box{YMin: 0, XMin: 0.3, YMax: 1, XMax: 0.9}}, {Class: 3, Label: "", Score: 0.7, Box: Box{YMin: 0.2, XMin: 0.2, YMax: 0.3, XMax: 0.3}}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := mustNew(t, spec.Output{Kind: spec.OutputDetection, Labels: coco, LabelOffset: 1, Detection: tc.d}, ssdOutputs(5))
			got, err := p.Apply(ssdTensors(boxes, tc.classes, tc.scores, tc.count))
			if err != nil {
				t.Fatalf("Apply: %v", err)
			}
			if !detectionsNear(got.Detections, tc.want) {
				t.Errorf("got %v; want %v", got.Detections, tc.want)
			}
		})
	}
}

func detectionsNear(a, b []Detection) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		x, y := a[i], b[i]
		if x.Class != y.Class || x.Label != y.Label || math.Abs(x.Score-y.Score) > 1e-6 ||
			math.Abs(x.Box.YMin-y.Box.YMin) > 1e-6 || math.Abs(x.Box.XMin-y.Box.XMin) > 1e-6 ||
			math.Abs(x.Box.YMax-y.Box.YMax) > 1e-6 || math.Abs(x.Box.XMax-y.Box.XMax) > 1e-6 {
			return false
		}
	}
	return true
}

func TestDetectionTensorOrder(t *testing.T) {
	// Outputs in another order, named by the spec.
	i0, i1, i2, i3 := 3, 2, 1, 0
	outs := []infer.TensorInfo{info(infer.Float32, 1), info(infer.Float32, 1, 2), info(infer.Float32, 1, 2), info(infer.Float32, 1, 2, 4)}
	p := mustNew(t, spec.Output{Kind: spec.OutputDetection, Detection: spec.Detection{Boxes: &i0, Classes: &i1, Scores: &i2, Count: &i3}}, outs)
	got, err := p.Apply([]infer.Tensor{
		f32([]int{1}, 2),
		f32([]int{1, 2}, 0.7, 0.8),
		f32([]int{1, 2}, 4, 5),
		f32([]int{1, 2, 4}, 0, 0, 0.5, 0.5, 0.5, 0.5, 1, 1),
	})
	if err != nil {
		t.Fatalf("Apply: %v", err)
	}
	want := []Detection{{Class: 5, Label: "", Score: 0.8, Box: Box{YMin: 0.5, XMin: 0.5, YMax: 1, XMax: 1}}, {Class: 4, Label: "", Score: 0.7, Box: Box{YMin: 0, XMin: 0, YMax: 0.5, XMax: 0.5}}}
	if !detectionsNear(got.Detections, want) {
		t.Errorf("got %v; want %v", got.Detections, want)
	}
}

func TestRegression(t *testing.T) {
	p := mustNew(t, spec.Output{Kind: spec.OutputRegression, Regression: spec.Regression{Tensor: 1, Names: []string{"x", "y"}}},
		[]infer.TensorInfo{info(infer.Float32, 1, 3), {DType: infer.Int8, Shape: []int{1, 2}, Quant: infer.Quant{Scale: 0.25, ZeroPoint: 4}}})
	got, err := p.Apply([]infer.Tensor{f32([]int{1, 3}, 9, 9, 9), {DType: infer.Int8, Shape: []int{1, 2}, Data: []byte{8, 0xfc}}})
	if err != nil {
		t.Fatalf("Apply: %v", err)
	}
	if want := map[string]float64{"x": 1, "y": -2}; !reflect.DeepEqual(got.Values, want) {
		t.Errorf("got %v; want %v", got.Values, want)
	}
}

func TestRaw(t *testing.T) {
	p := mustNew(t, spec.Output{}, []infer.TensorInfo{info(infer.Float32, 1, 2), {DType: infer.UInt8, Shape: []int{3}, Quant: infer.Quant{Scale: 0.5, ZeroPoint: 2}}, info(infer.Int32, 1)})
	got, err := p.Apply([]infer.Tensor{f32([]int{1, 2}, 1.5, -2), infer.FromUint8([]int{3}, []uint8{0, 2, 255}), infer.FromInt32([]int{1}, []int32{-7})})
	if err != nil {
		t.Fatalf("Apply: %v", err)
	}
	if want := [][]float64{{1.5, -2}, {-1, 0, 126.5}, {-7}}; !reflect.DeepEqual(got.Outputs, want) {
		t.Errorf("got %v; want %v", got.Outputs, want)
	}
}

func TestNonFinite(t *testing.T) {
	nan, inf := float32(math.NaN()), float32(math.Inf(1))
	cls := mustNew(t, spec.Output{Kind: spec.OutputClassification, Classification: spec.Classification{Softmax: true}}, []infer.TensorInfo{info(infer.Float32, 1, 3)})
	det := mustNew(t, spec.Output{Kind: spec.OutputDetection}, ssdOutputs(2))
	reg := mustNew(t, spec.Output{Kind: spec.OutputRegression, Regression: spec.Regression{Names: []string{"a", "b"}}}, []infer.TensorInfo{info(infer.Float32, 2)})
	raw := mustNew(t, spec.Output{}, []infer.TensorInfo{info(infer.Float32, 2)})
	box := [][4]float32{{0, 0, 1, 1}, {0, 0, 1, 1}}
	for _, tc := range []struct {
		name string
		p    *Postprocessor
		out  []infer.Tensor
		want string // "" = no error: the NaN is not used
	}{
		{"classification NaN", cls, []infer.Tensor{f32([]int{1, 3}, 1, nan, 2)}, "element 1 is NaN"},
		{"classification Inf", cls, []infer.Tensor{f32([]int{1, 3}, inf, 0, 0)}, "element 0 is +Inf"},
		{"detection score", det, ssdTensors(box, []float32{0, 0}, []float32{0.9, nan}, 2), "scores"},
		{"detection class", det, ssdTensors(box, []float32{nan, 0}, []float32{0.9, 0.9}, 2), "classes"},
		{"detection box", det, ssdTensors([][4]float32{{0, 0, 1, 1}, {0, inf, 1, 1}}, []float32{0, 0}, []float32{0.9, 0.9}, 2), "boxes (output 0) element 5"},
		{"detection count", det, ssdTensors(box, []float32{0, 0}, []float32{0.9, 0.9}, nan), "count"},
		{"detection NaN beyond count is unused", det, ssdTensors(box, []float32{0, nan}, []float32{0.9, nan}, 1), ""},
		{"detection NaN box below threshold is unused", det, ssdTensors([][4]float32{{nan, 0, 1, 1}, {0, 0, 1, 1}}, []float32{0, 0}, []float32{0.1, 0.9}, 2), ""},
		{"regression", reg, []infer.Tensor{f32([]int{2}, 1, float32(math.Inf(-1)))}, `(b) element 1 is -Inf`},
		{"raw", raw, []infer.Tensor{f32([]int{2}, nan, 1)}, "output 0 element 0 is NaN"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.p.Apply(tc.out)
			if tc.want == "" {
				if err != nil {
					t.Errorf("got %v; want no error", err)
				}
				return
			}
			if !errors.Is(err, ErrNonFinite) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v; want an ErrNonFinite error mentioning %q", err, tc.want)
			}
		})
	}
}

func TestApplyMismatchedTensors(t *testing.T) {
	p := mustNew(t, spec.Output{Kind: spec.OutputDetection}, ssdOutputs(3))
	good := ssdTensors([][4]float32{{}, {}, {}}, []float32{0, 0, 0}, []float32{1, 1, 1}, 3)
	short := append([]infer.Tensor(nil), good...)
	short[2] = f32([]int{1, 2}, 1, 1)
	wrongType := append([]infer.Tensor(nil), good...)
	wrongType[1] = infer.FromUint8([]int{1, 3}, []uint8{0, 0, 0})
	broken := append([]infer.Tensor(nil), good...)
	broken[0] = infer.Tensor{DType: infer.Float32, Shape: []int{1, 3, 4}, Data: make([]byte, 7)}
	for _, tc := range []struct {
		name string
		out  []infer.Tensor
	}{
		{"no tensors", nil},
		{"too few", good[:3]},
		{"short scores", short},
		{"wrong dtype", wrongType},
		{"truncated data", broken},
	} {
		if _, err := p.Apply(tc.out); err == nil || errors.Is(err, ErrNonFinite) {
			t.Errorf("%s: got %v; want a mismatch error", tc.name, err)
		}
	}
}

func TestNewErrors(t *testing.T) {
	ssd := ssdOutputs(10)
	five := 5
	two := 2
	for _, tc := range []struct {
		name string
		s    spec.Output
		outs []infer.TensorInfo
		read func(string) ([]byte, error)
		want string
	}{
		{"no outputs", spec.Output{}, nil, nil, "no output tensors"},
		{"bad kind", spec.Output{Kind: "caption"}, ssd, nil, "output.kind"},
		{"classification tensor out of range", spec.Output{Kind: spec.OutputClassification, Classification: spec.Classification{Tensor: 4}}, ssd, nil, "output.classification.tensor: output 4 does not exist; the model has 4 output(s), 0..3"},
		{"classification on a string tensor", spec.Output{Kind: spec.OutputClassification}, []infer.TensorInfo{info(infer.String, 1, 3)}, nil, "not numbers"},
		{"detection index out of range", spec.Output{Kind: spec.OutputDetection, Detection: spec.Detection{Scores: &five}}, ssd, nil, "output.detection.scores: output 5 does not exist"},
		{"detection index shared", spec.Output{Kind: spec.OutputDetection, Detection: spec.Detection{Scores: &two, Classes: &two}}, ssd, nil, "already output.detection.classes"},
		{"detection boxes shape", spec.Output{Kind: spec.OutputDetection}, []infer.TensorInfo{info(infer.Float32, 1, 10, 5), ssd[1], ssd[2], ssd[3]}, nil, "output.detection.boxes: output 0 (out) has shape [1 10 5]"},
		{"detection scores shape", spec.Output{Kind: spec.OutputDetection}, []infer.TensorInfo{ssd[0], ssd[1], info(infer.Float32, 10), ssd[3]}, nil, "output.detection.scores"},
		{"detection count shape", spec.Output{Kind: spec.OutputDetection}, []infer.TensorInfo{ssd[0], ssd[1], ssd[2], info(infer.Float32, 1, 2)}, nil, "output.detection.count"},
		{"detection N disagrees", spec.Output{Kind: spec.OutputDetection}, []infer.TensorInfo{ssd[0], info(infer.Float32, 1, 9), ssd[2], ssd[3]}, nil, "holds 9 detections but the other outputs hold 10"},
		{"detection on a classifier", spec.Output{Kind: spec.OutputDetection}, []infer.TensorInfo{info(infer.Float32, 1, 1001)}, nil, "output.detection"},
		{"regression names count", spec.Output{Kind: spec.OutputRegression, Regression: spec.Regression{Names: []string{"a"}}}, []infer.TensorInfo{info(infer.Float32, 1, 2)}, nil, "output.regression.names: has 1 names but output 0 (out) [1 2] holds 2 values"},
		{"regression without names", spec.Output{Kind: spec.OutputRegression}, []infer.TensorInfo{info(infer.Float32, 1, 1)}, nil, "output.regression.names"},
		{"regression duplicate names", spec.Output{Kind: spec.OutputRegression, Regression: spec.Regression{Names: []string{"a", "a"}}}, []infer.TensorInfo{info(infer.Float32, 2)}, nil, "output.regression.names[1]"},
		{"labels file without reader", spec.Output{LabelsFile: "labels.txt"}, ssd, nil, "output.labels_file"},
		{"labels file unreadable", spec.Output{LabelsFile: "labels.txt"}, ssd, func(string) ([]byte, error) { return nil, os.ErrNotExist }, `output.labels_file: read "labels.txt": file does not exist`},
		{"labels file empty", spec.Output{LabelsFile: "labels.txt"}, ssd, func(string) ([]byte, error) { return nil, nil }, "holds no labels"},
		{"labels twice", spec.Output{Labels: []string{"a"}, LabelsFile: "x"}, ssd, nil, "output.labels"},
		{"threshold out of range", spec.Output{Kind: spec.OutputDetection, Detection: spec.Detection{ScoreThreshold: 2}}, ssd, nil, "output.detection.score_threshold"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(tc.s, tc.outs, tc.read)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v; want an error mentioning %q", err, tc.want)
			}
		})
	}
	if _, err := New(spec.Output{LabelsFile: "x"}, ssd, func(string) ([]byte, error) { return nil, errors.New("boom") }); err == nil || errors.Unwrap(err) == nil {
		t.Errorf("labels read error: got %v; want it wrapped", err)
	}
}

func TestJSON(t *testing.T) {
	o := Output{
		Classes:    []Class{{Index: 3, Label: "cat", Score: 0.5}, {Index: 4, Score: 0.25}},
		Detections: []Detection{{Class: 0, Label: "person", Score: 0.75, Box: Box{YMin: 0.1, XMin: 0.2, YMax: 0.3, XMax: 0.4}}},
		Values:     map[string]float64{"y": 1.5},
	}
	b, err := json.Marshal(o)
	if err != nil {
		t.Fatalf("Marshal: %v", err)
	}
	want := `{"classes":[{"index":3,"label":"cat","score":0.5},{"index":4,"score":0.25}],"detections":[{"class":0,"label":"person","score":0.75,"box":{"ymin":0.1,"xmin":0.2,"ymax":0.3,"xmax":0.4}}],"values":{"y":1.5}}`
	if string(b) != want {
		t.Errorf("got %s; want %s", b, want)
	}
	if b, _ := json.Marshal(Output{Outputs: [][]float64{{1}}}); string(b) != `{"outputs":[[1]]}` {
		t.Errorf("raw: got %s; want {\"outputs\":[[1]]}", b)
	}
}

// TestRealSSDLabelMap reads the COCO label map the SSD model ships with: class 0 is
// "person" with label_offset 1 because line 0 is "???".
func TestRealSSDLabelMap(t *testing.T) {
	dir := testenv.DataDir(t)
	read := func(name string) ([]byte, error) { return os.ReadFile(filepath.Join(dir, name)) }
	p, err := New(spec.Output{Kind: spec.OutputDetection, LabelsFile: "ssd_labelmap.txt", LabelOffset: 1}, ssdOutputs(10), read)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	labels := p.Labels()
	if len(labels) < 80 || labels[0] != "???" || labels[1] != "person" {
		t.Fatalf("got %d labels starting %q; want COCO with ??? first", len(labels), labels[:min(3, len(labels))])
	}
	scores := make([]float32, 10)
	classes := make([]float32, 10)
	scores[0], classes[0] = 0.8, 0
	scores[1], classes[1] = 0.7, 2
	got, err := p.Apply(ssdTensors(make([][4]float32, 10), classes, scores, 10))
	if err != nil {
		t.Fatalf("Apply: %v", err)
	}
	if len(got.Detections) != 2 || got.Detections[0].Label != "person" || got.Detections[1].Label != "car" {
		t.Errorf("got %v; want person then car", got.Detections)
	}
}

func TestMalformedOutputsNeverPanic(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	ps := fuzzPostprocessors(t)
	for i := 0; i < 3000; i++ {
		for _, fp := range ps {
			out := randomTensors(rng, fp.outs)
			if _, err := fp.p.Apply(out); err != nil && !errors.Is(err, ErrNonFinite) && !strings.Contains(err.Error(), "output") {
				t.Fatalf("unexpected error %v", err)
			}
		}
	}
}

type fuzzTarget struct {
	p    *Postprocessor
	outs []infer.TensorInfo
}

func fuzzPostprocessors(t testing.TB) []fuzzTarget {
	q := infer.Quant{Scale: 0.1, ZeroPoint: 3}
	var ts []fuzzTarget
	for _, c := range []struct {
		s    spec.Output
		outs []infer.TensorInfo
	}{
		{spec.Output{Kind: spec.OutputDetection, Labels: []string{"a", "b"}, LabelOffset: 1, Detection: spec.Detection{MaxDetections: 3}}, ssdOutputs(4)},
		{spec.Output{Kind: spec.OutputDetection}, []infer.TensorInfo{{DType: infer.UInt8, Shape: []int{1, 3, 4}, Quant: q}, {DType: infer.Int8, Shape: []int{1, 3}}, {DType: infer.UInt8, Shape: []int{1, 3}, Quant: infer.Quant{Scale: 1.0 / 256}}, {DType: infer.Int32, Shape: []int{1}}}},
		{spec.Output{Kind: spec.OutputClassification, Labels: []string{"x"}, Classification: spec.Classification{TopK: 3, Softmax: true, Threshold: 0.1}}, []infer.TensorInfo{info(infer.Float32, 1, 5)}},
		{spec.Output{Kind: spec.OutputClassification, Classification: spec.Classification{TopK: 20}}, []infer.TensorInfo{{DType: infer.UInt8, Shape: []int{1, 30}, Quant: q}}},
		{spec.Output{Kind: spec.OutputRegression, Regression: spec.Regression{Names: []string{"a", "b"}}}, []infer.TensorInfo{{DType: infer.Int16, Shape: []int{2}, Quant: q}}},
		{spec.Output{}, []infer.TensorInfo{info(infer.Float32, 1, 2), info(infer.Float16, 3), info(infer.Int64, 1)}},
	} {
		p, err := New(c.s, c.outs, nil)
		if err != nil {
			t.Fatalf("New(%+v): %v", c.s, err)
		}
		ts = append(ts, fuzzTarget{p, c.outs})
	}
	return ts
}

// randomTensors fills tensors for outs with random bytes, sometimes with the wrong length.
func randomTensors(rng *rand.Rand, outs []infer.TensorInfo) []infer.Tensor {
	ts := make([]infer.Tensor, len(outs))
	for i, o := range outs {
		t := infer.NewTensor(o.DType, o.Shape)
		for j := range t.Data {
			t.Data[j] = byte(rng.IntN(256))
		}
		if o.DType == infer.Float32 && rng.IntN(2) == 0 { // plausible floats most of the time
			for j := 0; j < t.Len(); j++ {
				binary.LittleEndian.PutUint32(t.Data[4*j:], math.Float32bits(rng.Float32()*3-1))
			}
		}
		if rng.IntN(20) == 0 {
			t.Data = t.Data[:rng.IntN(len(t.Data)+1)]
		}
		ts[i] = t
	}
	if rng.IntN(30) == 0 {
		ts = ts[:rng.IntN(len(ts))]
	}
	return ts
}

// FuzzPostprocess fills every kind's output tensors from fuzzed bytes: Apply returns a
// result or an error, never panics, and a result encodes as JSON.
func FuzzPostprocess(f *testing.F) {
	f.Add([]byte{})
	f.Add(make([]byte, 200))
	f.Add([]byte(strings.Repeat("\x00\x00\xc0\x7f", 50))) // float32 NaNs
	f.Add([]byte(strings.Repeat("\x00\x00\x80\x3f", 50))) // float32 ones
	ps := fuzzPostprocessors(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, fp := range ps {
			out := make([]infer.Tensor, len(fp.outs))
			d := data
			for i, o := range fp.outs {
				tt := infer.NewTensor(o.DType, o.Shape)
				d = d[copy(tt.Data, d):]
				out[i] = tt
			}
			res, err := fp.p.Apply(out)
			if err != nil {
				if !errors.Is(err, ErrNonFinite) {
					t.Fatalf("well-formed tensors: got %v; want a result or ErrNonFinite", err)
				}
				continue
			}
			if _, err := json.Marshal(res); err != nil {
				t.Fatalf("result %v does not encode: %v", res, err)
			}
		}
	})
}

func BenchmarkDetection(b *testing.B) {
	p := mustNew(b, spec.Output{Kind: spec.OutputDetection, Labels: []string{"???", "person"}, LabelOffset: 1}, ssdOutputs(10))
	boxes := make([][4]float32, 10)
	scores := []float32{0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0}
	out := ssdTensors(boxes, make([]float32, 10), scores, 10)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := p.Apply(out); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkClassification1001(b *testing.B) {
	p := mustNew(b, spec.Output{Kind: spec.OutputClassification, Classification: spec.Classification{TopK: 5, Softmax: true}}, []infer.TensorInfo{info(infer.Float32, 1, 1001)})
	v := make([]float32, 1001)
	for i := range v {
		v[i] = float32(i%97) / 10
	}
	out := []infer.Tensor{f32([]int{1, 1001}, v...)}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := p.Apply(out); err != nil {
			b.Fatal(err)
		}
	}
}

// An output whose shape is only known after the invoke (an image-to-image model: the runtime
// describes it as float32[] with no bytes until then) is read at the shape the invoke gave it;
// a fixed output of the wrong size is still refused.
func TestDynamicOutputShape(t *testing.T) {
	dyn := infer.TensorInfo{Name: "image", DType: infer.Float32, Shape: []int{}, Bytes: 0}
	p := mustNew(t, spec.Output{}, []infer.TensorInfo{dyn})
	out, err := p.Apply([]infer.Tensor{f32([]int{1, 2, 3, 1}, 1, 2, 3, 4, 5, 6)})
	if err != nil || len(out.Outputs) != 1 || len(out.Outputs[0]) != 6 || out.Outputs[0][5] != 6 {
		t.Errorf("dynamic output: %+v, %v; want the 6 values the invoke gave", out.Outputs, err)
	}
	open := infer.TensorInfo{Name: "boxes", DType: infer.Float32, Shape: []int{1, -1, 4}, Bytes: 16}
	if _, err := mustNew(t, spec.Output{}, []infer.TensorInfo{open}).Apply([]infer.Tensor{f32([]int{1, 2, 4}, make([]float32, 8)...)}); err != nil {
		t.Errorf("an open dimension: %v", err)
	}
	fixed := mustNew(t, spec.Output{}, []infer.TensorInfo{info(infer.Float32, 1, 4)})
	if _, err := fixed.Apply([]infer.Tensor{f32([]int{1, 6}, make([]float32, 6)...)}); err == nil {
		t.Error("a fixed [1,4] output given 6 values was accepted")
	}
}
