package postprocess

import (
	"errors"
	"fmt"
	"math"
	"strings"
	"testing"

	"github.com/edge-agent/edge-agent/agent/infer"
	"github.com/edge-agent/edge-agent/models/spec"
)

// near compares detections with hand-computed ones within float32 rounding.
func near(t *testing.T, what string, got []Detection, want []Detection) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d detections %+v; want %d %+v", what, len(got), got, len(want), want)
	}
	eq := func(a, b float64) bool { return math.Abs(a-b) < 1e-6 }
	for i, g := range got {
		w := want[i]
		if g.Class != w.Class || g.Label != w.Label || !eq(g.Score, w.Score) ||
			!eq(g.Box.XMin, w.Box.XMin) || !eq(g.Box.YMin, w.Box.YMin) || !eq(g.Box.XMax, w.Box.XMax) || !eq(g.Box.YMax, w.Box.YMax) {
			t.Errorf("%s: detection %d is %+v; want %+v", what, i, g, w)
		}
	}
}

// layout lays rows of attributes ([n][a]) out flat as [1,a,n] or [1,n,a], after padding them
// with all-zero rows (below any threshold) to 16: the decoder takes the shorter axis as the
// attributes, and a real head has thousands of candidates.
func layout(rows [][]float32, attrsFirst bool) ([]int, []float32) {
	for len(rows) < 16 {
		rows = append(rows, make([]float32, len(rows[0])))
	}
	n, a := len(rows), len(rows[0])
	var v []float32
	if attrsFirst {
		for j := range a {
			for i := range n {
				v = append(v, rows[i][j])
			}
		}
		return []int{1, a, n}, v
	}
	for _, r := range rows {
		v = append(v, r...)
	}
	return []int{1, n, a}, v
}

func apply(t *testing.T, d spec.Detection, labels []string, inputs []infer.TensorInfo, shape []int, v []float32) ([]Detection, error) {
	t.Helper()
	d.Tensor = 0
	p, err := NewFor(spec.Output{Kind: spec.OutputDetection, Labels: labels, Detection: d}, inputs, []infer.TensorInfo{info(infer.Float32, shape...)}, nil)
	if err != nil {
		t.Fatalf("NewFor: %v", err)
	}
	out, err := p.Apply([]infer.Tensor{f32(shape, v...)})
	return out.Detections, err
}

// YOLOv8 heads, in both axis orders: the score is the best class score, overlapping boxes of a
// class are suppressed (IoU 0.818 > 0.45), a box of another class stays, one below the
// threshold goes; agnostic suppression also drops an overlapping box of another class.
func TestYOLOv8(t *testing.T) {
	rows := [][]float32{
		{0.5, 0.5, 0.2, 0.2, 0.9, 0.1},   // class 0, 0.9: box 0.4..0.6
		{0.52, 0.5, 0.2, 0.2, 0.8, 0.05}, // class 0, 0.8, IoU 0.036/0.044 with the first: suppressed
		{0.2, 0.2, 0.1, 0.1, 0.1, 0.3},   // class 1, 0.3: box 0.15..0.25
		{0.8, 0.8, 0.1, 0.1, 0.2, 0.1},   // best 0.2 < 0.25: dropped
		{0.51, 0.5, 0.2, 0.2, 0.1, 0.6},  // class 1, 0.6, overlaps the first (another class)
	}
	labels := []string{"cat", "dog"}
	want := []Detection{
		{Class: 0, Label: "cat", Score: float64(float32(0.9)), Box: Box{XMin: 0.4, YMin: 0.4, XMax: 0.6, YMax: 0.6}},
		{Class: 1, Label: "dog", Score: float64(float32(0.6)), Box: Box{XMin: float64(float32(0.51)) - 0.1, YMin: 0.4, XMax: float64(float32(0.51)) + 0.1, YMax: 0.6}},
		{Class: 1, Label: "dog", Score: float64(float32(0.3)), Box: Box{XMin: 0.15, YMin: 0.15, XMax: 0.25, YMax: 0.25}},
	}
	for _, first := range []bool{true, false} {
		shape, v := layout(rows, first)
		got, err := apply(t, spec.Detection{Format: spec.DetectYOLOv8}, labels, nil, shape, v)
		if err != nil {
			t.Fatal(err)
		}
		near(t, "yolov8 "+map[bool]string{true: "[1,A,N]", false: "[1,N,A]"}[first], got, want)
	}
	shape, v := layout(rows, true)
	got, _ := apply(t, spec.Detection{Format: spec.DetectYOLOv8, ClassAgnostic: true}, labels, nil, shape, v)
	near(t, "agnostic", got, []Detection{want[0], want[2]})
	got, _ = apply(t, spec.Detection{Format: spec.DetectYOLOv8, MaxDetections: 1}, labels, nil, shape, v)
	near(t, "max_detections 1", got, want[:1])
}

