//go:build cgo

package tflite

// Benchmarks for `make bench`: the full pipeline (preprocess + invoke + postprocess, through
// agent/pipeline) against a bare go-tflite loop (copy input in, Invoke, copy outputs out) on
// the same already-decoded frame, measured in the same run, interleaved in blocks so machine
// noise hits both alike. Each reports both rates and their ratio; decoding is reported apart.

import (
	"context"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	tfl "github.com/mattn/go-tflite"

	"github.com/edge-agent/edge-agent/agent/infer"
	"github.com/edge-agent/edge-agent/agent/pipeline"
	"github.com/edge-agent/edge-agent/agent/postprocess"
	"github.com/edge-agent/edge-agent/agent/preprocess"
	"github.com/edge-agent/edge-agent/hal/sensor"
	"github.com/edge-agent/edge-agent/hal/sensor/file"
	"github.com/edge-agent/edge-agent/internal/testenv"
	"github.com/edge-agent/edge-agent/models/spec"
)

const benchThreads = 2

type benchCase struct {
	name  string
	model string
	spec  spec.Model
	frame func(b *testing.B) (sensor.Frame, time.Duration) // frame and its decode time
}

func decodeFile(b *testing.B, path string) (sensor.Frame, time.Duration) {
	data, err := os.ReadFile(path)
	if err != nil {
		b.Fatal(err)
	}
	const n = 20
	start := time.Now()
	var f sensor.Frame
	for range n {
		if f, err = file.Decode(path, data, sensor.FileSpec{}); err != nil {
			b.Fatal(err)
		}
	}
	return f, time.Since(start) / n
}

func benchCases(b *testing.B) []benchCase {
	ssdLabels := testenv.Data(b, "ssd_labelmap.txt")
	vocab := testenv.Data(b, "text_classification_vocab.txt")
	return []benchCase{
		{
			name:  "mnist",
			model: testenv.Data(b, "mnist_model.tflite"),
			spec: spec.Model{
				Input:  spec.Input{Image: spec.Image{Resize: spec.ResizeArea, Color: "grey", Std: []float64{255}}},
				Output: spec.Output{Kind: spec.OutputClassification, Classification: spec.Classification{TopK: 3}},
			},
			frame: func(b *testing.B) (sensor.Frame, time.Duration) {
				return decodeFile(b, testenv.Data(b, "mnist_digit_3.png"))
			},
		},
		{
			name:  "ssd",
			model: testenv.Data(b, "ssd_mobilenet_detect.tflite"),
			spec: spec.Model{
				Input:  spec.Input{Image: spec.Image{Resize: spec.ResizeBilinear, Color: "rgb", Mean: []float64{127.5}, Std: []float64{127.5}}},
				Output: spec.Output{Kind: spec.OutputDetection, LabelsFile: ssdLabels, LabelOffset: 1},
			},
			frame: func(b *testing.B) (sensor.Frame, time.Duration) {
				return decodeFile(b, testenv.Data(b, "ssd_example.jpg"))
			},
		},
		{
			name:  "text_classification",
			model: testenv.Data(b, "text_classification.tflite"),
			spec: spec.Model{
				Output: spec.Output{Kind: spec.OutputClassification, Labels: []string{"Negative", "Positive"}},
			},
			frame: func(b *testing.B) (sensor.Frame, time.Duration) {
				start := time.Now()
				f := sensor.Frame{Values: tokens(b, vocab, "what a wonderful and moving film, the cast is great")}
				return f, time.Since(start)
			},
		},
	}
}

// tokens encodes a sentence with the model's vocabulary (file vocabPath) into its 256 input ids.
func tokens(b *testing.B, vocabPath, s string) []float64 {
	data, err := os.ReadFile(vocabPath)
	if err != nil {
		b.Fatal(err)
	}
	vocab := map[string]float64{}
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) == 2 {
			n, _ := strconv.Atoi(f[1])
			vocab[f[0]] = float64(n)
		}
	}
	v := make([]float64, 256)
	v[0] = vocab["<START>"]
	i := 1
	for _, w := range regexp.MustCompile(`[ ,.!?]+`).Split(s, -1) {
		if id, ok := vocab[w]; ok && w != "" {
			v[i] = id
		} else if w != "" {
			v[i] = vocab["<UNKNOWN>"]
		}
		i++
	}
	return v
}

