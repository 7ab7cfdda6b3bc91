package preprocess

import (
	"errors"
	"fmt"
	"image"
	"image/color"
	"math"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"

	"github.com/edge-agent/edge-agent/agent/infer"
	"github.com/edge-agent/edge-agent/hal/sensor"
	"github.com/edge-agent/edge-agent/models/spec"
)

// greyImage builds an *image.Gray from rows of pixel values.
func greyImage(rows [][]uint8) *image.Gray {
	m := image.NewGray(image.Rect(0, 0, len(rows[0]), len(rows)))
	for y, r := range rows {
		for x, v := range r {
			m.SetGray(x, y, color.Gray{Y: v})
		}
	}
	return m
}

func imageSpec(im spec.Image) spec.Model {
	return spec.Model{Input: spec.Input{Kind: spec.InputImage, Image: im}}
}

func tensorInfo(dt infer.DType, shape ...int) infer.TensorInfo {
	return infer.TensorInfo{Name: "input", DType: dt, Shape: shape, Bytes: infer.Elements(shape) * dt.Size()}
}

// run preprocesses one image and returns the tensor's raw element values.
func run(t *testing.T, s spec.Model, in infer.TensorInfo, img image.Image) []float64 {
	t.Helper()
	p, err := New(s, []infer.TensorInfo{in})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	out, err := p.Apply(sensor.Frame{Image: img}, nil)
	if err != nil {
		t.Fatalf("Apply: %v", err)
	}
	if len(out) != 1 {
		t.Fatalf("got %d tensors; want 1", len(out))
	}
	if err := out[0].Check(); err != nil {
		t.Fatalf("output tensor: %v", err)
	}
	return out[0].Floats(infer.Quant{})
}

func near(a, b []float64, tol float64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if math.Abs(a[i]-b[i]) > tol {
			return false
		}
	}
	return true
}

func TestImageLayout(t *testing.T) {
	for _, tc := range []struct {
		shape   []int
		h, w, c int
		ok      bool
	}{
		{[]int{1, 300, 300, 3}, 300, 300, 3, true},
		{[]int{1, 28, 28, 1}, 28, 28, 1, true},
		{[]int{1, 28, 28}, 28, 28, 1, true},
		{[]int{1, 784}, 28, 28, 1, true},
		{[]int{1, 1}, 1, 1, 1, true},
		{[]int{1, 10}, 0, 0, 0, false},
		{[]int{1, 783}, 0, 0, 0, false},
		{[]int{2, 28, 28, 1}, 0, 0, 0, false},
		{[]int{1, 3, 224, 224}, 0, 0, 0, false},
		{[]int{1, 224, 224, 4}, 0, 0, 0, false},
		{[]int{784}, 0, 0, 0, false},
		{nil, 0, 0, 0, false},
	} {
		h, w, c, ok := imageLayout(tc.shape)
		if h != tc.h || w != tc.w || c != tc.c || ok != tc.ok {
			t.Errorf("imageLayout(%v) = %d,%d,%d,%v; want %d,%d,%d,%v", tc.shape, h, w, c, ok, tc.h, tc.w, tc.c, tc.ok)
		}
	}
}

var grid4 = [][]uint8{
	{0, 10, 20, 30},
	{40, 50, 60, 70},
	{80, 90, 100, 110},
	{120, 130, 140, 250},
}

