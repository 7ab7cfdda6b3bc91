package postprocess

// Raw detection heads: the YOLO families export one tensor of candidate boxes, not the four of
// TFLite_Detection_PostProcess, and leave the score threshold and the non-maximum suppression
// to the caller.
//
//	yolov5   [1,N,5+C]: cx, cy, w, h, objectness, C class scores; score = objectness × class
//	yolov8   [1,4+C,N]: cx, cy, w, h, C class scores (YOLOv8, YOLO11; no objectness)
//	end2end  [1,K,6]:   x1, y1, x2, y2, score, class (YOLOv10 and NMS-free exports: no NMS)
//
// Exporters differ in which axis holds the attributes (Ultralytics' TFLite and ONNX exports
// of v8 put them first, [1,84,8400]; others transpose), so for the yolo formats the shorter
// of the two axes is taken as the attributes. Boxes are normalised to the model input (0..1)
// or in its pixels (box_units); preprocessing stretches the picture to the input, so a box
// normalised to the input is normalised to the picture too.

import (
	"cmp"
	"fmt"
	"math"
	"slices"

	"github.com/edge-agent/edge-agent/agent/infer"
	"github.com/edge-agent/edge-agent/models/spec"
)

// maxCandidates bounds the boxes that reach the suppression (the highest scoring ones), so
// that a model scoring every anchor above the threshold costs bounded time.
const maxCandidates = 4096

type yoloHead struct {
	format     string
	tensor     int
	n, attrs   int  // candidates, attributes per candidate
	attrsFirst bool // [1,attrs,n] rather than [1,n,attrs]
	classStart int  // first class score's attribute
	scaleX     float64
	scaleY     float64
	sigmoid    bool
	agnostic   bool
	iou, thr   float64
	maxDet     int
}

// candidate is one decoded box before suppression.
type candidate struct {
	class int
	score float64
	box   Box
	idx   int // the candidate's position: ties in score keep the model's order
}

func (p *Postprocessor) newYOLO(d spec.Detection, inputs []infer.TensorInfo) error {
	field := "output.detection.tensor"
	o, err := p.tensor(field, d.Tensor)
	if err != nil {
		return err
	}
	h := &yoloHead{format: d.Format, tensor: d.Tensor, sigmoid: d.Sigmoid, agnostic: d.ClassAgnostic,
		iou: cmp.Or(d.IoUThreshold, 0.45), thr: cmp.Or(d.ScoreThreshold, 0.25), maxDet: cmp.Or(d.MaxDetections, 100), scaleX: 1, scaleY: 1}
	if len(o.Shape) != 3 || o.Shape[0] != 1 {
		return fmt.Errorf("%s: output %d (%s) has shape %v; the %s format is one tensor [1,N,A] or [1,A,N]", field, d.Tensor, o.Name, o.Shape, d.Format)
	}
	a, b := o.Shape[1], o.Shape[2]
	minAttrs := map[string]int{spec.DetectYOLOv5: 6, spec.DetectYOLOv8: 5, spec.DetectEnd2End: 6}[d.Format]
	switch d.Format {
	case spec.DetectEnd2End:
		h.n, h.attrs = a, b
		if b != 6 {
			return fmt.Errorf("%s: output %d (%s) has shape %v; the end2end format gives [1,K,6] (x1, y1, x2, y2, score, class)", field, d.Tensor, o.Name, o.Shape)
		}
	default:
		h.attrs, h.n, h.attrsFirst = min(a, b), max(a, b), a < b
		h.classStart = map[string]int{spec.DetectYOLOv5: 5, spec.DetectYOLOv8: 4}[d.Format]
		if h.attrs < minAttrs {
			return fmt.Errorf("%s: output %d (%s) has shape %v; the %s format needs at least %d attributes per box (%s)", field, d.Tensor, o.Name, o.Shape, d.Format, minAttrs,
				map[string]string{spec.DetectYOLOv5: "cx, cy, w, h, objectness, class scores", spec.DetectYOLOv8: "cx, cy, w, h, class scores"}[d.Format])
		}
	}
	if d.BoxUnits == "pixels" {
		w, hh, ok := inputSize(inputs)
		if !ok {
			return fmt.Errorf("output.detection.box_units: pixels needs the model's input picture size, and its first input is not an image [1,H,W,C] or [1,C,H,W]; use normalized")
		}
		h.scaleX, h.scaleY = 1/float64(w), 1/float64(hh)
	}
	h.thr = threshold(o, h.thr)
	p.yolo = h
	return nil
}