// bare is a go-tflite interpreter used the way any caller must: copy in, invoke, copy out.
type bare struct {
	m    *tfl.Model
	ip   *tfl.Interpreter
	d    *cDelegate
	outs [][]byte
}

func newBare(b *testing.B, path string) *bare {
	m := tfl.NewModelFromFile(path)
	opts := tfl.NewInterpreterOptions()
	defer opts.Delete()
	opts.SetNumThread(benchThreads)
	d, err := newXNNPACK(benchThreads, false)
	if err != nil {
		b.Fatal(err)
	}
	opts.AddDelegate(d)
	ip := tfl.NewInterpreter(m, opts)
	if ip == nil || ip.AllocateTensors() != tfl.OK {
		b.Fatal("bare interpreter")
	}
	x := &bare{m: m, ip: ip, d: d}
	for i := range ip.GetOutputTensorCount() {
		x.outs = append(x.outs, make([]byte, ip.GetOutputTensor(i).ByteSize()))
	}
	return x
}

func (x *bare) run(in []byte) {
	x.ip.GetInputTensor(0).CopyFromBuffer(in)
	if x.ip.Invoke() != tfl.OK {
		panic("invoke")
	}
	for i, o := range x.outs {
		x.ip.GetOutputTensor(i).CopyToBuffer(o)
	}
}

func (x *bare) close() {
	x.ip.Delete()
	x.d.Delete()
	x.m.Delete()
}

func BenchmarkPipelineVsBareInvoke(b *testing.B) {
	for _, c := range benchCases(b) {
		b.Run(c.name, func(b *testing.B) {
			frame, decode := c.frame(b)
			model, err := New().LoadFile(c.model, infer.Options{Threads: benchThreads, Delegate: infer.DelegateXNNPACK})
			if err != nil {
				b.Fatal(err)
			}
			defer model.Close()
			info := model.Info()
			pre, err := preprocess.New(c.spec, info.Inputs)
			if err != nil {
				b.Fatal(err)
			}
			post, err := postprocess.New(c.spec.Output, info.Outputs, os.ReadFile)
			if err != nil {
				b.Fatal(err)
			}
			p := pipeline.New(pipeline.Options{Device: "bench"})
			p.AddModel(pipeline.ModelConfig{Name: c.name}, &pipeline.Serving{Version: "1", Model: model, Pre: pre, Post: post})
			// The bare loop feeds the very tensor the pipeline's preprocessing makes.
			in, err := pre.Apply(frame, nil)
			if err != nil {
				b.Fatal(err)
			}
			x := newBare(b, c.model)
			defer x.close()
			ctx := context.Background()
			for range 5 { // warm both (XNNPACK packs weights on first use)
				x.run(in[0].Data)
				if _, err := p.Process(ctx, c.name, frame); err != nil {
					b.Fatal(err)
				}
			}
			// Blocks of about 100 ms each: XNNPACK's worker threads spin for a while after a
			// call, so switching loops every few calls would let one interpreter's idle pool
			// slow the other loop down.
			calls := 0
			for s0 := time.Now(); time.Since(s0) < 50*time.Millisecond; calls++ {
				x.run(in[0].Data)
			}
			block := max(2, 2*calls)
			var tBare, tPipe time.Duration
			n := 0
			b.ResetTimer()
			for n < b.N {
				s := time.Now()
				for range block {
					x.run(in[0].Data)
				}
				tBare += time.Since(s)
				s = time.Now()
				for range block {
					if _, err := p.Process(ctx, c.name, frame); err != nil {
						b.Fatal(err)
					}
				}
				tPipe += time.Since(s)
				n += block
			}
			b.StopTimer()
			bareRate := float64(n) / tBare.Seconds()
			pipeRate := float64(n) / tPipe.Seconds()
			b.ReportMetric(bareRate, "bare/s")
			b.ReportMetric(pipeRate, "pipeline/s")
			b.ReportMetric(pipeRate/bareRate, "ratio")
			b.ReportMetric(float64(decode.Microseconds()), "decode-µs")
			b.ReportMetric(0, "ns/op") // the rates above are the figures; ns/op mixes both loops
		})
	}
}