func TestResize(t *testing.T) {
	for _, tc := range []struct {
		name   string
		method string
		src    [][]uint8
		shape  []int
		want   []float64
	}{
		{"area 4x4→2x2 averages 2x2 blocks", spec.ResizeArea, grid4, []int{1, 2, 2, 1},
			[]float64{25, 45, 105, 150}},
		{"area 4x4→1x1 averages everything", spec.ResizeArea, grid4, []int{1, 1, 1, 1},
			[]float64{(0 + 10 + 20 + 30 + 40 + 50 + 60 + 70 + 80 + 90 + 100 + 110 + 120 + 130 + 140 + 250) / 16.0}},
		{"area 3→2 weighs covered thirds", spec.ResizeArea, [][]uint8{{0, 30, 90}}, []int{1, 1, 2, 1},
			[]float64{2.0/3*0 + 1.0/3*30, 1.0/3*30 + 2.0/3*90}},
		{"area 2→4 enlarges", spec.ResizeArea, [][]uint8{{10, 50}}, []int{1, 1, 4, 1},
			[]float64{10, 10, 50, 50}},
		{"area 3→2 then 2→... rows", spec.ResizeArea, [][]uint8{{0}, {30}, {90}}, []int{1, 2, 1, 1},
			[]float64{10, 70}},
		{"nearest 4x4→2x2 picks floor(o·n/m)", spec.ResizeNearest, grid4, []int{1, 2, 2, 1},
			[]float64{0, 20, 80, 100}},
		{"nearest 2→4 repeats", spec.ResizeNearest, [][]uint8{{10, 50}}, []int{1, 1, 4, 1},
			[]float64{10, 10, 50, 50}},
		{"nearest 5→2", spec.ResizeNearest, [][]uint8{{1, 2, 3, 4, 5}}, []int{1, 1, 2, 1},
			[]float64{1, 3}},
		{"bilinear 4x4→2x2 half-pixel centres", spec.ResizeBilinear, grid4, []int{1, 2, 2, 1},
			[]float64{25, 45, 105, 150}},
		{"bilinear 3x3→1x1 is the centre", spec.ResizeBilinear, [][]uint8{{0, 0, 0}, {0, 200, 0}, {0, 0, 0}}, []int{1, 1, 1, 1},
			[]float64{200}},
		{"bilinear 2→4 interpolates, clamps at the edges", spec.ResizeBilinear, [][]uint8{{0, 100}}, []int{1, 1, 4, 1},
			[]float64{0, 25, 75, 100}},
		{"bilinear 1x1→3x3 is flat", spec.ResizeBilinear, [][]uint8{{77}}, []int{1, 3, 3, 1},
			[]float64{77, 77, 77, 77, 77, 77, 77, 77, 77}},
		{"same size copies", spec.ResizeBilinear, grid4, []int{1, 4, 4, 1},
			[]float64{0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 110, 120, 130, 140, 250}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := run(t, imageSpec(spec.Image{Resize: tc.method}), tensorInfo(infer.Float32, tc.shape...), greyImage(tc.src))
			if !near(got, tc.want, 1e-4) {
				t.Errorf("got %v; want %v", got, tc.want)
			}
		})
	}
}

func TestResizeAxisWeightsSumToOne(t *testing.T) {
	for _, method := range []string{spec.ResizeNearest, spec.ResizeBilinear, spec.ResizeArea} {
		for n := 1; n < 40; n++ {
			for m := 1; m < 40; m++ {
				ax := buildAxis(n, m, method)
				for o := 0; o < m; o++ {
					sum := 0.0
					for j := 0; j < ax.k; j++ {
						i, w := ax.idx[o*ax.k+j], ax.w[o*ax.k+j]
						if i < 0 || int(i) >= n {
							t.Fatalf("%s %d→%d: output %d taps source %d", method, n, m, o, i)
						}
						sum += w
					}
					if math.Abs(sum-1) > 1e-12 {
						t.Fatalf("%s %d→%d: output %d weights sum to %v; want 1", method, n, m, o, sum)
					}
				}
			}
		}
	}
}

func TestColour(t *testing.T) {
	m := image.NewNRGBA(image.Rect(0, 0, 1, 1))
	m.SetNRGBA(0, 0, color.NRGBA{R: 30, G: 60, B: 93, A: 255})
	for _, tc := range []struct {
		colour string
		shape  []int
		want   []float64
	}{
		{"", []int{1, 1, 1, 3}, []float64{30, 60, 93}},
		{"rgb", []int{1, 1, 1, 3}, []float64{30, 60, 93}},
		{"bgr", []int{1, 1, 1, 3}, []float64{93, 60, 30}},
		{"BGR", []int{1, 1, 1, 3}, []float64{93, 60, 30}},
		// Grey is the mean of R, G and B (61), not luma (0.299R+0.587G+0.114B = 54.8).
		{"grey", []int{1, 1, 1, 1}, []float64{61}},
		{"gray", []int{1, 1}, []float64{61}},
		{"", []int{1, 1, 1, 1}, []float64{61}},
		{"grey", []int{1, 1, 1, 3}, []float64{61, 61, 61}},
	} {
		got := run(t, imageSpec(spec.Image{Color: tc.colour}), tensorInfo(infer.Float32, tc.shape...), m)
		if !near(got, tc.want, 1e-4) {
			t.Errorf("colour %q into %v: got %v; want %v", tc.colour, tc.shape, got, tc.want)
		}
	}
}

