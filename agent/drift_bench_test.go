//go:build cgo && linux

package agent

// BenchmarkDriftOverhead (make bench): pipeline throughput with and without the drift
// monitor, measured in the same run. Two pipelines serve the same loaded model (real
// TensorFlow Lite, XNNPACK, one thread) on the same decoded frames; one has the monitor as
// its observer, exactly as the agent wires it. They run interleaved in blocks of about 20 ms
// so machine noise hits both alike. Each block is timed twice: wall clock (the throughput)
// and the CPU time of the thread running it (getrusage RUSAGE_THREAD), which other load on
// the machine does not inflate; with one interpreter thread, inference and monitor both run
// on that thread. The monitor compares every frame with a reference (the mnist digits' own
// statistics; for sin, a uniform input), so every statistic is computed.

import (
	"context"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"os"
	"runtime"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/edge-agent/edge-agent/agent/config"
	"github.com/edge-agent/edge-agent/agent/drift"
	"github.com/edge-agent/edge-agent/agent/infer"
	_ "github.com/edge-agent/edge-agent/agent/infer/tflite"
	"github.com/edge-agent/edge-agent/agent/pipeline"
	"github.com/edge-agent/edge-agent/hal/accel"
	"github.com/edge-agent/edge-agent/hal/sensor"
	"github.com/edge-agent/edge-agent/hal/sensor/file"
	"github.com/edge-agent/edge-agent/internal/testenv"
	"github.com/edge-agent/edge-agent/models/bundle"
	"github.com/edge-agent/edge-agent/models/spec"
)

func BenchmarkDriftOverhead(b *testing.B) {
	cases := []struct {
		name   string
		model  string
		spec   spec.Model
		frames func(b *testing.B) []sensor.Frame
	}{
		{
			name:  "mnist",
			model: testenv.Data(b, "mnist_model.tflite"),
			spec: spec.Model{
				Input:  spec.Input{Image: spec.Image{Resize: spec.ResizeArea, Color: "grey", Std: []float64{255}}},
				Output: spec.Output{Kind: spec.OutputClassification, Classification: spec.Classification{TopK: 3}},
			},
			frames: func(b *testing.B) []sensor.Frame {
				var fs []sensor.Frame
				for d := range 10 {
					p := testenv.Data(b, "mnist_digit_"+string(rune('0'+d))+".png")
					data, err := os.ReadFile(p)
					if err != nil {
						b.Fatal(err)
					}
					f, err := file.Decode(p, data, sensor.FileSpec{})
					if err != nil {
						b.Fatal(err)
					}
					fs = append(fs, f)
				}
				return fs
			},
		},
		{
			name:  "sin",
			model: testenv.Data(b, "sin_model.tflite"),
			spec:  spec.Model{Output: spec.Output{Kind: spec.OutputRegression, Regression: spec.Regression{Names: []string{"y"}}}},
			frames: func(b *testing.B) []sensor.Frame {
				rng := rand.New(rand.NewPCG(1, 1))
				fs := make([]sensor.Frame, 256)
				for i := range fs {
					fs[i] = sensor.Frame{Values: []float64{2 * math.Pi * rng.Float64()}}
				}
				return fs
			},
		},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			eng, err := infer.Engines.New("tflite")
			if err != nil {
				b.Fatal(err)
			}
			s, err := LoadServing(eng, config.Model{Name: c.name, Path: c.model, Version: "1", Workers: 1, Threads: 1,
				Delegate: infer.DelegateXNNPACK, Spec: c.spec}, accel.Report{}, nil)
			if err != nil {
				b.Fatal(err)
			}
			defer s.Model.(infer.Model).Close()
			frames := c.frames(b)
			ref := benchReference(b, s, frames)
			quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
			mon := drift.New(drift.Options[driftMeta]{
				Reference: func(drift.Key) (*bundle.Reference, error) { return ref, nil },
				Keep:      keepMeta, Logger: quiet,
			})
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() { defer close(done); mon.Run(ctx) }()
			defer func() { cancel(); <-done }()
			mon.Register(drift.Key{Model: c.name, Version: "1"}, s.Model.Info().Inputs)

			plain := pipeline.New(pipeline.Options{Device: "bench", Logger: quiet})
			watched := pipeline.New(pipeline.Options{Device: "bench", Logger: quiet})
			watched.SetObserver(&driftObserver{mon: mon})
			for _, p := range []*pipeline.Pipeline{plain, watched} {
				if err := p.AddModel(pipeline.ModelConfig{Name: c.name}, s); err != nil {
					b.Fatal(err)
				}
			}
			runtime.LockOSThread() // the thread's CPU time is the loop's
			defer runtime.UnlockOSThread()
			i := 0
			run := func(p *pipeline.Pipeline, n int) (wall, cpu time.Duration) {
				c0, start := threadCPU(b), time.Now()
				for range n {
					if _, err := p.Process(ctx, c.name, frames[i%len(frames)]); err != nil {
						b.Fatal(err)
					}
					i++
				}
				return time.Since(start), threadCPU(b) - c0
			}
			run(plain, 50) // warm up: XNNPACK packs weights on first use
			run(watched, 2*drift.DefaultWindow)
			calls := 0
			for s0 := time.Now(); time.Since(s0) < 20*time.Millisecond; calls++ {
				run(plain, 1)
			}
			block := max(2, calls)
			// Each pair of blocks gives a ratio; the median of them is what is reported, so a
			// block that other load on the machine hit does not move the figure.
			var wallRatios, cpuRatios, costs []float64
			var tPlain, tWatched time.Duration
			n := 0
			b.ResetTimer()
			for n < b.N {
				var wp, cp, ww, cw time.Duration
				if len(costs)%2 == 0 { // alternate which goes first
					wp, cp = run(plain, block)
					ww, cw = run(watched, block)
				} else {
					ww, cw = run(watched, block)
					wp, cp = run(plain, block)
				}
				tPlain, tWatched = tPlain+wp, tWatched+ww
				wallRatios = append(wallRatios, float64(wp)/float64(ww))
				cpuRatios = append(cpuRatios, float64(cp)/float64(cw))
				costs = append(costs, float64(cw-cp)/float64(block))
				n += block
			}
			b.StopTimer()
			plainRate, watchedRate := float64(n)/tPlain.Seconds(), float64(n)/tWatched.Seconds()
			var windows uint64
			for _, sc := range mon.Scores() {
				windows = max(windows, sc.Windows)
			}
			if windows == 0 {
				b.Fatalf("the monitor evaluated no window: scores %+v, stats %+v", mon.Scores(), mon.Stats())
			}
			b.ReportMetric(plainRate, "plain/s")
			b.ReportMetric(watchedRate, "monitored/s")
			b.ReportMetric(median(wallRatios), "ratio")
			b.ReportMetric(median(cpuRatios), "cpu-ratio")
			b.ReportMetric(median(costs), "drift-cpu-ns/frame")
			b.ReportMetric(float64(len(costs)), "block-pairs")
			b.ReportMetric(float64(len(mon.Scores())), "statistics")
			b.ReportMetric(testing.AllocsPerRun(1000, func() { run(plain, 1) }), "allocs/plain-frame")
			b.ReportMetric(testing.AllocsPerRun(1000, func() { run(watched, 1) }), "allocs/monitored-frame")
			b.ReportMetric(0, "ns/op") // the rates above are the figures; ns/op mixes both loops
		})
	}
}

