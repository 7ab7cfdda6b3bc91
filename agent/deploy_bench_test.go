//go:build cgo

package agent_test

// Benchmarks for `make bench` (issue: bundles and hot swap). Figures are measured in the
// same run: latency while versions are being swapped against steady state, and the time from
// a verified bundle on disk to serving.

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/edge-agent/edge-agent/internal/testenv"
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
`, f.Pub.String(), state))
		ctx := context.Background()
		for i, v := range []string{"1.0.0", "2.0.0"} {
			if _, err := r.a.Deploy().InstallFile(ctx, f.Pack(b, bundleOpt{Version: v, Seq: uint64(i + 1)})); err != nil {
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
`, f.Pub.String(), state))
	ctx := context.Background()
	ssd := testenv.Data(b, "ssd_mobilenet_detect.tflite")
	proc := spec.Model{Input: spec.Input{Image: spec.Image{Mean: []float64{127.5}, Std: []float64{127.5}}}, Output: spec.Output{Kind: spec.OutputDetection}}
	for i, v := range []string{"1.0.0", "2.0.0"} {
		path := f.Pack(b, bundleOpt{Name: "ssd", Version: v, Seq: uint64(i + 1), ModelPath: ssd, Proc: proc, Golden: 1})
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