func TestAlpha(t *testing.T) {
	// Alpha is ignored: colour is read non-premultiplied.
	n := image.NewNRGBA(image.Rect(0, 0, 2, 1))
	n.SetNRGBA(0, 0, color.NRGBA{R: 200, G: 100, B: 50, A: 0})
	n.SetNRGBA(1, 0, color.NRGBA{R: 200, G: 100, B: 50, A: 128})
	r := image.NewRGBA(image.Rect(0, 0, 2, 1))
	r.SetRGBA(0, 0, color.RGBA{R: 100, G: 50, B: 25, A: 128}) // premultiplied (200,100,50) at ~50%
	r.SetRGBA(1, 0, color.RGBA{})                             // fully transparent: black
	in := tensorInfo(infer.Float32, 1, 1, 2, 3)
	s := imageSpec(spec.Image{Resize: spec.ResizeNearest})
	if got, want := run(t, s, in, n), []float64{200, 100, 50, 200, 100, 50}; !near(got, want, 1e-9) {
		t.Errorf("NRGBA: got %v; want %v", got, want)
	}
	if got, want := run(t, s, in, r), []float64{199, 99, 49, 0, 0, 0}; !near(got, want, 1e-9) {
		t.Errorf("RGBA: got %v; want %v (un-premultiplied as color.NRGBAModel does)", got, want)
	}
	// The un-premultiplied values agree with color.NRGBAModel.
	c := color.NRGBAModel.Convert(r.At(0, 0)).(color.NRGBA)
	if c.R != 199 || c.G != 99 || c.B != 49 {
		t.Errorf("color.NRGBAModel gives %v; the test's expectation is stale", c)
	}
}

func TestNormalise(t *testing.T) {
	m := image.NewNRGBA(image.Rect(0, 0, 1, 1))
	m.SetNRGBA(0, 0, color.NRGBA{R: 0, G: 127, B: 255, A: 255})
	in := tensorInfo(infer.Float32, 1, 1, 1, 3)
	for _, tc := range []struct {
		im   spec.Image
		want []float64
	}{
		{spec.Image{}, []float64{0, 127, 255}},
		{spec.Image{Std: []float64{255}}, []float64{0, 127.0 / 255, 1}},
		{spec.Image{Mean: []float64{127.5}, Std: []float64{127.5}}, []float64{-1, -0.5 / 127.5, 1}},
		{spec.Image{Mean: []float64{1, 2, 3}, Std: []float64{1, 2, 4}}, []float64{-1, 62.5, 63}},
		{spec.Image{Invert: true}, []float64{255, 128, 0}},
		{spec.Image{Invert: true, Std: []float64{255}}, []float64{1, 128.0 / 255, 0}},
		{spec.Image{Color: "bgr", Mean: []float64{10, 0, 0}}, []float64{245, 127, 0}}, // mean indexes tensor channels
	} {
		got := run(t, imageSpec(tc.im), in, m)
		if !near(got, tc.want, 1e-6) {
			t.Errorf("%+v: got %v; want %v", tc.im, got, tc.want)
		}
	}
}

func TestQuantisedImage(t *testing.T) {
	m := greyImage([][]uint8{{0, 64, 128, 191, 255}})
	for _, tc := range []struct {
		name string
		in   infer.TensorInfo
		im   spec.Image
		want []float64
	}{
		// SSD MobileNet: pixels → −1..1 → q = v·128 + 128 (saturated at 255); 128 gives
		// 128.502 and 191 gives 191.749.
		{"uint8 scale 1/128 zp 128", infer.TensorInfo{DType: infer.UInt8, Shape: []int{1, 1, 5, 1}, Quant: infer.Quant{Scale: 0.0078125, ZeroPoint: 128}},
			spec.Image{Mean: []float64{127.5}, Std: []float64{127.5}}, []float64{0, 64, 129, 192, 255}},
		// int8: v in 0..1, scale 1/255, zp −128.
		{"int8 scale 1/255 zp -128", infer.TensorInfo{DType: infer.Int8, Shape: []int{1, 1, 5, 1}, Quant: infer.Quant{Scale: 1.0 / 255, ZeroPoint: -128}},
			spec.Image{Std: []float64{255}}, []float64{-128, -64, 0, 63, 127}},
		// Unquantised uint8 gets the value rounded and clamped.
		{"uint8 unquantised clamps", infer.TensorInfo{DType: infer.UInt8, Shape: []int{1, 1, 5, 1}},
			spec.Image{Std: []float64{0.5}}, []float64{0, 128, 255, 255, 255}},
		{"int8 unquantised clamps", infer.TensorInfo{DType: infer.Int8, Shape: []int{1, 1, 5, 1}},
			spec.Image{Mean: []float64{128}}, []float64{-128, -64, 0, 63, 127}},
		{"int16 quantised", infer.TensorInfo{DType: infer.Int16, Shape: []int{1, 1, 5, 1}, Quant: infer.Quant{Scale: 0.5, ZeroPoint: 10}},
			spec.Image{}, []float64{10, 138, 266, 392, 520}},
		{"int32", infer.TensorInfo{DType: infer.Int32, Shape: []int{1, 1, 5, 1}},
			spec.Image{}, []float64{0, 64, 128, 191, 255}},
		{"float64", infer.TensorInfo{DType: infer.Float64, Shape: []int{1, 1, 5, 1}},
			spec.Image{Std: []float64{255}}, []float64{0, 64.0 / 255, 128.0 / 255, 191.0 / 255, 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := run(t, imageSpec(tc.im), tc.in, m)
			if !near(got, tc.want, 1e-9) {
				t.Errorf("got %v; want %v", got, tc.want)
			}
		})
	}
}

