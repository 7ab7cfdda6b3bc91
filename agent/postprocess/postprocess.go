// Package postprocess owns the last stage of the pipeline: it turns a model's output tensors
// into results (top-k classes, detections, named values or raw numbers), as the model's spec
// (models/spec Output) declares. Every output is dequantised with its tensor's quantisation
// first. Labels come inline or from a labels file read through the caller's readFile.
//
// postprocess imports agent/infer for its tensor types only. It must not import the other
// stage packages (agent/infer/tflite, agent/preprocess, agent/outbox, agent/link,
// agent/drift) nor agent/pipeline: the pipeline joins the stages through small interfaces.
// It builds with CGO_ENABLED=0.
package postprocess

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"

	"github.com/edge-agent/edge-agent/agent/infer"
	"github.com/edge-agent/edge-agent/agent/result"
	"github.com/edge-agent/edge-agent/models/spec"
)

// ErrNonFinite is wrapped by Apply errors caused by a NaN or ±Inf in an output value that
// the result uses. A model that starts producing these is misbehaving: the deploy manager
// counts them against a new version during probation.
var ErrNonFinite = errors.New("model output is not a finite number")

// Output is the result of one inference, ready to be encoded as JSON. Exactly one field is
// set, by the spec's output kind.
type Output struct {
	Classes    []Class            `json:"classes,omitempty"`
	Detections []Detection        `json:"detections,omitempty"`
	Values     map[string]float64 `json:"values,omitempty"`  // regression
	Outputs    [][]float64        `json:"outputs,omitempty"` // raw, dequantised, one slice per output tensor
	// Segmentation is a segmentation model's mask and class areas (segment.go).
	Segmentation *result.Segmentation `json:"segmentation,omitempty"`
	// Embedding is an embedding model's vector and gallery matches (embed.go).
	Embedding *result.Embedding `json:"embedding,omitempty"`
	// Poses of a keypoints model (pose.go).
	Poses []result.Pose `json:"poses,omitempty"`
}

// The scored items are the result record's own types (agent/result), so the pipeline hands
// them on without copying.
type (
	// Class is one entry of a classification's top-k.
	Class = result.Class
	// Detection is one object found by a detection model; Class is the model's index
	// (before LabelOffset).
	Detection = result.Detection
	// Box is a detection's bounding box relative to the picture (0..1), clamped.
	Box = result.Box
	// Point is a detection's keypoint relative to the picture (0..1), clamped.
	Point = result.Point
)

// Postprocessor turns output tensors into an Output for one model. It is immutable after New
// and safe for concurrent use.
type Postprocessor struct {
	kind    string
	outputs []infer.TensorInfo
	labels  []string
	offset  int

	// classification
	cls  int // tensor index
	topK int
	soft bool
	thr  float64

	// detection
	boxes, classes, scores, count int
	n                             int // detections the tensors hold
	scoreThr                      float64
	maxDet                        int
	yolo                          *yoloHead   // a raw head (yolo.go) instead of the four outputs
	anchor                        *anchorHead // raw SSD heads over generated anchors (anchors.go)

	// regression
	reg   int
	names []string

	seg   *segHead   // segmentation (segment.go)
	embed *embedHead // embedding (embed.go)
	pose  *poseHead  // keypoints (pose.go)
	sig   bool       // classification: sigmoid per score (multi-label)
}

// New validates s against the model's outputs and loads its labels (LabelsFile through
// readFile, which resolves the path; it may be nil when no labels file is used). Errors name
// the spec field ("output.detection.scores") and say what to change.
func New(s spec.Output, outputs []infer.TensorInfo, readFile func(string) ([]byte, error)) (*Postprocessor, error) {
	return NewFor(s, nil, outputs, readFile)
}

