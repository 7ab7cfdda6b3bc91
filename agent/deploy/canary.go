package deploy

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"math"
	"slices"

	"github.com/edge-agent/edge-agent/agent/infer"
	"github.com/edge-agent/edge-agent/models/bundle"
)

// ErrCanary is wrapped by every canary failure: the new version does not behave as its
// manifest promises, so it is never activated.
var ErrCanary = errors.New("canary check failed")

// CheckTensors compares the model's real tensors with the manifest's expectations.
func CheckTensors(info infer.ModelInfo, m bundle.Manifest) error {
	check := func(kind string, got []infer.TensorInfo, want []bundle.Tensor) error {
		if len(got) != len(want) {
			return fmt.Errorf("%w: model has %d %s tensors, manifest declares %d", ErrCanary, len(got), kind, len(want))
		}
		for i, w := range want {
			g := got[i]
			if g.DType.String() != w.DType {
				return fmt.Errorf("%w: %s %d (%s) is %s, manifest declares %s", ErrCanary, kind, i, g.Name, g.DType, w.DType)
			}
			if !slices.Equal(g.Shape, w.Shape) {
				return fmt.Errorf("%w: %s %d (%s) has shape %v, manifest declares %v", ErrCanary, kind, i, g.Name, g.Shape, w.Shape)
			}
			if g.Quant.Scale != w.Scale || g.Quant.ZeroPoint != w.Zero {
				return fmt.Errorf("%w: %s %d (%s) quantisation scale %g zero point %d, manifest declares %g and %d", ErrCanary, kind, i, g.Name, g.Quant.Scale, g.Quant.ZeroPoint, w.Scale, w.Zero)
			}
		}
		return nil
	}
	if err := check("input", info.Inputs, m.Inputs); err != nil {
		return err
	}
	return check("output", info.Outputs, m.Outputs)
}

// RunGolden runs every golden vector through the model and compares outputs within the
// vector's tolerance; any NaN or Inf output fails.
func RunGolden(ctx context.Context, model infer.Model, golden []bundle.Golden) error {
	info := model.Info()
	for gi, g := range golden {
		in, err := goldenInputs(info.Inputs, g)
		if err != nil {
			return fmt.Errorf("%w: golden[%d]: %v", ErrCanary, gi, err)
		}
		out, err := model.Infer(ctx, in)
		if err != nil {
			return fmt.Errorf("%w: golden[%d]: %v", ErrCanary, gi, err)
		}
		for o, t := range out {
			got := t.Floats(info.Outputs[o].Quant)
			for k, v := range got {
				if math.IsNaN(v) || math.IsInf(v, 0) {
					return fmt.Errorf("%w: golden[%d] output %d[%d] is %v", ErrCanary, gi, o, k, v)
				}
			}
			if o >= len(g.Outputs) {
				continue
			}
			want := g.Outputs[o]
			if len(want) != len(got) {
				return fmt.Errorf("%w: golden[%d] output %d has %d values, expected %d", ErrCanary, gi, o, len(got), len(want))
			}
			for k := range want {
				if d := math.Abs(got[k] - want[k]); d > g.Tolerance || math.IsNaN(d) {
					return fmt.Errorf("%w: golden[%d] output %d[%d] = %g, expected %g ± %g", ErrCanary, gi, o, k, got[k], want[k], g.Tolerance)
				}
			}
		}
	}
	return nil
}

// goldenInputs builds the input tensors of a golden vector from numbers or raw bytes.
func goldenInputs(specs []infer.TensorInfo, g bundle.Golden) ([]infer.Tensor, error) {
	if n := len(g.Inputs) + len(g.RawInputs); n != len(specs) {
		return nil, fmt.Errorf("%d inputs, the model takes %d", n, len(specs))
	}
	in := make([]infer.Tensor, len(specs))
	for i, spec := range specs {
		if len(g.RawInputs) > 0 {
			data, err := base64.StdEncoding.DecodeString(g.RawInputs[i])
			if err != nil {
				return nil, fmt.Errorf("raw input %d: %v", i, err)
			}
			in[i] = infer.Tensor{DType: spec.DType, Shape: spec.Shape, Data: data}
			if err := in[i].Check(); err != nil {
				return nil, fmt.Errorf("raw input %d: %v", i, err)
			}
			continue
		}
		t, err := infer.FromValues(spec.DType, spec.Shape, g.Inputs[i])
		if err != nil {
			return nil, fmt.Errorf("input %d: %v", i, err)
		}
		in[i] = t
	}
	return in, nil
}