// benchReference is what `edgectl bundle pack` would compute from the frames: the model's
// input laid out as pack does (one distribution for mnist's flat 784 values, one feature
// for sin), 20 equal-width bins, and the predicted-class frequencies.
func benchReference(b *testing.B, s *pipeline.Serving, frames []sensor.Frame) *bundle.Reference {
	info := s.Model.Info()
	var vals []float64
	var classes []float64
	for _, f := range frames {
		in, err := s.Pre.Apply(f, nil)
		if err != nil {
			b.Fatal(err)
		}
		vals = append(vals, in[0].Floats(info.Inputs[0].Quant)...)
		out, err := s.Model.Infer(context.Background(), in)
		if err != nil {
			b.Fatal(err)
		}
		if po, err := s.Post.Apply(out); err == nil && len(po.Classes) > 0 {
			if classes == nil {
				classes = make([]float64, out[0].Len())
			}
			classes[po.Classes[0].Index] += 1 / float64(len(frames))
		}
	}
	name := "input"
	if info.Inputs[0].Elements() <= 64 {
		name = "f0"
	}
	lo, hi, sum := vals[0], vals[0], 0.0
	for _, x := range vals {
		lo, hi, sum = min(lo, x), max(hi, x), sum+x
	}
	const bins = 20
	fs := bundle.FeatureStats{Name: name, Mean: sum / float64(len(vals)), Counts: make([]uint64, bins)}
	for k := 0; k <= bins; k++ {
		fs.Edges = append(fs.Edges, lo+(hi-lo)*float64(k)/bins)
	}
	for _, x := range vals {
		fs.Counts[min(int((x-lo)/(hi-lo)*bins), bins-1)]++
	}
	return &bundle.Reference{Samples: len(frames), Features: []bundle.FeatureStats{fs}, Classes: classes}
}

// threadCPU is the CPU time the calling OS thread has used.
func threadCPU(b *testing.B) time.Duration {
	const rusageThread = 1 // RUSAGE_THREAD (Linux)
	var ru syscall.Rusage
	if err := syscall.Getrusage(rusageThread, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}