// NewFor is New for a model whose inputs are known too: detection boxes in pixels of the
// model input are normalised by its picture size.
func NewFor(s spec.Output, inputs, outputs []infer.TensorInfo, readFile func(string) ([]byte, error)) (*Postprocessor, error) {
	if err := (spec.Model{Output: s}).Validate(); err != nil {
		return nil, err
	}
	if len(outputs) == 0 {
		return nil, errors.New("model has no output tensors")
	}
	p := &Postprocessor{kind: s.Kind, outputs: make([]infer.TensorInfo, len(outputs)), offset: s.LabelOffset}
	if p.kind == "" {
		p.kind = spec.OutputRaw
	}
	for i, o := range outputs {
		o.Shape = append([]int(nil), o.Shape...)
		p.outputs[i] = o
	}
	switch {
	case len(s.Labels) > 0:
		p.labels = append([]string(nil), s.Labels...)
	case s.LabelsFile != "":
		if readFile == nil {
			return nil, fmt.Errorf("output.labels_file: %q cannot be read here; give the labels inline in output.labels", s.LabelsFile)
		}
		data, err := readFile(s.LabelsFile)
		if err != nil {
			return nil, fmt.Errorf("output.labels_file: read %q: %w", s.LabelsFile, err)
		}
		p.labels = LoadLabels(data)
		if len(p.labels) == 0 {
			return nil, fmt.Errorf("output.labels_file: %q holds no labels", s.LabelsFile)
		}
	}
	var err error
	switch p.kind {
	case spec.OutputClassification:
		err = p.newClassification(s.Classification)
	case spec.OutputDetection:
		switch s.Detection.Format {
		case "", spec.DetectPostprocess:
			err = p.newDetection(s.Detection)
		case spec.DetectAnchors:
			err = p.newAnchors(s.Detection, inputs)
		default:
			err = p.newYOLO(s.Detection, inputs)
		}
	case spec.OutputRegression:
		err = p.newRegression(s.Regression)
	case spec.OutputSegmentation:
		err = p.newSegmentation(s.Segmentation)
	case spec.OutputEmbedding:
		err = p.newEmbedding(s.Embedding, readFile)
	case spec.OutputKeypoints:
		err = p.newKeypoints(s.Keypoints, inputs)
	case spec.OutputRaw:
		for i, o := range p.outputs {
			if err = numeric(o); err != nil {
				err = fmt.Errorf("output.kind raw: output %d: %w", i, err)
				break
			}
		}
	}
	if err != nil {
		return nil, err
	}
	return p, nil
}

// Labels returns the labels in use (nil when none), for status pages and tests.
func (p *Postprocessor) Labels() []string { return slices.Clone(p.labels) }

// tensor checks that index i names a numeric output and returns it.
func (p *Postprocessor) tensor(field string, i int) (infer.TensorInfo, error) {
	if i < 0 || i >= len(p.outputs) {
		return infer.TensorInfo{}, fmt.Errorf("%s: output %d does not exist; the model has %d output(s), 0..%d", field, i, len(p.outputs), len(p.outputs)-1)
	}
	o := p.outputs[i]
	if err := numeric(o); err != nil {
		return o, fmt.Errorf("%s: output %d: %w", field, i, err)
	}
	return o, nil
}

func numeric(o infer.TensorInfo) error {
	if o.DType.Size() == 0 || o.DType == infer.Bool {
		return fmt.Errorf("%s (%s) is %s, not numbers", o.Name, shapeText(o), o.DType)
	}
	return nil
}

func shapeText(o infer.TensorInfo) string { return fmt.Sprintf("%s%v", o.DType, o.Shape) }

func (p *Postprocessor) newClassification(c spec.Classification) error {
	o, err := p.tensor("output.classification.tensor", c.Tensor)
	if err != nil {
		return err
	}
	n := o.Elements()
	if n < 1 {
		return fmt.Errorf("output.classification.tensor: output %d (%s) %s holds no scores", c.Tensor, o.Name, shapeText(o))
	}
	if wide := slices.DeleteFunc(slices.Clone(o.Shape), func(d int) bool { return d == 1 }); len(wide) > 1 {
		// A class index would be a flattened position, not a class.
		return fmt.Errorf("output.classification.tensor: output %d (%s) %s is not one score per class but %d dimensions of them: a per-pixel output wants kind segmentation, a detection head kind detection", c.Tensor, o.Name, shapeText(o), len(wide))
	}
	p.cls, p.soft, p.sig, p.thr = c.Tensor, c.Softmax, c.Sigmoid, c.Threshold
	if !c.Softmax && !c.Sigmoid {
		p.thr = threshold(o, c.Threshold)
	}
	p.topK = c.TopK
	if p.topK == 0 {
		p.topK = 1
	}
	p.topK = min(p.topK, n)
	return nil
}

