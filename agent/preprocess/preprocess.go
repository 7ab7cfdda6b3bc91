// Package preprocess owns the first stage of the pipeline: it turns a sensor frame (a decoded
// picture, a vector of numbers or a raw tensor) into the model's input tensors, as the model's
// spec (models/spec) declares: resize, colour, normalisation, quantisation, feature order.
//
// preprocess imports agent/infer for its tensor types only. It must not import the other
// stage packages (agent/infer/tflite, agent/postprocess, agent/outbox, agent/link,
// agent/drift) nor agent/pipeline: the pipeline joins the stages through small interfaces.
// It builds with CGO_ENABLED=0.
package preprocess

import (
	"errors"
	"fmt"
	"slices"

	"github.com/edge-agent/edge-agent/agent/infer"
	"github.com/edge-agent/edge-agent/hal/sensor"
	"github.com/edge-agent/edge-agent/models/spec"
)

// ErrBadFrame is wrapped by every Apply error caused by the frame itself (no data, wrong
// size, wrong dtype, missing feature, non-finite value, unreadable image). The pipeline
// counts these and drops the frame; the model and the preprocessor stay usable.
var ErrBadFrame = errors.New("frame does not fit the model input")

// Preprocessor turns frames into input tensors for one model. It is built once per model
// (New) and is safe for concurrent use by several goroutines: its tables are immutable or
// guarded, and per-call scratch memory comes from a pool. Each goroutine must pass its own
// dst to Apply.
type Preprocessor struct {
	kind   string // spec.InputImage, InputVector, InputTensor, or "" (chosen per frame)
	inputs []infer.TensorInfo

	img    *imageStage  // nil when input 0 is not an image layout or kind excludes images
	imgErr error        // why img is nil (for kind "" frames that carry an image)
	vec    *vectorStage // nil for multi-input models or kind excludes vectors
}

// New validates the input half of s against the model's inputs and precomputes what Apply
// needs. Errors name the spec field ("input.image.color") and say what to change.
//
// Image and vector inputs feed input tensor 0 and need a single-input model. A model with
// several inputs is fed only by kind tensor: the frame's raw bytes are then split across the
// inputs in order (all inputs must share one dtype).
//
// Images: the layout comes from input 0's shape (NHWC, batch 1): [1,H,W,C] with C 1 or 3,
// [1,H,W] (grey), or [1,N] with N a perfect square, read as a grey H = W = √N picture
// (MNIST models take [1,784] = 28×28). Pixels are read as non-premultiplied 8-bit RGB
// (alpha is ignored; a JPEG's Y'CbCr is resampled first and converted per output pixel,
// within a few levels of converting first); grey is the plain mean of R, G and B, not luma.
// Resize is nearest
// (floor(o·n/m), as TensorFlow and OpenCV), bilinear (half-pixel centres, the default) or
// area (exact box filter). A channel value p becomes ((Invert ? 255−p : p) − Mean[c]) /
// Std[c] and, for a quantised integer input, round(v/scale + zero_point) saturated; an
// unquantised integer input gets v rounded (half to even) and saturated.
//
// Vectors: Features picks the frame's values by name (else they are taken in order), and
// each is standardised (x − Mean[i]) / Std[i] (one Mean or Std applies to all), then written
// like an image value. Tensors: the frame's dtype must equal the input's and its bytes are
// copied.
func New(s spec.Model, inputs []infer.TensorInfo) (*Preprocessor, error) {
	if err := (spec.Model{Input: s.Input}).Validate(); err != nil {
		return nil, err
	}
	if len(inputs) == 0 {
		return nil, errors.New("model has no input tensors")
	}
	for i, in := range inputs {
		if in.DType.Size() == 0 {
			return nil, fmt.Errorf("input %d (%s) has dtype %s, which preprocess cannot write", i, in.Name, in.DType)
		}
		for _, d := range in.Shape {
			if d <= 0 {
				return nil, fmt.Errorf("input %d (%s) has shape %v with a dimension ≤ 0 (dynamic shapes are not supported)", i, in.Name, in.Shape)
			}
		}
	}
	p := &Preprocessor{kind: s.Input.Kind, inputs: cloneInfos(inputs)}
	if len(inputs) > 1 {
		if p.kind != spec.InputTensor {
			return nil, fmt.Errorf("input.kind: the model has %d inputs; only kind tensor can feed several inputs (the frame's raw bytes are split across them in order)", len(inputs))
		}
		for i, in := range inputs[1:] {
			if in.DType != inputs[0].DType {
				return nil, fmt.Errorf("input.kind: tensor frames feed several inputs only when they share one dtype; input 0 is %s, input %d is %s", inputs[0].DType, i+1, in.DType)
			}
		}
		return p, nil
	}
	in := p.inputs[0]
	if p.kind == "" || p.kind == spec.InputImage {
		img, err := newImageStage(s.Input.Image, in)
		switch {
		case err == nil:
			p.img = img
		case p.kind == spec.InputImage || !errors.Is(err, errNotImage):
			return nil, err
		default:
			p.imgErr = err
		}
	}
	if p.kind == "" || p.kind == spec.InputVector {
		vec, err := newVectorStage(s.Input.Vector, in)
		if err != nil {
			return nil, err
		}
		p.vec = vec
	}
	return p, nil
}

