package drift_test

import (
	"math/rand/v2"
	"testing"

	"github.com/edge-agent/edge-agent/agent/drift"
	"github.com/edge-agent/edge-agent/agent/infer"
	"github.com/edge-agent/edge-agent/models/bundle"
)

// BenchmarkObserve is the monitor's cost per frame on the worker, window evaluations and
// kept samples included (the pipeline-level ratio is agent.BenchmarkDriftOverhead).
func BenchmarkObserve(b *testing.B) {
	rng := rand.New(rand.NewPCG(1, 1))
	for _, c := range []struct {
		name  string
		info  infer.TensorInfo
		feats []string
	}{
		{"vector-4", infer.TensorInfo{DType: infer.Float32, Shape: []int{1, 4}}, []string{"a", "b", "c", "d"}},
		{"flat-784-float32", infer.TensorInfo{DType: infer.Float32, Shape: []int{1, 784}}, []string{"input"}},
		{"image-300x300x3-uint8", infer.TensorInfo{DType: infer.UInt8, Shape: []int{1, 300, 300, 3}, Quant: infer.Quant{Scale: 1.0 / 128, ZeroPoint: 128}}, []string{"r", "g", "b"}},
	} {
		b.Run(c.name, func(b *testing.B) {
			ref := &bundle.Reference{Samples: 1000, Classes: []float64{0.5, 0.3, 0.2}}
			for _, n := range c.feats {
				v := make([]float64, 1000)
				for i := range v {
					v[i] = rng.NormFloat64() * 0.5
				}
				ref.Features = append(ref.Features, featureStats(n, v, 20))
			}
			m := drift.New(drift.Options[int]{Logger: quiet, Reference: func(drift.Key) (*bundle.Reference, error) { return ref, nil }})
			key := drift.Key{Model: "m", Version: "1"}
			m.Register(key, []infer.TensorInfo{c.info})
			x := infer.NewTensor(c.info.DType, c.info.Shape)
			for i := range x.Len() {
				if c.info.DType == infer.UInt8 {
					x.SetFloat(i, 128+64*rng.NormFloat64())
				} else {
					x.SetFloat(i, rng.NormFloat64()*0.5)
				}
			}
			in := &drift.Input[int]{Key: key, Inputs: []infer.Tensor{x}, Outputs: []infer.Tensor{infer.NewTensor(infer.Float32, []int{1, 3})},
				Class: 1, Classified: true, Score: 0.9, Scored: true}
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				in.Meta++
				m.Observe(in)
			}
		})
	}
}