// YOLOv5: score = objectness × best class; a low objectness is dropped before its classes are
// read. Logits (sigmoid: true) go through the sigmoid first.
func TestYOLOv5AndSigmoid(t *testing.T) {
	rows := [][]float32{
		{0.3, 0.3, 0.2, 0.4, 0.8, 0.5, 0.9}, // 0.8 × 0.9 = 0.72, class 1
		{0.7, 0.7, 0.2, 0.2, 0.2, 0.9, 0.9}, // objectness 0.2 < 0.25
	}
	shape, v := layout(rows, false)
	got, err := apply(t, spec.Detection{Format: spec.DetectYOLOv5}, nil, nil, shape, v)
	if err != nil {
		t.Fatal(err)
	}
	near(t, "yolov5", got, []Detection{{Class: 1, Score: float64(float32(0.8)) * float64(float32(0.9)), Box: Box{XMin: 0.2, YMin: 0.1, XMax: 0.4, YMax: 0.5}}})

	logits := [][]float32{{0.5, 0.5, 0.2, 0.2, 2, -1}} // yolov8, class 0 logit 2: sigmoid 0.8808
	shape, v = layout(logits, true)
	got, _ = apply(t, spec.Detection{Format: spec.DetectYOLOv8, Sigmoid: true}, nil, nil, shape, v)
	near(t, "sigmoid", got, []Detection{{Class: 0, Score: 1 / (1 + math.Exp(-2)), Box: Box{XMin: 0.4, YMin: 0.4, XMax: 0.6, YMax: 0.6}}})
}

// End-to-end outputs are corners and already suppressed: two overlapping boxes both stay; pixel
// units are divided by the input picture's width and height (NHWC and NCHW).
func TestEnd2EndPixels(t *testing.T) {
	rows := [][]float32{
		{32, 64, 160, 320, 0.7, 3},
		{40, 64, 160, 320, 0.6, 3}, // overlaps the first: kept (no NMS)
		{0, 0, 10, 10, 0.1, 1},     // below the threshold
	}
	shape, v := layout(rows, false)
	want := []Detection{
		{Class: 3, Label: "d", Score: float64(float32(0.7)), Box: Box{XMin: 0.1, YMin: 0.1, XMax: 0.5, YMax: 0.5}},
		{Class: 3, Label: "d", Score: float64(float32(0.6)), Box: Box{XMin: 0.125, YMin: 0.1, XMax: 0.5, YMax: 0.5}},
	}
	for _, in := range []infer.TensorInfo{info(infer.Float32, 1, 640, 320, 3), info(infer.Float32, 1, 3, 640, 320)} {
		got, err := apply(t, spec.Detection{Format: spec.DetectEnd2End, BoxUnits: "pixels"}, []string{"a", "b", "c", "d"}, []infer.TensorInfo{in}, shape, v)
		if err != nil {
			t.Fatal(err)
		}
		near(t, fmt.Sprint("end2end, input ", in.Shape), got, want)
	}
}

// Shapes that do not fit the format, pixel units without an image input, and a NaN score are
// errors that say what to change; none panics.
func TestYOLORefusals(t *testing.T) {
	for _, c := range []struct {
		d      spec.Detection
		shape  []int
		inputs []infer.TensorInfo
		want   string
	}{
		{spec.Detection{Format: spec.DetectYOLOv8}, []int{1, 84}, nil, "one tensor [1,N,A] or [1,A,N]"},
		{spec.Detection{Format: spec.DetectYOLOv5}, []int{1, 100, 5}, nil, "at least 6 attributes"},
		{spec.Detection{Format: spec.DetectEnd2End}, []int{1, 100, 7}, nil, "[1,K,6]"},
		{spec.Detection{Format: spec.DetectYOLOv8, BoxUnits: "pixels"}, []int{1, 84, 100}, nil, "use normalized"},
		{spec.Detection{Format: spec.DetectYOLOv8, BoxUnits: "pixels"}, []int{1, 84, 100}, []infer.TensorInfo{info(infer.Float32, 1, 10)}, "use normalized"},
	} {
		_, err := NewFor(spec.Output{Kind: spec.OutputDetection, Detection: c.d}, c.inputs, []infer.TensorInfo{info(infer.Float32, c.shape...)}, nil)
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "output.detection") {
			t.Errorf("%+v %v: %v; want an error naming the field and %q", c.d, c.shape, err, c.want)
		}
	}
	if err := (spec.Model{Output: spec.Output{Kind: spec.OutputDetection, Detection: spec.Detection{Format: "yolov9"}}}).Validate(); err == nil || !strings.Contains(err.Error(), "output.detection.format") {
		t.Errorf("format yolov9: %v", err)
	}
	shape, v := layout([][]float32{{0.5, 0.5, 0.2, 0.2, float32(math.NaN()), 0.1}}, true)
	if _, err := apply(t, spec.Detection{Format: spec.DetectYOLOv8}, nil, nil, shape, v); !errors.Is(err, ErrNonFinite) {
		t.Errorf("a NaN class score: %v; want ErrNonFinite", err)
	}
}

// A head where every one of 8,400 candidates scores above the threshold costs bounded work and
// keeps at most max_detections.
func TestYOLOManyCandidates(t *testing.T) {
	rows := make([][]float32, 8400)
	for i := range rows {
		x := float32(i%100) / 100
		y := float32(i/100) / 100
		rows[i] = []float32{x, y, 0.005, 0.005, 0.5 + float32(i)/1e5}
	}
	shape, v := layout(rows, true)
	got, err := apply(t, spec.Detection{Format: spec.DetectYOLOv8}, nil, nil, shape, v)
	if err != nil || len(got) != 100 || got[0].Score < got[99].Score {
		t.Fatalf("%d detections, %v; want the 100 best, in score order", len(got), err)
	}
}