func TestQuantiseRoundTrip(t *testing.T) {
	// Quantising v and dequantising gives v back within half a step, for values in range.
	rng := rand.New(rand.NewPCG(1, 2))
	for _, tc := range []struct {
		dt infer.DType
		q  infer.Quant
	}{
		{infer.UInt8, infer.Quant{Scale: 0.02, ZeroPoint: 100}},
		{infer.UInt8, infer.Quant{Scale: 1.0 / 255, ZeroPoint: 0}},
		{infer.Int8, infer.Quant{Scale: 0.05, ZeroPoint: -3}},
		{infer.Int8, infer.Quant{Scale: 0.0078125, ZeroPoint: 0}},
		{infer.Int16, infer.Quant{Scale: 0.001, ZeroPoint: 0}},
	} {
		lo, hi := 0.0, 255.0
		switch tc.dt {
		case infer.Int8:
			lo, hi = -128, 127
		case infer.Int16:
			lo, hi = -32768, 32767
		}
		vlo := float64(tc.q.Scale) * (lo - float64(tc.q.ZeroPoint))
		vhi := float64(tc.q.Scale) * (hi - float64(tc.q.ZeroPoint))
		vals := make([]float64, 200)
		for i := range vals {
			vals[i] = vlo + rng.Float64()*(vhi-vlo)
		}
		in := infer.TensorInfo{DType: tc.dt, Shape: []int{1, len(vals)}, Quant: tc.q}
		p, err := New(spec.Model{Input: spec.Input{Kind: spec.InputVector}}, []infer.TensorInfo{in})
		if err != nil {
			t.Fatalf("New: %v", err)
		}
		out, err := p.Apply(sensor.Frame{Values: vals}, nil)
		if err != nil {
			t.Fatalf("Apply: %v", err)
		}
		got := out[0].Floats(tc.q)
		for i, v := range vals {
			if math.Abs(got[i]-v) > float64(tc.q.Scale)/2+1e-9 {
				t.Errorf("%s %+v: %v came back as %v; want within %v", tc.dt, tc.q, v, got[i], tc.q.Scale/2)
			}
		}
		// Out-of-range values saturate.
		out, err = p.Apply(sensor.Frame{Values: append([]float64{vhi + 100, vlo - 100}, vals[2:]...)}, out)
		if err != nil {
			t.Fatalf("Apply: %v", err)
		}
		if got := out[0].Float(0); got != hi {
			t.Errorf("%s: above range stored %v; want %v", tc.dt, got, hi)
		}
		if got := out[0].Float(1); got != lo {
			t.Errorf("%s: below range stored %v; want %v", tc.dt, got, lo)
		}
	}
}

func TestRounding(t *testing.T) {
	for _, v := range []float64{0, 0.5, 1.5, 2.5, 2.4999, 2.5001, 127.5, 128.5, 254.5, -0.5, -1.5, -2.5, -127.5, 1e9 + 0.5, -1e9 - 0.5} {
		if got, want := roundEven(v), math.RoundToEven(v); got != want {
			t.Errorf("roundEven(%v) = %v; want %v", v, got, want)
		}
		if math.Abs(v) < 200 {
			if got, want := int8(roundBits(v)), int8(math.RoundToEven(v)); math.Abs(v) < 128 && got != want {
				t.Errorf("int8(roundBits(%v)) = %v; want %v", v, got, want)
			}
			if got, want := uint8(roundBits(v)), uint8(int(math.RoundToEven(v))); v >= 0 && v < 255 && got != want {
				t.Errorf("uint8(roundBits(%v)) = %v; want %v", v, got, want)
			}
		}
	}
}

