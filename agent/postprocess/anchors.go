package postprocess

// Raw SSD heads over generated anchors: MediaPipe's BlazeFace and BlazePose detectors, and SSD
// models exported without TFLite_Detection_PostProcess. The boxes tensor [1,A,4+2K] holds, per
// anchor, a box relative to it (and K keypoints); the scores tensor [1,A,C] a score per class.
// The anchors are generated from the options in spec.Anchors (as MediaPipe's SSD anchor
// options define them), never read from a file, and must number A.

import (
	"cmp"
	"fmt"
	"math"

	"github.com/edge-agent/edge-agent/agent/infer"
	"github.com/edge-agent/edge-agent/models/spec"
)

type anchor struct{ x, y, w, h float64 }

type anchorHead struct {
	boxes, scores int // output indexes
	vals, classes int // values per box, classes per anchor
	anchors       []anchor
	yx            bool       // yxhw order
	scale         [4]float64 // x, y, w, h divisors
	exp           bool
	sigmoid       bool
	agnostic      bool
	iou, thr      float64
	maxDet        int
}

// genAnchors lays anchors over a w × h input picture, layer by layer.
func genAnchors(o spec.Anchors, w, h int) []anchor {
	strides := o.Strides
	minS, maxS := o.MinScale, o.MaxScale
	if len(strides) == 0 { // BlazeFace short range
		strides, minS, maxS = []int{8, 16, 16, 16}, 0.1484375, 0.75
	}
	offset := 0.5
	if o.Offset != nil {
		offset = *o.Offset
	}
	ratios := o.AspectRatios
	if len(ratios) == 0 {
		ratios = []float64{1}
	}
	interp := cmp.Or(o.InterpolatedAspectRatio, 1)
	n := len(strides)
	scaleOf := func(i int) float64 {
		if n == 1 {
			return (minS + maxS) / 2
		}
		return minS + (maxS-minS)*float64(i)/float64(n-1)
	}
	var out []anchor
	for layer := 0; layer < n; {
		// Layers with the same stride share one feature map: their anchors interleave per cell.
		var rs, ss []float64
		last := layer
		for ; last < n && strides[last] == strides[layer]; last++ {
			s := scaleOf(last)
			for _, r := range ratios {
				rs, ss = append(rs, r), append(ss, s)
			}
			if interp > 0 {
				next := 1.0
				if last < n-1 {
					next = scaleOf(last + 1)
				}
				rs, ss = append(rs, interp), append(ss, math.Sqrt(s*next))
			}
		}
		st := strides[layer]
		fw, fh := (w+st-1)/st, (h+st-1)/st
		for y := range fh {
			for x := range fw {
				for k := range rs {
					a := anchor{x: (float64(x) + offset) / float64(fw), y: (float64(y) + offset) / float64(fh), w: 1, h: 1}
					if o.VariableSize {
						a.w, a.h = ss[k]*math.Sqrt(rs[k]), ss[k]/math.Sqrt(rs[k])
					}
					out = append(out, a)
				}
			}
		}
		layer = last
	}
	return out
}

