//go:build cgo

package agent_test

// Benchmarks for `make bench` (issue: bundles and hot swap). Figures are measured in the
// same run: latency while versions are being swapped against steady state, and the time from
// a verified bundle on disk to serving.

import (
	"context"
	"encoding/base64"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/edge-agent/edge-agent/agent/infer"
	"github.com/edge-agent/edge-agent/agent/infer/tflite"
	"github.com/edge-agent/edge-agent/internal/testenv"
	"github.com/edge-agent/edge-agent/models/bundle"
	"github.com/edge-agent/edge-agent/models/spec"
)

func p99(v []int64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	return float64(s[(len(s)*99)/100]) / 1000
}

// BenchmarkSwapUnderLoad drives the sin model at 1,000 frames/s and swaps between two
// installed versions twenty times (each swap: load from disk, canary, atomic switch).
func BenchmarkSwapUnderLoad(b *testing.B) {
	for range b.N {
		f := newFleet(b)
		state := b.TempDir()
		r := start(b, fmt.Sprintf(`
trusted_keys: [%s]
state_dir: %s
probation: {inferences: 1000000, duration: 1h}
sources:
  - {name: sweep, kind: synthetic, rate: 1000, queue: 64, synthetic: {wave: sine, phase: true, offset: -3.14159}}
models:
  - {name: sin, sources: [sweep], workers: 2, queue: 64}
`, f.pub.String(), state))
		ctx := context.Background()
		for i, v := range []string{"1.0.0", "2.0.0"} {
			if _, err := r.a.Deploy().InstallFile(ctx, f.packB(b, v, uint64(i+1))); err != nil {
				b.Fatal(err)
			}
		}
		time.Sleep(2 * time.Second)       // steady state
		base := r.a.Pipeline().Stats()[0] // frames before the first install found no version: not swap failures
		type window struct{ from, to time.Time }
		var swaps []window
		var swapTimes []time.Duration
		for i := range 20 {
			v := []string{"1.0.0", "2.0.0"}[i%2]
			s := time.Now()
			if err := r.a.Deploy().Rollback(ctx, "sin", v); err != nil {
				b.Fatal(err)
			}
			swapTimes = append(swapTimes, time.Since(s))
			swaps = append(swaps, window{s, time.Now().Add(50 * time.Millisecond)})
			time.Sleep(250 * time.Millisecond)
		}
		time.Sleep(time.Second)
		r.stop()
		var during, steady []int64
		for _, res := range r.sink.byModel("sin") {
			in := false
			for _, w := range swaps {
				if !res.TS.Before(w.from) && res.TS.Before(w.to) {
					in = true
				}
			}
			if in {
				during = append(during, res.LatencyUS)
			} else {
				steady = append(steady, res.LatencyUS)
			}
		}
		st := r.a.Pipeline().Stats()[0]
		failed := (st.PreErrors + st.InferErrors + st.PostErrors + st.SinkErrors + st.NoVersion) -
			(base.PreErrors + base.InferErrors + base.PostErrors + base.SinkErrors + base.NoVersion)
		elapsed := 2*time.Second + 20*250*time.Millisecond + time.Second
		slices.Sort(swapTimes)
		b.ReportMetric(float64(failed), "failed")
		b.ReportMetric(float64(st.Dropped-base.Dropped), "dropped")
		b.ReportMetric(float64(len(during)), "results-during-swaps")
		b.ReportMetric(float64(len(during)+len(steady))/elapsed.Seconds(), "inferences/s")
		b.ReportMetric(p99(steady), "p99-steady-ms")
		b.ReportMetric(p99(during), "p99-swap-ms")
		b.ReportMetric(p99(during)/max(p99(steady), 1e-9), "p99-ratio")
		b.ReportMetric(float64(swapTimes[len(swapTimes)/2].Microseconds())/1000, "swap-median-ms")
		b.ReportMetric(0, "ns/op")
	}
}