func TestYCbCrMatchesRGB(t *testing.T) {
	// A JPEG's Y'CbCr is resampled before conversion to RGB. Conversion is affine, so this
	// equals converting every pixel first except for 8-bit rounding and where the source
	// holds out-of-gamut colours (clamped per pixel one way, per output the other).
	img := decodeTestImage(t, "ssd_example.jpg")
	if _, ok := img.(*image.YCbCr); !ok {
		t.Fatalf("ssd_example.jpg decoded to %T; want *image.YCbCr", img)
	}
	rgb := toNRGBA(img)
	in := tensorInfo(infer.Float32, 1, 64, 96, 3)
	for _, method := range []string{spec.ResizeNearest, spec.ResizeBilinear, spec.ResizeArea} {
		s := imageSpec(spec.Image{Resize: method})
		a, b := run(t, s, in, img), run(t, s, in, rgb)
		maxd, sum := 0.0, 0.0
		for i := range a {
			d := math.Abs(a[i] - b[i])
			maxd, sum = max(maxd, d), sum+d
		}
		mean := sum / float64(len(a))
		t.Logf("%s: YCbCr vs RGB: max difference %.2f, mean %.3f", method, maxd, mean)
		if maxd > 8 || mean > 0.5 {
			t.Errorf("%s: YCbCr vs RGB differ by up to %.2f (mean %.3f); want ≤ 8 (mean ≤ 0.5)", method, maxd, mean)
		}
	}
}

func toNRGBA(img image.Image) *image.NRGBA {
	b := img.Bounds()
	m := image.NewNRGBA(b)
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			m.Set(x, y, img.At(x, y))
		}
	}
	return m
}

// funcImage is an image.Image that is not one of the fast-path types.
type funcImage struct {
	r  image.Rectangle
	at func(x, y int) color.Color
}

func (f funcImage) ColorModel() color.Model { return color.NRGBAModel }
func (f funcImage) Bounds() image.Rectangle { return f.r }
func (f funcImage) At(x, y int) color.Color { return f.at(x, y) }

// pattern is a colour that varies with position.
func pattern(x, y int) color.NRGBA {
	return color.NRGBA{R: uint8(x * 7), G: uint8(y * 13), B: uint8(x*y + 3), A: 255}
}

func patternAt(x, y int) color.Color { return pattern(x, y) }

func patternYCC(x, y int) (yy, cb, cr uint8) {
	return uint8(x*5 + y), uint8(128 + x - y), uint8(100 + y)
}

func nrgbaOf(c color.Color) color.NRGBA { return color.NRGBAModel.Convert(c).(color.NRGBA) }

// TestFastPathsMatchGeneric checks every direct Pix reader against the At() fallback, with
// bounds that do not start at 0 (sub-images).
func TestFastPathsMatchGeneric(t *testing.T) {
	r := image.Rect(3, 5, 20, 17)
	rgba := image.NewRGBA(r)
	nrgba := image.NewNRGBA(r)
	gray := image.NewGray(r)
	for y := r.Min.Y; y < r.Max.Y; y++ {
		for x := r.Min.X; x < r.Max.X; x++ {
			c := pattern(x, y)
			nrgba.SetNRGBA(x, y, c)
			gray.SetGray(x, y, color.Gray{Y: c.R})
			c.A = uint8(min(255, 12*x+40)) // translucent, opaque from x = 18
			rgba.Set(x, y, c)              // stored premultiplied
		}
	}
	images := []image.Image{rgba, nrgba, gray, rgba.SubImage(image.Rect(4, 6, 19, 15)), nrgba.SubImage(image.Rect(5, 5, 20, 16))}
	for _, ratio := range []image.YCbCrSubsampleRatio{image.YCbCrSubsampleRatio444, image.YCbCrSubsampleRatio422, image.YCbCrSubsampleRatio420, image.YCbCrSubsampleRatio440, image.YCbCrSubsampleRatio411, image.YCbCrSubsampleRatio410} {
		m := image.NewYCbCr(r, ratio)
		for y := r.Min.Y; y < r.Max.Y; y++ {
			for x := r.Min.X; x < r.Max.X; x++ {
				a, b, c := patternYCC(x, y)
				m.Y[m.YOffset(x, y)] = a
				m.Cb[m.COffset(x, y)] = b
				m.Cr[m.COffset(x, y)] = c
			}
		}
		images = append(images, m, m.SubImage(image.Rect(5, 7, 19, 16)))
	}
	for _, img := range images {
		generic := funcImage{img.Bounds(), img.At}
		for _, method := range []string{spec.ResizeNearest, spec.ResizeBilinear, spec.ResizeArea} {
			for _, shape := range [][]int{{1, 7, 9, 3}, {1, 30, 25, 3}, {1, 6, 6, 1}} {
				s := imageSpec(spec.Image{Resize: method})
				in := tensorInfo(infer.Float32, shape...)
				got, want := run(t, s, in, img), run(t, s, in, generic)
				tol := 1e-6
				if _, ok := img.(*image.YCbCr); ok {
					tol = 1.5 // resampled before conversion; see TestYCbCrMatchesRGB
				}
				if !near(got, want, tol) {
					t.Errorf("%T %v %s %v: fast path differs from At()", img, img.Bounds(), method, shape)
				}
			}
		}
	}
}