// inputSize is the picture size of a model's first input: NHWC, or NCHW with 1, 3 or 4 channels.
func inputSize(inputs []infer.TensorInfo) (w, h int, ok bool) {
	if len(inputs) == 0 || len(inputs[0].Shape) != 4 {
		return 0, 0, false
	}
	s := inputs[0].Shape
	channels := func(c int) bool { return c == 1 || c == 3 || c == 4 }
	switch {
	case channels(s[3]) && s[1] > 0 && s[2] > 0:
		return s[2], s[1], true
	case channels(s[1]) && s[2] > 0 && s[3] > 0:
		return s[3], s[2], true
	}
	return 0, 0, false
}

func sigmoid(x float64) float64 { return 1 / (1 + math.Exp(-x)) }

func (p *Postprocessor) decodeYOLO(out []infer.Tensor) (Output, error) {
	h := p.yolo
	get, err := p.reader(out, h.tensor)
	if err != nil {
		return Output{}, err
	}
	at := func(i, j int) float64 {
		if h.attrsFirst {
			return get(j*h.n + i)
		}
		return get(i*h.attrs + j)
	}
	what := fmt.Sprintf("detection output %d", h.tensor)
	// With the attributes first ([1,84,8400]) a candidate's class scores lie a whole row apart:
	// find every candidate's best class row by row, in memory order, instead.
	var rowBest []float64
	var rowClass []int32
	if h.attrsFirst && h.format != spec.DetectEnd2End {
		rowBest, rowClass = bestByRows(get, h)
	}
	best := func(i int) (float64, int) {
		if rowBest == nil {
			return bestClass(at, i, h)
		}
		s := rowBest[i]
		if h.sigmoid {
			s = sigmoid(s)
		}
		return s, int(rowClass[i])
	}
	var cands []candidate
	for i := range h.n {
		score, class := 0.0, 0
		switch h.format {
		case spec.DetectEnd2End:
			score, class = at(i, 4), -1
			if c := at(i, 5); finite(c) {
				class = int(math.Round(max(-1, min(c, 1<<30))))
			}
		case spec.DetectYOLOv5:
			obj := at(i, 4)
			if h.sigmoid {
				obj = sigmoid(obj)
			}
			if !finite(obj) {
				return Output{}, nonFinite(what, i, obj)
			}
			if obj < h.thr {
				continue // score = objectness × class score ≤ objectness
			}
			score, class = best(i)
			score *= obj
		default:
			score, class = best(i)
		}
		if !finite(score) {
			return Output{}, nonFinite(what, i, score)
		}
		if score < h.thr {
			continue
		}
		b0, b1, b2, b3 := at(i, 0), at(i, 1), at(i, 2), at(i, 3)
		for _, x := range []float64{b0, b1, b2, b3} {
			if !finite(x) {
				return Output{}, nonFinite(what, i, x)
			}
		}
		var box Box
		if h.format == spec.DetectEnd2End {
			box = Box{XMin: b0 * h.scaleX, YMin: b1 * h.scaleY, XMax: b2 * h.scaleX, YMax: b3 * h.scaleY}
		} else {
			cx, cy, w, hh := b0*h.scaleX, b1*h.scaleY, b2*h.scaleX, b3*h.scaleY
			box = Box{XMin: cx - w/2, YMin: cy - hh/2, XMax: cx + w/2, YMax: cy + hh/2}
		}
		box, ok := clampBox(box)
		if !ok {
			continue
		}
		cands = append(cands, candidate{class: class, score: score, box: box, idx: i})
	}
	cands = rank(cands)
	if h.format != spec.DetectEnd2End {
		cands = suppress(cands, h.iou, h.agnostic, h.maxDet)
	}
	if len(cands) > h.maxDet {
		cands = cands[:h.maxDet]
	}
	dets := make([]Detection, len(cands))
	for i, c := range cands {
		dets[i] = Detection{Class: c.class, Label: p.label(c.class), Score: c.score, Box: c.box}
	}
	return Output{Detections: dets}, nil
}

