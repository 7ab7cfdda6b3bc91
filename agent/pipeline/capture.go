package pipeline

import (
	"fmt"
	"sync/atomic"

	"github.com/edge-agent/edge-agent/agent/infer"
	"github.com/edge-agent/edge-agent/agent/result"
	"github.com/edge-agent/edge-agent/hal/sensor"
)

// Sample is one frame a model served, kept for retraining: the frame as the source read it,
// the input tensors exactly as the model saw them, the raw output tensors and the result.
// Tensors are copies the receiver owns; Frame shares the source's (read-only) data.
type Sample struct {
	Frame   sensor.Frame
	Inputs  []infer.Tensor
	Outputs []infer.Tensor
	Result  result.Result
}

// tap is an armed capture of one model's results.
type tap struct {
	fn func(Sample) bool
	on atomic.Bool
}

// Tap arms a capture of a model's next results: fn gets a Sample of every frame the model
// serves successfully (A/B candidates included; shadow runs are not results) until it
// returns false or stop is called. fn runs on the worker, so it must hand the sample on
// without waiting. One tap per model at a time: ErrTapBusy otherwise. The cost when no tap
// is armed is one atomic load per frame.
func (p *Pipeline) Tap(model string, fn func(Sample) bool) (stop func(), err error) {
	e, ok := p.models[model]
	if !ok {
		return nil, fmt.Errorf("%w %q", ErrUnknownModel, model)
	}
	t := &tap{fn: fn}
	t.on.Store(true)
	if !e.tap.CompareAndSwap(nil, t) {
		return nil, fmt.Errorf("model %q: %w", model, ErrTapBusy)
	}
	return func() {
		t.on.Store(false)
		e.tap.CompareAndSwap(t, nil)
	}, nil
}

// ErrTapBusy means a capture of the model is already running.
var ErrTapBusy = fmt.Errorf("a capture is already running")

// offer gives the armed tap, if any, a copy of this frame's tensors and result.
func (e *modelEntry) offer(f sensor.Frame, in, out []infer.Tensor, r *result.Result) {
	t := e.tap.Load()
	if t == nil || !t.on.Load() {
		return
	}
	if !t.fn(Sample{Frame: f, Inputs: copyTensors(in), Outputs: copyTensors(out), Result: *r}) {
		t.on.Store(false)
		e.tap.CompareAndSwap(t, nil)
	}
}

func copyTensors(ts []infer.Tensor) []infer.Tensor {
	out := make([]infer.Tensor, len(ts))
	for i, t := range ts {
		out[i] = infer.Tensor{DType: t.DType, Shape: append([]int(nil), t.Shape...), Data: append([]byte(nil), t.Data...)}
	}
	return out
}
