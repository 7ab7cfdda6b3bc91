package postprocess

import (
	"encoding/binary"
	"math"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/edge-agent/edge-agent/agent/infer"
	"github.com/edge-agent/edge-agent/models/spec"
)

// BenchmarkYOLOv8Decode decodes a YOLOv8n-shaped head ([1,84,8400]: 80 classes) with about 300
// candidates above the threshold in 30 clusters, so the suppression has work to do. The
// baseline, measured in the same run, is one pass summing the head's 705,600 floats after the
// float32 read: the least any decoder of this output does. The goal is decode
// + NMS at most 5 % of the invoke time of a model of that size.
func BenchmarkYOLOv8Decode(b *testing.B) {
	const n, attrs = 8400, 84
	r := rand.New(rand.NewPCG(1, 2))
	v := make([]float32, attrs*n)
	for i := range n {
		v[0*n+i], v[1*n+i], v[2*n+i], v[3*n+i] = r.Float32(), r.Float32(), 0.05+0.1*r.Float32(), 0.05+0.1*r.Float32()
		for c := 4; c < attrs; c++ {
			v[c*n+i] = 0.05 * r.Float32()
		}
	}
	for k := range 300 { // 30 objects seen by 10 anchors each
		i := r.IntN(n)
		obj := k % 30
		v[0*n+i], v[1*n+i] = float32(obj%6)/6+0.05+0.01*r.Float32(), float32(obj/6)/5+0.05+0.01*r.Float32()
		v[(4+obj%80)*n+i] = 0.3 + 0.6*r.Float32()
	}
	shape := []int{1, attrs, n}
	p := mustNew(b, spec.Output{Kind: spec.OutputDetection, Detection: spec.Detection{Format: spec.DetectYOLOv8}}, []infer.TensorInfo{info(infer.Float32, shape...)})
	out := []infer.Tensor{f32(shape, v...)}
	var decode, base time.Duration
	var sink float64
	dets := 0
	for range b.N {
		t0 := time.Now()
		o, err := p.Apply(out)
		if err != nil {
			b.Fatal(err)
		}
		decode += time.Since(t0)
		dets = len(o.Detections)
		t0 = time.Now()
		d := out[0].Data
		for k := 0; k < len(d); k += 4 {
			sink += float64(math.Float32frombits(binary.LittleEndian.Uint32(d[k:])))
		}
		base += time.Since(t0)
	}
	_ = sink
	b.ReportMetric(float64(decode.Microseconds())/float64(b.N), "decode-µs")
	b.ReportMetric(float64(base.Microseconds())/float64(b.N), "one-pass-µs")
	b.ReportMetric(float64(decode)/float64(base), "decode/one-pass")
	b.ReportMetric(float64(dets), "detections")
}

// BenchmarkSegmentationMask turns a 257x257x21 output (DeepLab's) into its mask PNG and areas;
// the goal is under 5 ms.
func BenchmarkSegmentationMask(b *testing.B) {
	const n, classes = 257, 21
	v := make([]float32, n*n*classes)
	for y := range n {
		for x := range n {
			c := 0
			if dx, dy := x-128, y-100; dx*dx+dy*dy < 3600 {
				c = 15
			}
			v[(y*n+x)*classes+c] = 5
		}
	}
	shape := []int{1, n, n, classes}
	p := mustNew(b, spec.Output{Kind: spec.OutputSegmentation}, []infer.TensorInfo{info(infer.Float32, shape...)})
	out := []infer.Tensor{f32(shape, v...)}
	b.ResetTimer()
	for range b.N {
		if _, err := p.Apply(out); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N)/1000, "ms/mask")
}
