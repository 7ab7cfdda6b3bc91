package postprocess

import (
	"math"
	"strings"
	"testing"

	"github.com/edge-agent/edge-agent/agent/infer"
	"github.com/edge-agent/edge-agent/models/spec"
)

// BlazeFace short range's anchors over 128x128, by hand: stride 8 gives a 16x16 map with 2
// anchors per cell (aspect ratio 1 and the interpolated one), 512 in all; the three stride-16
// layers share an 8x8 map with 6 per cell, 384. Centres are (cell + 0.5) / map size; sizes 1.
func TestBlazeFaceAnchors(t *testing.T) {
	a := genAnchors(spec.Anchors{}, 128, 128)
	if len(a) != 896 {
		t.Fatalf("%d anchors; BlazeFace short range has 896", len(a))
	}
	for i, want := range map[int]anchor{
		0:   {0.03125, 0.03125, 1, 1},
		1:   {0.03125, 0.03125, 1, 1},
		2:   {0.09375, 0.03125, 1, 1},
		32:  {0.03125, 0.09375, 1, 1}, // the second row of the 16x16 map
		511: {0.96875, 0.96875, 1, 1},
		512: {0.0625, 0.0625, 1, 1},
		517: {0.0625, 0.0625, 1, 1},
		566: {0.1875, 0.1875, 1, 1}, // 512 + 6 × (8 + 1): cell (1, 1)
		895: {0.9375, 0.9375, 1, 1},
	} {
		if a[i] != want {
			t.Errorf("anchor %d = %+v; want %+v", i, a[i], want)
		}
	}
	// Variable sizes (TF SSD style): one layer, scale (0.2+0.4)/2 = 0.3, ratio 4 gives 0.6 × 0.15,
	// and the interpolated anchor is sqrt(0.3 × 1) square.
	v := genAnchors(spec.Anchors{Strides: []int{64}, MinScale: 0.2, MaxScale: 0.4, AspectRatios: []float64{4}, VariableSize: true}, 128, 128)
	if len(v) != 8 || math.Abs(v[0].w-0.6) > 1e-12 || math.Abs(v[0].h-0.15) > 1e-12 || math.Abs(v[1].w-math.Sqrt(0.3)) > 1e-12 || v[1].w != v[1].h {
		t.Errorf("variable anchors %+v", v)
	}
}

// One face, decoded by hand from BlazeFace-shaped raw outputs: anchor 566 (centre 0.1875,
// 0.1875) with offsets in input pixels (x +12.8, y -6.4, w 25.6, h 38.4 over 128) and a logit
// of 2; anchor 567 (the same cell) overlaps it with a lower score and is suppressed; every
// other anchor scores sigmoid(-10).
func TestAnchorsDecode(t *testing.T) {
	boxes := make([]float32, 896*16)
	scores := make([]float32, 896)
	for i := range scores {
		scores[i] = -10
	}
	copy(boxes[566*16:], []float32{12.8, -6.4, 25.6, 38.4, 0, 0, 64, 64})
	scores[566] = 2
	copy(boxes[567*16:], []float32{12.8, -6.4, 25.6, 38.4})
	scores[567] = 1
	p, err := NewFor(spec.Output{Kind: spec.OutputDetection, Labels: []string{"face"}, Detection: spec.Detection{Format: spec.DetectAnchors, Sigmoid: true}},
		[]infer.TensorInfo{info(infer.Float32, 1, 128, 128, 3)}, []infer.TensorInfo{info(infer.Float32, 1, 896, 16), info(infer.Float32, 1, 896, 1)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	out, err := p.Apply([]infer.Tensor{f32([]int{1, 896, 16}, boxes...), f32([]int{1, 896, 1}, scores...)})
	if err != nil {
		t.Fatal(err)
	}
	cx, cy := 0.1875+float64(float32(12.8))/128, 0.1875+float64(float32(-6.4))/128
	w, h := float64(float32(25.6))/128, float64(float32(38.4))/128
	near(t, "blazeface", out.Detections, []Detection{{Class: 0, Label: "face", Score: 1 / (1 + math.Exp(-2)),
		Box: Box{XMin: cx - w/2, YMin: max(0, cy-h/2), XMax: cx + w/2, YMax: cy + h/2}}})
	kp := out.Detections[0].Keypoints
	if len(kp) != 6 || kp[0] != (Point{X: 0.1875, Y: 0.1875}) || kp[1] != (Point{X: 0.6875, Y: 0.6875}) || kp[5] != (Point{X: 0.1875, Y: 0.1875}) {
		t.Errorf("keypoints %+v; want 6, the second at (0.6875, 0.6875)", kp)
	}
}

// Anchor options that do not give the model's anchor count, and outputs of the wrong shape,
// are refused at load with the field to change.
func TestAnchorsRefusals(t *testing.T) {
	in := []infer.TensorInfo{info(infer.Float32, 1, 128, 128, 3)}
	for _, c := range []struct {
		d       spec.Detection
		inputs  []infer.TensorInfo
		outputs []infer.TensorInfo
		want    string
	}{
		{spec.Detection{Format: spec.DetectAnchors, Anchors: spec.Anchors{Strides: []int{8}}}, in, []infer.TensorInfo{info(infer.Float32, 1, 896, 16), info(infer.Float32, 1, 896, 1)}, "output.detection.anchors: the options give 512 anchors"},
		{spec.Detection{Format: spec.DetectAnchors}, in, []infer.TensorInfo{info(infer.Float32, 1, 896, 3), info(infer.Float32, 1, 896, 1)}, "output.detection.boxes"},
		{spec.Detection{Format: spec.DetectAnchors}, in, []infer.TensorInfo{info(infer.Float32, 1, 896, 16), info(infer.Float32, 1, 895, 1)}, "output.detection.scores"},
		{spec.Detection{Format: spec.DetectAnchors}, nil, []infer.TensorInfo{info(infer.Float32, 1, 896, 16), info(infer.Float32, 1, 896, 1)}, "input picture"},
	} {
		_, err := NewFor(spec.Output{Kind: spec.OutputDetection, Detection: c.d}, c.inputs, c.outputs, nil)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v; want %q", c.d.Anchors, err, c.want)
		}
	}
}
