package postprocess

// Pose models (spec.Keypoints): MoveNet's single-pose [1,1,K,3] and multi-pose [1,P,3K+5]
// outputs, and PoseNet's heatmaps and offsets, decoded into named keypoints relative to the
// picture with their scores.

import (
	"cmp"
	"fmt"
	"slices"

	"github.com/edge-agent/edge-agent/agent/infer"
	"github.com/edge-agent/edge-agent/agent/result"
	"github.com/edge-agent/edge-agent/models/spec"
)

// cocoKeypoints are the 17 keypoints of COCO, in the order MoveNet and PoseNet give them.
var cocoKeypoints = []string{"nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
	"left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle"}

type poseHead struct {
	posenet      bool
	tensor, offs int
	k            int // keypoints per pose
	poses        int // movenet: poses in the output (1: single pose)
	multi        bool
	h, w         int     // posenet heatmap size
	inW, inH     float64 // posenet: model input size (for the offsets, in its pixels)
	names        []string
	thr          float64
	stride       float64
}

func (p *Postprocessor) newKeypoints(k spec.Keypoints, inputs []infer.TensorInfo) error {
	h := &poseHead{posenet: k.Format == "posenet", tensor: k.Tensor, offs: cmp.Or(k.Offsets, 1), thr: cmp.Or(k.ScoreThreshold, 0.2)}
	field := "output.keypoints.tensor"
	o, err := p.tensor(field, k.Tensor)
	if err != nil {
		return err
	}
	s := o.Shape
	switch {
	case h.posenet:
		if len(s) != 4 || s[0] != 1 {
			return fmt.Errorf("%s: output %d (%s) has shape %v; posenet heatmaps are [1,H,W,K]", field, k.Tensor, o.Name, s)
		}
		h.h, h.w, h.k = s[1], s[2], s[3]
		oo, err := p.tensor("output.keypoints.offsets", h.offs)
		if err != nil {
			return err
		}
		if !slices.Equal(oo.Shape, []int{1, h.h, h.w, 2 * h.k}) {
			return fmt.Errorf("output.keypoints.offsets: output %d (%s) has shape %v; posenet offsets are [1,%d,%d,%d] beside heatmaps %v", h.offs, oo.Name, oo.Shape, h.h, h.w, 2*h.k, s)
		}
		w, hh, ok := inputSize(inputs)
		if !ok {
			return fmt.Errorf("output.keypoints: posenet offsets are in input pixels, and the model's first input is not an image")
		}
		h.inW, h.inH = float64(w), float64(hh)
		h.stride = float64(k.OutputStride)
		if h.stride == 0 && h.w > 1 {
			h.stride = float64(w-1) / float64(h.w-1) // PoseNet: (input - 1) / (heatmap - 1)
		}
	case len(s) == 4 && s[0] == 1 && s[1] == 1 && s[3] == 3: // movenet single pose
		h.k, h.poses = s[2], 1
	case len(s) == 3 && s[0] == 1 && s[2] > 5 && (s[2]-5)%3 == 0: // movenet multi-pose
		h.k, h.poses, h.multi = (s[2]-5)/3, s[1], true
	default:
		return fmt.Errorf("%s: output %d (%s) has shape %v; movenet gives [1,1,K,3] (single pose) or [1,P,3K+5] (multi-pose); for heatmaps set output.keypoints.format: posenet", field, k.Tensor, o.Name, s)
	}
	h.names = k.Names
	if len(h.names) == 0 && h.k == len(cocoKeypoints) {
		h.names = cocoKeypoints
	}
	if len(h.names) != 0 && len(h.names) != h.k {
		return fmt.Errorf("output.keypoints.names: has %d names for %d keypoints; name each in order", len(h.names), h.k)
	}
	p.pose = h
	return nil
}

func (p *Postprocessor) keypoints(out []infer.Tensor) (Output, error) {
	h := p.pose
	v, err := p.values(out, h.tensor)
	if err != nil {
		return Output{}, err
	}
	for i, x := range v {
		if !finite(x) {
			return Output{}, nonFinite(fmt.Sprintf("keypoints output %d", h.tensor), i, x)
		}
	}
	name := func(i int) string {
		if i < len(h.names) {
			return h.names[i]
		}
		return ""
	}
	if h.posenet {
		offs, err := p.values(out, h.offs)
		if err != nil {
			return Output{}, err
		}
		pose := result.Pose{Keypoints: make([]result.Keypoint, h.k)}
		for k := range h.k {
			best, by, bx := v[k], 0, 0
			for y := range h.h {
				for x := range h.w {
					if s := v[(y*h.w+x)*h.k+k]; s > best {
						best, by, bx = s, y, x
					}
				}
			}
			at := (by*h.w + bx) * 2 * h.k
			oy, ox := offs[at+k], offs[at+h.k+k]
			if !finite(oy) || !finite(ox) {
				return Output{}, nonFinite(fmt.Sprintf("keypoints offsets (output %d)", h.offs), at+k, oy)
			}
			pose.Keypoints[k] = result.Keypoint{Name: name(k), Score: sigmoid(best),
				X: clamp01((float64(bx)*h.stride + ox) / h.inW), Y: clamp01((float64(by)*h.stride + oy) / h.inH)}
			pose.Score += pose.Keypoints[k].Score / float64(h.k)
		}
		return Output{Poses: []result.Pose{pose}}, nil
	}
	width := 3*h.k + 5
	if !h.multi {
		width = 3 * h.k
	}
	var poses []result.Pose
	for i := range h.poses {
		r := v[i*width : (i+1)*width]
		pose := result.Pose{Keypoints: make([]result.Keypoint, h.k)}
		for k := range h.k {
			pose.Keypoints[k] = result.Keypoint{Name: name(k), Y: clamp01(r[3*k]), X: clamp01(r[3*k+1]), Score: r[3*k+2]}
			pose.Score += r[3*k+2] / float64(h.k)
		}
		if h.multi {
			b := r[3*h.k:]
			pose.Score = b[4]
			if pose.Score < h.thr {
				continue
			}
			pose.Box = &result.Box{YMin: clamp01(b[0]), XMin: clamp01(b[1]), YMax: clamp01(b[2]), XMax: clamp01(b[3])}
		}
		poses = append(poses, pose)
	}
	slices.SortStableFunc(poses, func(a, b result.Pose) int { return cmpDesc(a.Score, b.Score) })
	return Output{Poses: poses}, nil
}