func (p *Postprocessor) newDetection(d spec.Detection) error {
	p.boxes, p.classes, p.scores, p.count = d.DetectionIndexes()
	seen := map[int]string{}
	n := -1
	for _, t := range []struct {
		name  string
		index int
		want  string
	}{
		{"boxes", p.boxes, "[1,N,4]"},
		{"classes", p.classes, "[1,N]"},
		{"scores", p.scores, "[1,N]"},
		{"count", p.count, "[1]"},
	} {
		field := "output.detection." + t.name
		if other, dup := seen[t.index]; dup {
			return fmt.Errorf("%s: output %d is already output.detection.%s; give each of boxes, classes, scores and count its own output", field, t.index, other)
		}
		seen[t.index] = t.name
		o, err := p.tensor(field, t.index)
		if err != nil {
			return err
		}
		var ok bool
		var rows int
		switch t.name {
		case "boxes":
			ok = len(o.Shape) == 3 && o.Shape[0] == 1 && o.Shape[2] == 4
			rows = o.Elements() / 4
		case "classes", "scores":
			ok = len(o.Shape) == 2 && o.Shape[0] == 1
			rows = o.Elements()
		case "count":
			ok = o.Elements() == 1 && len(o.Shape) <= 1
			rows = -1
		}
		if !ok {
			return fmt.Errorf("%s: output %d (%s) has shape %v; TFLite_Detection_PostProcess gives %s %s (boxes, classes, scores, count are outputs 0..3 unless output.detection names them); for a raw YOLO head set output.detection.format (yolov5, yolov8, end2end)", field, t.index, o.Name, o.Shape, t.name, t.want)
		}
		if rows >= 0 {
			if n >= 0 && rows != n {
				return fmt.Errorf("%s: output %d (%s) %v holds %d detections but the other outputs hold %d", field, t.index, o.Name, o.Shape, rows, n)
			}
			n = rows
		}
	}
	p.n = n
	p.scoreThr = d.ScoreThreshold
	if p.scoreThr == 0 {
		p.scoreThr = 0.5
	}
	p.scoreThr = threshold(p.outputs[p.scores], p.scoreThr)
	p.maxDet = d.MaxDetections
	return nil
}

// threshold rounds a score threshold to float32 when the scores are float32, so that a
// score the model writes as 0.95 passes a threshold of 0.95 (float32(0.95) < 0.95).
func threshold(o infer.TensorInfo, thr float64) float64 {
	if o.DType == infer.Float32 && !o.Quant.Quantised() {
		return float64(float32(thr))
	}
	return thr
}

func (p *Postprocessor) newRegression(r spec.Regression) error {
	o, err := p.tensor("output.regression.tensor", r.Tensor)
	if err != nil {
		return err
	}
	n := o.Elements()
	if len(r.Names) != n {
		return fmt.Errorf("output.regression.names: has %d names but output %d (%s) %v holds %d values; name each value in order", len(r.Names), r.Tensor, o.Name, o.Shape, n)
	}
	seen := map[string]bool{}
	for i, name := range r.Names {
		if name == "" || seen[name] {
			return fmt.Errorf("output.regression.names[%d]: %q is empty or repeated; names must be unique", i, name)
		}
		seen[name] = true
	}
	p.reg, p.names = r.Tensor, slices.Clone(r.Names)
	return nil
}

// Apply turns the model's output tensors into an Output. It returns an error wrapping
// ErrNonFinite when a value it uses is NaN or ±Inf, and a plain error when the tensors do
// not match the model's outputs; it never panics on their content.
func (p *Postprocessor) Apply(out []infer.Tensor) (Output, error) {
	if len(out) != len(p.outputs) {
		return Output{}, fmt.Errorf("got %d output tensors, the model has %d", len(out), len(p.outputs))
	}
	switch p.kind {
	case spec.OutputClassification:
		return p.classify(out)
	case spec.OutputDetection:
		if p.yolo != nil {
			return p.decodeYOLO(out)
		}
		if p.anchor != nil {
			return p.decodeAnchors(out)
		}
		return p.detect(out)
	case spec.OutputRegression:
		return p.regress(out)
	case spec.OutputSegmentation:
		return p.segment(out)
	case spec.OutputEmbedding:
		return p.embedding(out)
	case spec.OutputKeypoints:
		return p.keypoints(out)
	}
	return p.raw(out)
}