// BenchmarkSSDSwapTime is the time from a verified SSD bundle installed on disk to serving
// it: load, tensor check, one golden vector, atomic switch, pointer update.
func BenchmarkSSDSwapTime(b *testing.B) {
	f := newFleet(b)
	state := b.TempDir()
	r := start(b, fmt.Sprintf(`
trusted_keys: [%s]
state_dir: %s
models:
  - {name: ssd, workers: 1}
`, f.pub.String(), state))
	ctx := context.Background()
	ssd := testenv.Shared(b, "ssd_mobilenet_detect.tflite")
	proc := spec.Model{Input: spec.Input{Image: spec.Image{Mean: []float64{127.5}, Std: []float64{127.5}}}, Output: spec.Output{Kind: spec.OutputDetection}}
	for i, v := range []string{"1.0.0", "2.0.0"} {
		path := f.packModel(b, "ssd", v, uint64(i+1), ssd, proc, 1)
		if _, err := r.a.Deploy().InstallFile(ctx, path); err != nil {
			b.Fatal(err)
		}
	}
	var times []time.Duration
	b.ResetTimer()
	for i := range b.N {
		s := time.Now()
		if err := r.a.Deploy().Rollback(ctx, "ssd", []string{"1.0.0", "2.0.0"}[i%2]); err != nil {
			b.Fatal(err)
		}
		times = append(times, time.Since(s))
	}
	b.StopTimer()
	slices.Sort(times)
	b.ReportMetric(float64(times[len(times)/2].Microseconds())/1000, "median-ms")
	b.ReportMetric(float64(times[len(times)-1].Microseconds())/1000, "max-ms")
}

// packModel packs any model with golden vectors from zero-ish inputs (n vectors).
func (f *fleet) packModel(b testing.TB, name, version string, seq uint64, modelPath string, proc spec.Model, n int) string {
	mod, err := tflite.New().LoadFile(modelPath, infer.Options{Delegate: "cpu", Threads: 1})
	if err != nil {
		b.Fatal(err)
	}
	defer mod.Close()
	info := mod.Info()
	m := bundle.Manifest{Name: name, Version: version, Sequence: seq, Model: "model.tflite", Processing: proc}
	for _, ts := range info.Inputs {
		m.Inputs = append(m.Inputs, bundle.Tensor{Name: ts.Name, DType: ts.DType.String(), Shape: ts.Shape, Scale: ts.Quant.Scale, Zero: ts.Quant.ZeroPoint})
	}
	for _, ts := range info.Outputs {
		m.Outputs = append(m.Outputs, bundle.Tensor{Name: ts.Name, DType: ts.DType.String(), Shape: ts.Shape, Scale: ts.Quant.Scale, Zero: ts.Quant.ZeroPoint})
	}
	for k := range n {
		in := infer.NewTensor(info.Inputs[0].DType, info.Inputs[0].Shape)
		for i := range in.Len() {
			in.SetFloat(i, float64((i*7+k)%200))
		}
		out, err := mod.Infer(context.Background(), []infer.Tensor{in})
		if err != nil {
			b.Fatal(err)
		}
		g := bundle.Golden{Tolerance: 1e-3}
		if in.Len() > 1024 { // images: raw bytes keep the manifest small
			g.RawInputs = []string{base64.StdEncoding.EncodeToString(in.Data)}
		} else {
			g.Inputs = [][]float64{in.Floats(infer.Quant{})}
		}
		for o, t := range out {
			g.Outputs = append(g.Outputs, t.Floats(info.Outputs[o].Quant))
		}
		m.Golden = append(m.Golden, g)
	}
	return f.write(b, m, modelPath)
}

func (f *fleet) packB(b *testing.B, version string, seq uint64) string {
	return f.packModel(b, "sin", version, seq, testenv.GoTflite(b, "_example/sin/sin_model.tflite"), sinProc, 3)
}