func cloneInfos(in []infer.TensorInfo) []infer.TensorInfo {
	out := make([]infer.TensorInfo, len(in))
	for i, t := range in {
		t.Shape = append([]int(nil), t.Shape...)
		out[i] = t
	}
	return out
}

// Inputs returns the tensor descriptions the preprocessor writes (a copy).
func (p *Preprocessor) Inputs() []infer.TensorInfo { return cloneInfos(p.inputs) }

// Apply turns f into the model's input tensors. When dst holds one tensor per model input
// with the right dtype and byte length (as a previous Apply returned), its Data is
// overwritten and dst is returned, so a goroutine that reuses its tensors allocates nothing
// per frame; otherwise new tensors are allocated. Errors caused by the frame wrap
// ErrBadFrame; Apply never panics on bad frames.
func (p *Preprocessor) Apply(f sensor.Frame, dst []infer.Tensor) ([]infer.Tensor, error) {
	kind := p.kind
	if kind == "" {
		n := 0
		if f.Image != nil {
			kind, n = spec.InputImage, n+1
		}
		if f.Tensor != nil {
			kind, n = spec.InputTensor, n+1
		}
		if f.Values != nil {
			kind, n = spec.InputVector, n+1
		}
		switch {
		case n == 0:
			return dst, fmt.Errorf("%w: frame %s carries no image, values or tensor", ErrBadFrame, frameName(f))
		case n > 1:
			return dst, fmt.Errorf("%w: frame %s carries more than one of image, values and tensor; set input.kind to pick one", ErrBadFrame, frameName(f))
		}
	}
	dst = p.buffers(dst)
	var err error
	switch kind {
	case spec.InputImage:
		if p.img == nil {
			return dst, fmt.Errorf("%w: frame %s carries an image but %v", ErrBadFrame, frameName(f), p.imgErr)
		}
		if f.Image == nil {
			return dst, fmt.Errorf("%w: input.kind is image but frame %s has no image", ErrBadFrame, frameName(f))
		}
		err = p.img.apply(f.Image, dst[0].Data)
	case spec.InputVector:
		if f.Values == nil {
			return dst, fmt.Errorf("%w: input.kind is vector but frame %s has no values", ErrBadFrame, frameName(f))
		}
		err = p.vec.apply(f.Values, f.Names, dst[0].Data)
	case spec.InputTensor:
		if f.Tensor == nil {
			return dst, fmt.Errorf("frame %s: %w: input.kind is tensor but the frame has no tensor", frameName(f), ErrBadFrame)
		}
		err = p.applyTensor(f.Tensor, dst)
	}
	if err != nil {
		return dst, fmt.Errorf("frame %s: %w", frameName(f), err)
	}
	return dst, nil
}

// buffers returns dst when it fits the model's inputs, else freshly allocated tensors.
func (p *Preprocessor) buffers(dst []infer.Tensor) []infer.Tensor {
	fits := len(dst) == len(p.inputs)
	for i := 0; fits && i < len(dst); i++ {
		in := p.inputs[i]
		fits = dst[i].DType == in.DType && len(dst[i].Data) == in.Elements()*in.DType.Size() &&
			slices.Equal(dst[i].Shape, in.Shape)
	}
	if fits {
		return dst
	}
	dst = make([]infer.Tensor, len(p.inputs))
	for i, in := range p.inputs {
		dst[i] = infer.NewTensor(in.DType, in.Shape)
	}
	return dst
}

func frameName(f sensor.Frame) string {
	if f.Source == "" {
		return fmt.Sprintf("#%d", f.Seq)
	}
	return fmt.Sprintf("%s#%d", f.Source, f.Seq)
}

// applyTensor copies a raw tensor's bytes into the inputs, in order.
func (p *Preprocessor) applyTensor(r *sensor.Raw, dst []infer.Tensor) error {
	dt, err := infer.ParseDType(r.DType)
	if err != nil {
		return fmt.Errorf("%w: tensor dtype: %v", ErrBadFrame, err)
	}
	want := p.inputs[0].DType
	if dt != want {
		return fmt.Errorf("%w: tensor is %s, the model's input is %s; convert the data or set the source's dtype", ErrBadFrame, dt, want)
	}
	total := 0
	for _, t := range dst {
		total += len(t.Data)
	}
	if len(r.Data) != total {
		return fmt.Errorf("%w: tensor %s%v holds %d bytes, the model's input needs %d (%s)", ErrBadFrame, r.DType, r.Shape, len(r.Data), total, shapesText(p.inputs))
	}
	off := 0
	for _, t := range dst {
		off += copy(t.Data, r.Data[off:])
	}
	return nil
}

func shapesText(in []infer.TensorInfo) string {
	s := ""
	for i, t := range in {
		if i > 0 {
			s += " + "
		}
		s += fmt.Sprintf("%s%v", t.DType, t.Shape)
	}
	return s
}
