package postprocess

import (
	"math"
	"strings"
	"testing"

	"github.com/edge-agent/edge-agent/agent/infer"
	"github.com/edge-agent/edge-agent/models/spec"
)

// MoveNet single pose: y, x, score per keypoint, COCO names by default, the pose scored by the
// mean of its keypoints.
func TestMoveNetSinglePose(t *testing.T) {
	v := make([]float32, 17*3)
	for k := range 17 {
		v[3*k], v[3*k+1], v[3*k+2] = 0.1, 0.1, 0.5
	}
	v[0], v[1], v[2] = 0.2, 0.5, 0.9 // the nose
	p := mustNew(t, spec.Output{Kind: spec.OutputKeypoints}, []infer.TensorInfo{info(infer.Float32, 1, 1, 17, 3)})
	out, err := p.Apply([]infer.Tensor{f32([]int{1, 1, 17, 3}, v...)})
	if err != nil || len(out.Poses) != 1 {
		t.Fatalf("%+v, %v", out.Poses, err)
	}
	pose := out.Poses[0]
	nose, ankle := pose.Keypoints[0], pose.Keypoints[16]
	f := func(x float32) float64 { return float64(x) }
	if nose.Name != "nose" || nose.X != f(0.5) || nose.Y != f(0.2) || nose.Score != f(0.9) || ankle.Name != "right_ankle" {
		t.Errorf("keypoints %+v ... %+v", nose, ankle)
	}
	if want := (f(0.9) + 16*f(0.5)) / 17; math.Abs(pose.Score-want) > 1e-12 || pose.Box != nil {
		t.Errorf("pose score %v, box %v; want %v and no box", pose.Score, pose.Box, want)
	}
}

// MoveNet multi-pose: 17 keypoints then a box and the pose's score; a pose under the threshold
// (0.2) is dropped.
func TestMoveNetMultiPose(t *testing.T) {
	v := make([]float32, 2*56)
	v[51+4] = 0.1 // pose 0: score 0.1
	second := v[56:]
	second[0], second[1], second[2] = 0.3, 0.4, 0.7
	copy(second[51:], []float32{0.1, 0.2, 0.9, 0.6, 0.8})
	p := mustNew(t, spec.Output{Kind: spec.OutputKeypoints}, []infer.TensorInfo{info(infer.Float32, 1, 2, 56)})
	out, err := p.Apply([]infer.Tensor{f32([]int{1, 2, 56}, v...)})
	if err != nil || len(out.Poses) != 1 {
		t.Fatalf("%+v, %v; want the one pose above 0.2", out.Poses, err)
	}
	ps := out.Poses[0]
	f := func(x float32) float64 { return float64(x) }
	if ps.Score != f(0.8) || ps.Box == nil || ps.Box.YMin != f(0.1) || ps.Box.XMax != f(0.6) || ps.Keypoints[0].Y != f(0.3) || ps.Keypoints[0].X != f(0.4) {
		t.Errorf("pose %+v box %+v", ps, ps.Box)
	}
}

// PoseNet: each keypoint at its heatmap's peak, moved by the offsets there (input pixels), with
// the output stride (input - 1) / (heatmap - 1) = 16 for a 33x33 input and 3x3 heatmaps.
func TestPoseNet(t *testing.T) {
	heat := make([]float32, 3*3*2) // [1,3,3,2]
	offs := make([]float32, 3*3*4) // [1,3,3,4]: y offsets of both keypoints, then x
	heat[(1*3+2)*2+0] = 3          // keypoint 0 peaks at row 1, column 2
	heat[0*2+1] = 1                // keypoint 1 at row 0, column 0
	for i := range heat {
		if heat[i] == 0 {
			heat[i] = -5
		}
	}
	at := (1*3 + 2) * 4
	offs[at+0], offs[at+2] = 2, -4 // keypoint 0: y + 2, x - 4
	p, err := NewFor(spec.Output{Kind: spec.OutputKeypoints, Keypoints: spec.Keypoints{Format: "posenet", Names: []string{"a", "b"}}},
		[]infer.TensorInfo{info(infer.Float32, 1, 33, 33, 3)}, []infer.TensorInfo{info(infer.Float32, 1, 3, 3, 2), info(infer.Float32, 1, 3, 3, 4)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	out, err := p.Apply([]infer.Tensor{f32([]int{1, 3, 3, 2}, heat...), f32([]int{1, 3, 3, 4}, offs...)})
	if err != nil {
		t.Fatal(err)
	}
	k0, k1 := out.Poses[0].Keypoints[0], out.Poses[0].Keypoints[1]
	s := func(x float64) float64 { return 1 / (1 + math.Exp(-x)) }
	if k0.Name != "a" || math.Abs(k0.X-28.0/33) > 1e-12 || math.Abs(k0.Y-18.0/33) > 1e-12 || math.Abs(k0.Score-s(3)) > 1e-12 ||
		k1.X != 0 || k1.Y != 0 || math.Abs(k1.Score-s(1)) > 1e-12 {
		t.Errorf("keypoints %+v %+v; want a at (28/33, 18/33) and b at (0, 0)", k0, k1)
	}
}

func TestKeypointsRefusals(t *testing.T) {
	for _, c := range []struct {
		k     spec.Keypoints
		shape []int
		want  string
	}{
		{spec.Keypoints{}, []int{1, 17, 3}, "movenet gives [1,1,K,3]"},
		{spec.Keypoints{Names: []string{"a"}}, []int{1, 1, 17, 3}, "has 1 names for 17 keypoints"},
		{spec.Keypoints{Format: "posenet"}, []int{1, 9, 9, 17}, "output.keypoints.offsets"},
	} {
		_, err := New(spec.Output{Kind: spec.OutputKeypoints, Keypoints: c.k}, []infer.TensorInfo{info(infer.Float32, c.shape...)}, nil)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v %v: %v; want %q", c.k, c.shape, err, c.want)
		}
	}
}
