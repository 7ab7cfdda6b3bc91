package preprocess

import (
	"image"
	"testing"

	"github.com/edge-agent/edge-agent/agent/infer"
	"github.com/edge-agent/edge-agent/hal/sensor"
	"github.com/edge-agent/edge-agent/models/spec"
)

// ssdInput is the input of ssd_mobilenet_detect.tflite.
var ssdInput = infer.TensorInfo{Name: "normalized_input_image_tensor", DType: infer.UInt8, Shape: []int{1, 300, 300, 3}, Quant: infer.Quant{Scale: 0.0078125, ZeroPoint: 128}, Bytes: 300 * 300 * 3}

// ssdSpec maps pixels 0..255 to -1..1, which the input's quantisation maps back to 0..255.
var ssdSpec = spec.Model{Input: spec.Input{Kind: spec.InputImage, Image: spec.Image{Resize: spec.ResizeBilinear, Mean: []float64{127.5}, Std: []float64{127.5}}}}

// mnistInput is the input of mnist_model.tflite.
var mnistInput = infer.TensorInfo{Name: "serving_default_dense_input:0", DType: infer.Float32, Shape: []int{1, 784}, Bytes: 784 * 4}

var mnistSpec = spec.Model{Input: spec.Input{Kind: spec.InputImage, Image: spec.Image{Resize: spec.ResizeArea, Color: "grey", Std: []float64{255}}}}

func benchImage(b *testing.B, img image.Image, s spec.Model, in infer.TensorInfo) {
	p, err := New(s, []infer.TensorInfo{in})
	if err != nil {
		b.Fatalf("New: %v", err)
	}
	f := sensor.Frame{Image: img}
	dst, err := p.Apply(f, nil)
	if err != nil {
		b.Fatalf("Apply: %v", err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if dst, err = p.Apply(f, dst); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkImageSSD: the 1920×1280 JPEG (decoded once to YCbCr 4:2:0) → uint8
// [1,300,300,3], bilinear, quantised (scale 1/128, zero point 128).
func BenchmarkImageSSD(b *testing.B) {
	benchImage(b, decodeTestImage(b, "ssd_example.jpg"), ssdSpec, ssdInput)
}

// BenchmarkImageMNIST: a 100×100 PNG → float32 [1,784], area, grey. Seven of the digits
// decode to *image.Gray (1-bit PNGs), three to *image.NRGBA.
func BenchmarkImageMNIST(b *testing.B) {
	b.Run("gray", func(b *testing.B) {
		benchImage(b, decodeTestImage(b, "mnist_digit_3.png"), mnistSpec, mnistInput)
	})
	b.Run("nrgba", func(b *testing.B) {
		benchImage(b, decodeTestImage(b, "mnist_digit_1.png"), mnistSpec, mnistInput)
	})
}