func TestRandomShapesStayInRange(t *testing.T) {
	// Every method is a convex combination of source pixels: outputs stay within the
	// source's range, whatever the sizes.
	rng := rand.New(rand.NewPCG(7, 8))
	methods := []string{spec.ResizeNearest, spec.ResizeBilinear, spec.ResizeArea}
	for i := 0; i < 300; i++ {
		sw, sh := 1+rng.IntN(50), 1+rng.IntN(50)
		rows := make([][]uint8, sh)
		lo, hi := 255.0, 0.0
		for y := range rows {
			rows[y] = make([]uint8, sw)
			for x := range rows[y] {
				v := uint8(rng.IntN(256))
				rows[y][x] = v
				lo, hi = min(lo, float64(v)), max(hi, float64(v))
			}
		}
		ow, oh := 1+rng.IntN(40), 1+rng.IntN(40)
		method := methods[rng.IntN(len(methods))]
		got := run(t, imageSpec(spec.Image{Resize: method}), tensorInfo(infer.Float32, 1, oh, ow, 1), greyImage(rows))
		for j, v := range got {
			if v < lo-1e-9 || v > hi+1e-9 || math.IsNaN(v) {
				t.Fatalf("%s %dx%d→%dx%d: element %d = %v outside the source range %v..%v", method, sw, sh, ow, oh, j, v, lo, hi)
			}
		}
	}
}

func TestBadImages(t *testing.T) {
	p, err := New(imageSpec(spec.Image{}), []infer.TensorInfo{tensorInfo(infer.UInt8, 1, 4, 4, 3)})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	short := image.NewRGBA(image.Rect(0, 0, 10, 10))
	short.Pix = short.Pix[:50]
	shortYCC := image.NewYCbCr(image.Rect(0, 0, 10, 10), image.YCbCrSubsampleRatio420)
	shortYCC.Cr = shortYCC.Cr[:3]
	badStride := image.NewGray(image.Rect(0, 0, 10, 10))
	badStride.Stride = 3
	for _, tc := range []struct {
		name string
		img  image.Image
		want string
	}{
		{"nil *image.RGBA", (*image.RGBA)(nil), "nil"},
		{"nil *image.YCbCr", (*image.YCbCr)(nil), "nil"},
		{"empty", image.NewRGBA(image.Rect(0, 0, 0, 0)), "empty"},
		{"zero width", image.NewGray(image.Rect(0, 0, 0, 5)), "empty"},
		{"short Pix", short, "smaller"},
		{"short Cr", shortYCC, "smaller"},
		{"stride below width", badStride, "smaller"},
		{"huge", funcImage{image.Rect(0, 0, 1<<20, 2), patternAt}, "larger"},
		{"At panics", funcImage{image.Rect(0, 0, 5, 5), func(x, y int) color.Color { panic("broken decoder") }}, "broken decoder"},
		{"At returns nil", funcImage{image.Rect(0, 0, 5, 5), func(x, y int) color.Color { return nil }}, "failed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := p.Apply(sensor.Frame{Source: "cam", Seq: 3, Image: tc.img}, nil)
			if !errors.Is(err, ErrBadFrame) {
				t.Fatalf("got %v; want an error wrapping ErrBadFrame", err)
			}
			if !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "cam#3") {
				t.Errorf("got %q; want it to name the frame (cam#3) and mention %q", err, tc.want)
			}
		})
	}
	// The preprocessor still works afterwards.
	if _, err := p.Apply(sensor.Frame{Image: greyImage(grid4)}, nil); err != nil {
		t.Errorf("after bad frames: %v", err)
	}
}