func (p *Postprocessor) newAnchors(d spec.Detection, inputs []infer.TensorInfo) error {
	w, h, ok := inputSize(inputs)
	if !ok {
		return fmt.Errorf("output.detection.format: anchors are laid over the model's input picture, and its first input is not an image [1,H,W,C] or [1,C,H,W]")
	}
	head := &anchorHead{boxes: 0, scores: 1, sigmoid: d.Sigmoid, agnostic: d.ClassAgnostic, yx: d.Anchors.Order == "yxhw", exp: d.Anchors.ExpSize,
		iou: cmp.Or(d.IoUThreshold, 0.3), thr: cmp.Or(d.ScoreThreshold, 0.5), maxDet: cmp.Or(d.MaxDetections, 100),
		scale: [4]float64{float64(w), float64(h), float64(w), float64(h)}}
	if d.Boxes != nil {
		head.boxes = *d.Boxes
	}
	if d.Scores != nil {
		head.scores = *d.Scores
	}
	if len(d.Anchors.Scale) == 4 {
		copy(head.scale[:], d.Anchors.Scale)
	}
	bo, err := p.tensor("output.detection.boxes", head.boxes)
	if err != nil {
		return err
	}
	so, err := p.tensor("output.detection.scores", head.scores)
	if err != nil {
		return err
	}
	if len(bo.Shape) != 3 || bo.Shape[0] != 1 || bo.Shape[2] < 4 || bo.Shape[2]%2 != 0 {
		return fmt.Errorf("output.detection.boxes: output %d (%s) has shape %v; the anchors format takes [1,A,4+2K] (a box and K keypoints per anchor)", head.boxes, bo.Name, bo.Shape)
	}
	if len(so.Shape) != 3 || so.Shape[0] != 1 || so.Shape[1] != bo.Shape[1] {
		return fmt.Errorf("output.detection.scores: output %d (%s) has shape %v; the anchors format takes [1,%d,C] (a score per class for each of the boxes' anchors)", head.scores, so.Name, so.Shape, bo.Shape[1])
	}
	head.vals, head.classes = bo.Shape[2], so.Shape[2]
	head.anchors = genAnchors(d.Anchors, w, h)
	if len(head.anchors) != bo.Shape[1] {
		return fmt.Errorf("output.detection.anchors: the options give %d anchors over the %dx%d input, the model has %d: set strides, aspect_ratios and interpolated_aspect_ratio as the model was trained (BlazeFace short range needs none)", len(head.anchors), w, h, bo.Shape[1])
	}
	head.thr = threshold(so, head.thr)
	p.anchor = head
	return nil
}

func (p *Postprocessor) decodeAnchors(out []infer.Tensor) (Output, error) {
	h := p.anchor
	boxes, err := p.values(out, h.boxes)
	if err != nil {
		return Output{}, err
	}
	scores, err := p.values(out, h.scores)
	if err != nil {
		return Output{}, err
	}
	var cands []candidate
	var points [][]Point // by candidate idx, kept only for candidates
	for i, a := range h.anchors {
		best, class := math.Inf(-1), 0
		for c := range h.classes {
			s := scores[i*h.classes+c]
			if !finite(s) {
				return Output{}, nonFinite(fmt.Sprintf("detection scores (output %d)", h.scores), i*h.classes+c, s)
			}
			if s > best {
				best, class = s, c
			}
		}
		if h.sigmoid {
			best = sigmoid(best)
		}
		if best < h.thr {
			continue
		}
		r := boxes[i*h.vals : (i+1)*h.vals]
		for j, v := range r {
			if !finite(v) {
				return Output{}, nonFinite(fmt.Sprintf("detection boxes (output %d)", h.boxes), i*h.vals+j, v)
			}
		}
		x, y, bw, bh := r[0], r[1], r[2], r[3]
		if h.yx {
			x, y, bw, bh = r[1], r[0], r[3], r[2]
		}
		cx, cy := x/h.scale[0]*a.w+a.x, y/h.scale[1]*a.h+a.y
		if h.exp {
			bw, bh = math.Exp(bw/h.scale[2])*a.w, math.Exp(bh/h.scale[3])*a.h
		} else {
			bw, bh = bw/h.scale[2]*a.w, bh/h.scale[3]*a.h
		}
		box, ok := clampBox(Box{XMin: cx - bw/2, YMin: cy - bh/2, XMax: cx + bw/2, YMax: cy + bh/2})
		if !ok {
			continue
		}
		var kps []Point
		for k := 4; k+1 < h.vals; k += 2 {
			kx, ky := r[k], r[k+1]
			if h.yx {
				kx, ky = ky, kx
			}
			kps = append(kps, Point{X: clamp01(kx/h.scale[0]*a.w + a.x), Y: clamp01(ky/h.scale[1]*a.h + a.y)})
		}
		cands = append(cands, candidate{class: class, score: best, box: box, idx: len(points)})
		points = append(points, kps)
	}
	cands = rank(cands)
	cands = suppress(cands, h.iou, h.agnostic, h.maxDet)
	dets := make([]Detection, len(cands))
	for i, c := range cands {
		dets[i] = Detection{Class: c.class, Label: p.label(c.class), Score: c.score, Box: c.box, Keypoints: points[c.idx]}
	}
	return Output{Detections: dets}, nil
}