// values dequantises output i, checking it against the model's description. An output whose
// shape is dynamic (known only after the invoke) is taken at the shape the invoke gave it.
func (p *Postprocessor) values(out []infer.Tensor, i int) ([]float64, error) {
	o, t := p.outputs[i], out[i]
	if t.DType != o.DType || t.Check() != nil || !o.Dynamic() && t.Len() != o.Elements() {
		return nil, fmt.Errorf("output %d is %s with %d bytes, the model describes %s", i, t.DType, len(t.Data), shapeText(o))
	}
	return t.Floats(o.Quant), nil
}

// reader is values without the copy: element i of output i, dequantised, read where it is.
// Decoders of large outputs (a YOLO head, a segmentation map) use it; float32, the common case,
// is read directly.
func (p *Postprocessor) reader(out []infer.Tensor, i int) (func(int) float64, error) {
	o, t := p.outputs[i], out[i]
	if t.DType != o.DType || t.Check() != nil || !o.Dynamic() && t.Len() != o.Elements() {
		return nil, fmt.Errorf("output %d is %s with %d bytes, the model describes %s", i, t.DType, len(t.Data), shapeText(o))
	}
	d, q := t.Data, o.Quant
	switch {
	case t.DType == infer.Float32 && !q.Quantised():
		return func(k int) float64 { return float64(math.Float32frombits(binary.LittleEndian.Uint32(d[4*k:]))) }, nil
	case q.Quantised():
		scale, zero := float64(q.Scale), float64(q.ZeroPoint)
		return func(k int) float64 { return scale * (t.Float(k) - zero) }, nil
	}
	return t.Float, nil
}

func nonFinite(what string, i int, v float64) error {
	return fmt.Errorf("%w: %s element %d is %v", ErrNonFinite, what, i, v)
}

func finite(v float64) bool { return !math.IsNaN(v) && !math.IsInf(v, 0) }

func (p *Postprocessor) label(class int) string {
	if i := class + p.offset; i >= 0 && i < len(p.labels) {
		return p.labels[i]
	}
	return ""
}

func (p *Postprocessor) classify(out []infer.Tensor) (Output, error) {
	scores, err := p.values(out, p.cls)
	if err != nil {
		return Output{}, err
	}
	for i, v := range scores {
		if !finite(v) {
			return Output{}, nonFinite(fmt.Sprintf("classification output %d", p.cls), i, v)
		}
	}
	if p.soft {
		softmax(scores)
	}
	if p.sig {
		for i, v := range scores {
			scores[i] = sigmoid(v)
		}
	}
	top := topK(scores, p.topK)
	classes := make([]Class, 0, len(top))
	for _, i := range top {
		if scores[i] < p.thr {
			break // sorted: the rest score lower
		}
		classes = append(classes, Class{Index: i, Label: p.label(i), Score: scores[i]})
	}
	return Output{Classes: classes}, nil
}

// softmax replaces v by its softmax, subtracting the maximum first so exp cannot overflow.
func softmax(v []float64) {
	m := math.Inf(-1)
	for _, x := range v {
		m = max(m, x)
	}
	sum := 0.0
	for i, x := range v {
		v[i] = math.Exp(x - m)
		sum += v[i]
	}
	for i := range v {
		v[i] /= sum
	}
}

// topK returns the indexes of the k highest scores, highest first; ties keep index order.
func topK(scores []float64, k int) []int {
	if k > 16 {
		idx := make([]int, len(scores))
		for i := range idx {
			idx[i] = i
		}
		slices.SortStableFunc(idx, func(a, b int) int { return cmpDesc(scores[a], scores[b]) })
		return idx[:k]
	}
	top := make([]int, 0, k)
	for i, s := range scores {
		if len(top) == k && s <= scores[top[k-1]] {
			continue
		}
		j := len(top)
		if j < k {
			top = append(top, i)
		} else {
			j--
		}
		for j > 0 && s > scores[top[j-1]] {
			top[j] = top[j-1]
			j--
		}
		top[j] = i
	}
	return top
}