// bestByRows is each candidate's highest class score (before any sigmoid) and its class, for
// the attributes-first layout, reading the class rows in order. A NaN score stays NaN.
func bestByRows(get func(int) float64, h *yoloHead) ([]float64, []int32) {
	best, class := make([]float64, h.n), make([]int32, h.n)
	for i := range best {
		best[i] = math.Inf(-1)
	}
	for j := h.classStart; j < h.attrs; j++ {
		row := j * h.n
		c := int32(j - h.classStart)
		for i := range h.n {
			switch s := get(row + i); {
			case s > best[i]:
				best[i], class[i] = s, c
			case s != s: // NaN: reported by the caller's finite check
				best[i], class[i] = s, c
			}
		}
	}
	return best, class
}

// bestClass is the highest class score of candidate i (after the sigmoid when declared).
func bestClass(at func(i, j int) float64, i int, h *yoloHead) (float64, int) {
	best, class := math.Inf(-1), 0
	for j := h.classStart; j < h.attrs; j++ {
		s := at(i, j)
		if math.IsNaN(s) {
			return s, j - h.classStart
		}
		if s > best {
			best, class = s, j-h.classStart
		}
	}
	if h.sigmoid {
		best = sigmoid(best) // monotonic: the best logit is the best probability
	}
	return best, class
}

// rank sorts candidates by score, highest first (ties keep the model's order), and keeps the
// maxCandidates best.
func rank(cands []candidate) []candidate {
	slices.SortFunc(cands, func(a, b candidate) int {
		if c := cmpDesc(a.score, b.score); c != 0 {
			return c
		}
		return cmp.Compare(a.idx, b.idx)
	})
	return cands[:min(len(cands), maxCandidates)]
}

// clampBox clamps a box to the picture; false when no area is left inside it (not an object).
func clampBox(b Box) (Box, bool) {
	b = Box{XMin: clamp01(b.XMin), YMin: clamp01(b.YMin), XMax: clamp01(b.XMax), YMax: clamp01(b.YMax)}
	return b, b.XMax > b.XMin && b.YMax > b.YMin
}

// suppress keeps, highest score first, each candidate whose overlap (IoU) with every kept one
// of its class (of any class when agnostic) is at most iou, up to maxDet. cands is sorted.
func suppress(cands []candidate, iou float64, agnostic bool, maxDet int) []candidate {
	kept := cands[:0:0]
	for _, c := range cands {
		if len(kept) == maxDet {
			break
		}
		ok := true
		for _, k := range kept {
			if (agnostic || k.class == c.class) && overlap(k.box, c.box) > iou {
				ok = false
				break
			}
		}
		if ok {
			kept = append(kept, c)
		}
	}
	return kept
}

// overlap is the intersection over union of two boxes (0 when either is empty).
func overlap(a, b Box) float64 {
	iw := min(a.XMax, b.XMax) - max(a.XMin, b.XMin)
	ih := min(a.YMax, b.YMax) - max(a.YMin, b.YMin)
	if iw <= 0 || ih <= 0 {
		return 0
	}
	inter := iw * ih
	union := (a.XMax-a.XMin)*(a.YMax-a.YMin) + (b.XMax-b.XMin)*(b.YMax-b.YMin) - inter
	if union <= 0 {
		return 0
	}
	return inter / union
}