func TestConcurrentApply(t *testing.T) {
	// Several goroutines, several source sizes (more than the plan cache holds): results
	// equal the serial ones. Run with -race.
	in := tensorInfo(infer.UInt8, 1, 16, 16, 3)
	p, err := New(imageSpec(spec.Image{Resize: spec.ResizeBilinear, Mean: []float64{127.5}, Std: []float64{127.5}}), []infer.TensorInfo{in})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	var imgs []image.Image
	var want [][]byte
	for i := 0; i < 7; i++ {
		m := image.NewNRGBA(image.Rect(0, 0, 20+i*9, 15+i*4))
		for y := 0; y < m.Rect.Dy(); y++ {
			for x := 0; x < m.Rect.Dx(); x++ {
				m.SetNRGBA(x, y, pattern(x+i, y))
			}
		}
		out, err := p.Apply(sensor.Frame{Image: m}, nil)
		if err != nil {
			t.Fatalf("Apply: %v", err)
		}
		imgs, want = append(imgs, m), append(want, out[0].Data)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for g := 0; g < 4; g++ {
		wg.Go(func() {
			var dst []infer.Tensor
			for i := 0; i < 50; i++ {
				k := (i + g) % len(imgs)
				var err error
				if dst, err = p.Apply(sensor.Frame{Image: imgs[k]}, dst); err != nil {
					errs <- err
					return
				}
				if string(dst[0].Data) != string(want[k]) {
					errs <- fmt.Errorf("goroutine %d image %d: result differs from the serial one", g, k)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestApplyReusesDst(t *testing.T) {
	in := tensorInfo(infer.Float32, 1, 784)
	p, err := New(imageSpec(spec.Image{Resize: spec.ResizeArea, Std: []float64{255}}), []infer.TensorInfo{in})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	f := sensor.Frame{Image: greyImage(grid4)}
	dst, err := p.Apply(f, nil)
	if err != nil {
		t.Fatalf("Apply: %v", err)
	}
	first := &dst[0].Data[0]
	allocs := testing.AllocsPerRun(20, func() {
		if dst, err = p.Apply(f, dst); err != nil {
			t.Fatalf("Apply: %v", err)
		}
	})
	if &dst[0].Data[0] != first {
		t.Errorf("Apply allocated a new tensor; want dst reused")
	}
	if allocs > 0 && !raceEnabled {
		t.Errorf("got %v allocations per Apply with a reused dst; want 0", allocs)
	}
	// A dst of the wrong shape is replaced, not written past.
	wrong := []infer.Tensor{infer.NewTensor(infer.Float32, []int{1, 10})}
	out, err := p.Apply(f, wrong)
	if err != nil {
		t.Fatalf("Apply: %v", err)
	}
	if len(out[0].Data) != 784*4 || len(wrong[0].Data) != 40 {
		t.Errorf("got %d bytes (dst left with %d); want a new 3136-byte tensor", len(out[0].Data), len(wrong[0].Data))
	}
}

func TestRealMNISTDigits(t *testing.T) {
	// The README's MNIST preprocessing: area resize to 28×28, grey = mean of R,G,B, /255.
	// The digits are white on black; 7 are 1-bit grey PNGs, 3 are opaque RGBA.
	in := infer.TensorInfo{Name: "serving_default_dense_input:0", DType: infer.Float32, Shape: []int{1, 784}, Bytes: 784 * 4}
	p, err := New(mnistSpec, []infer.TensorInfo{in})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	for d := 0; d < 10; d++ {
		img := decodeTestImage(t, fmt.Sprintf("mnist_digit_%d.png", d))
		if b := img.Bounds(); b.Dx() != 100 || b.Dy() != 100 {
			t.Fatalf("digit %d is %v; want 100x100", d, b)
		}
		out, err := p.Apply(sensor.Frame{Image: img}, nil)
		if err != nil {
			t.Fatalf("digit %d: %v", d, err)
		}
		if got := out[0].Shape; len(got) != 2 || got[0] != 1 || got[1] != 784 || out[0].DType != infer.Float32 {
			t.Fatalf("digit %d: got %s%v; want float32[1 784]", d, out[0].DType, got)
		}
		vals := out[0].Floats(infer.Quant{})
		ink, lo, hi := 0.0, 1.0, 0.0
		for _, v := range vals {
			ink += v
			lo, hi = min(lo, v), max(hi, v)
		}
		ink /= 784
		if lo < 0 || hi > 1 || hi < 0.99 || lo > 0.01 {
			t.Errorf("digit %d: values span %v..%v; want 0..1 with both ends present", d, lo, hi)
		}
		if ink < 0.02 || ink > 0.3 {
			t.Errorf("digit %d: mean %v; want a light stroke on black (0.02..0.3)", d, ink)
		}
	}
}

func TestRealSSDPhoto(t *testing.T) {
	img := decodeTestImage(t, "ssd_example.jpg")
	p, err := New(ssdSpec, []infer.TensorInfo{ssdInput})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	out, err := p.Apply(sensor.Frame{Image: img}, nil)
	if err != nil {
		t.Fatalf("Apply: %v", err)
	}
	if out[0].DType != infer.UInt8 || fmt.Sprint(out[0].Shape) != "[1 300 300 3]" || len(out[0].Data) != 270000 {
		t.Fatalf("got %s%v with %d bytes; want uint8[1 300 300 3] with 270000", out[0].DType, out[0].Shape, len(out[0].Data))
	}
	// The input quantisation (scale 1/128, zero point 128) with mean = std = 127.5 maps a
	// pixel p to about p: the tensor looks like the photo.
	var hist [256]int
	sum := 0
	for _, v := range out[0].Data {
		hist[v]++
		sum += int(v)
	}
	mean := float64(sum) / float64(len(out[0].Data))
	if mean < 60 || mean > 200 {
		t.Errorf("mean byte %v; want a normally exposed photo (60..200)", mean)
	}
	lo, hi := 0, 255
	for hist[lo] == 0 {
		lo++
	}
	for hist[hi] == 0 {
		hi--
	}
	if hi-lo < 180 {
		t.Errorf("bytes span %d..%d; want most of 0..255 used", lo, hi)
	}
	// Bilinear is a convex combination of the 2×2 source pixels around
	// s = (o+½)·1920/300 − ½ (and the same for rows): each output lies within their range,
	// give or take the Y'CbCr rounding.
	src := toNRGBA(img)
	for oy := 0; oy < 300; oy += 23 {
		for ox := 0; ox < 300; ox += 17 {
			sx := int((float64(ox)+0.5)*1920/300 - 0.5)
			sy := int((float64(oy)+0.5)*1280/300 - 0.5)
			got := out[0].Data[(oy*300+ox)*3:][:3]
			for ch := 0; ch < 3; ch++ {
				clo, chi := 255, 0
				for _, pt := range [][2]int{{sx, sy}, {sx + 1, sy}, {sx, sy + 1}, {sx + 1, sy + 1}} {
					c := src.NRGBAAt(pt[0], pt[1])
					v := int([]uint8{c.R, c.G, c.B}[ch])
					clo, chi = min(clo, v), max(chi, v)
				}
				if g := int(got[ch]); g < clo-3 || g > chi+3 {
					t.Errorf("output (%d,%d) channel %d = %d; want within the source pixels' %d..%d", ox, oy, ch, g, clo, chi)
				}
			}
		}
	}
}

// With no mean/std declared, a quantised 8-bit input gets the pixel bytes as they are,
// whatever its scale and zero point (uint8: q = p; int8: q = p - 128).
func TestQuantisedInputDefaultsToPixelBytes(t *testing.T) {
	img := image.NewGray(image.Rect(0, 0, 2, 2))
	copy(img.Pix, []byte{0, 37, 200, 255})
	for _, c := range []struct {
		dt   infer.DType
		q    infer.Quant
		want []float64
	}{
		{infer.UInt8, infer.Quant{Scale: 0.0078125, ZeroPoint: 128}, []float64{0, 37, 200, 255}},
		{infer.UInt8, infer.Quant{Scale: 1.0 / 255, ZeroPoint: 0}, []float64{0, 37, 200, 255}},
		{infer.Int8, infer.Quant{Scale: 0.0078125, ZeroPoint: 0}, []float64{-128, -91, 72, 127}},
	} {
		in := infer.TensorInfo{Name: "x", DType: c.dt, Shape: []int{1, 2, 2, 1}, Quant: c.q, Bytes: 4}
		p, err := New(spec.Model{Input: spec.Input{Image: spec.Image{Resize: spec.ResizeNearest}}}, []infer.TensorInfo{in})
		if err != nil {
			t.Fatal(err)
		}
		out, err := p.Apply(sensor.Frame{Image: img}, nil)
		if err != nil {
			t.Fatal(err)
		}
		got := out[0].Floats(infer.Quant{})
		for i := range c.want {
			if got[i] != c.want[i] {
				t.Errorf("%s %+v: got %v; want %v", c.dt, c.q, got, c.want)
				break
			}
		}
	}
}