func cmpDesc(a, b float64) int {
	switch {
	case a > b:
		return -1
	case a < b:
		return 1
	}
	return 0
}

func (p *Postprocessor) detect(out []infer.Tensor) (Output, error) {
	boxes, err := p.values(out, p.boxes)
	if err != nil {
		return Output{}, err
	}
	classes, err := p.values(out, p.classes)
	if err != nil {
		return Output{}, err
	}
	scores, err := p.values(out, p.scores)
	if err != nil {
		return Output{}, err
	}
	count, err := p.values(out, p.count)
	if err != nil {
		return Output{}, err
	}
	c := count[0]
	if !finite(c) {
		return Output{}, nonFinite(fmt.Sprintf("detection count (output %d)", p.count), 0, c)
	}
	n := int(max(0, min(c, float64(p.n))))
	dets := []Detection{}
	for i := 0; i < n; i++ {
		s := scores[i]
		if !finite(s) {
			return Output{}, nonFinite(fmt.Sprintf("detection scores (output %d)", p.scores), i, s)
		}
		if s < p.scoreThr {
			continue
		}
		cl := classes[i]
		if !finite(cl) {
			return Output{}, nonFinite(fmt.Sprintf("detection classes (output %d)", p.classes), i, cl)
		}
		b := boxes[4*i : 4*i+4]
		for j, v := range b {
			if !finite(v) {
				return Output{}, nonFinite(fmt.Sprintf("detection boxes (output %d)", p.boxes), 4*i+j, v)
			}
		}
		class := int(math.Round(max(-1, min(cl, 1<<30))))
		dets = append(dets, Detection{
			Class: class,
			Label: p.label(class),
			Score: s,
			Box:   Box{YMin: clamp01(b[0]), XMin: clamp01(b[1]), YMax: clamp01(b[2]), XMax: clamp01(b[3])},
		})
	}
	slices.SortStableFunc(dets, func(a, b Detection) int { return cmpDesc(a.Score, b.Score) })
	if p.maxDet > 0 && len(dets) > p.maxDet {
		dets = dets[:p.maxDet]
	}
	return Output{Detections: dets}, nil
}

func clamp01(v float64) float64 { return max(0, min(v, 1)) }

func (p *Postprocessor) regress(out []infer.Tensor) (Output, error) {
	vals, err := p.values(out, p.reg)
	if err != nil {
		return Output{}, err
	}
	m := make(map[string]float64, len(vals))
	for i, v := range vals {
		if !finite(v) {
			return Output{}, nonFinite(fmt.Sprintf("regression output %d (%s)", p.reg, p.names[i]), i, v)
		}
		m[p.names[i]] = v
	}
	return Output{Values: m}, nil
}

func (p *Postprocessor) raw(out []infer.Tensor) (Output, error) {
	res := make([][]float64, len(out))
	for k := range out {
		vals, err := p.values(out, k)
		if err != nil {
			return Output{}, err
		}
		for i, v := range vals {
			if !finite(v) {
				return Output{}, nonFinite(fmt.Sprintf("output %d", k), i, v)
			}
		}
		res[k] = vals
	}
	return Output{Outputs: res}, nil
}

// LoadLabels reads a labels file: one label per line, with \r and surrounding spaces
// trimmed. Empty lines keep their position (a label's index is its line number); a final
// newline does not add an empty label, and a UTF-8 byte order mark is dropped.
func LoadLabels(data []byte) []string {
	data = bytes.TrimPrefix(data, []byte("\xef\xbb\xbf"))
	if len(data) == 0 {
		return nil
	}
	lines := strings.Split(string(data), "\n")
	if lines[len(lines)-1] == "" {
		lines = lines[:len(lines)-1]
	}
	for i, l := range lines {
		lines[i] = strings.TrimSpace(l)
	}
	return lines
}
