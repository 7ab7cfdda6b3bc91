package postprocess

import (
	"bytes"
	"encoding/json"
	"errors"
	"image"
	"image/png"
	"math"
	"strings"
	"testing"

	"github.com/edge-agent/edge-agent/agent/infer"
	"github.com/edge-agent/edge-agent/agent/result"
	"github.com/edge-agent/edge-agent/models/spec"
)

func segApply(t *testing.T, g spec.Segmentation, labels []string, shape []int, v []float32) (*result.Segmentation, [][]uint8) {
	t.Helper()
	p, err := New(spec.Output{Kind: spec.OutputSegmentation, Labels: labels, Segmentation: g}, []infer.TensorInfo{info(infer.Float32, shape...)}, nil)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	out, err := p.Apply([]infer.Tensor{f32(shape, v...)})
	if err != nil {
		t.Fatal(err)
	}
	img, err := png.Decode(bytes.NewReader(out.Segmentation.Mask)) // the standard decoder reads it back
	if err != nil {
		t.Fatalf("the mask is not a PNG: %v", err)
	}
	g8, ok := img.(*image.Gray)
	if !ok {
		t.Fatalf("mask is %T; want 8-bit grey", img)
	}
	b := g8.Bounds()
	rows := make([][]uint8, b.Dy())
	for y := range rows {
		rows[y] = g8.Pix[y*g8.Stride : y*g8.Stride+b.Dx()]
	}
	return out.Segmentation, rows
}

// A 4x3 picture of 3 classes, NHWC and NCHW: each pixel's best class, read back by the standard
// PNG decoder, and the areas by hand (largest first).
func TestSegmentationArgmax(t *testing.T) {
	want := [][]uint8{{0, 0, 1, 1}, {0, 2, 2, 1}, {0, 0, 0, 2}} // 6 × class 0, 3 × class 1, 3 × class 2
	nhwc := make([]float32, 0, 36)
	nchw := make([]float32, 36)
	for y, row := range want {
		for x, c := range row {
			for k := range 3 {
				s := float32(0.1)
				if uint8(k) == c {
					s = 0.8
				}
				nhwc = append(nhwc, s)
				nchw[k*12+y*4+x] = s
			}
		}
	}
	labels := []string{"background", "cat", "dog"}
	for name, c := range map[string]struct {
		g     spec.Segmentation
		shape []int
		v     []float32
	}{
		"nhwc": {spec.Segmentation{}, []int{1, 3, 4, 3}, nhwc},
		"nchw": {spec.Segmentation{Layout: "nchw"}, []int{1, 3, 3, 4}, nchw},
	} {
		seg, rows := segApply(t, c.g, labels, c.shape, c.v)
		if seg.Width != 4 || seg.Height != 3 {
			t.Errorf("%s: %dx%d; want 4x3", name, seg.Width, seg.Height)
		}
		for y := range want {
			if !bytes.Equal(rows[y], want[y]) {
				t.Errorf("%s: mask row %d = %v; want %v", name, y, rows[y], want[y])
			}
		}
		wantAreas := []result.ClassArea{{Index: 0, Label: "background", Pixels: 6, Fraction: 0.5}, {Index: 1, Label: "cat", Pixels: 3, Fraction: 0.25}, {Index: 2, Label: "dog", Pixels: 3, Fraction: 0.25}}
		if len(seg.Areas) != 3 || seg.Areas[0] != wantAreas[0] || seg.Areas[1] != wantAreas[1] || seg.Areas[2] != wantAreas[2] {
			t.Errorf("%s: areas %+v; want %+v", name, seg.Areas, wantAreas)
		}
	}
}

// One channel of logits (selfie segmentation): class 1 where sigmoid(x) ≥ 0.5, i.e. x ≥ 0.
func TestSegmentationOneChannel(t *testing.T) {
	seg, rows := segApply(t, spec.Segmentation{Sigmoid: true}, nil, []int{1, 2, 2, 1}, []float32{-3, 0.5, 2, -0.1})
	if !bytes.Equal(rows[0], []uint8{0, 1}) || !bytes.Equal(rows[1], []uint8{1, 0}) || len(seg.Areas) != 2 || seg.Areas[0].Pixels != 2 {
		t.Errorf("mask %v, areas %+v", rows, seg.Areas)
	}
}

// A DeepLab-sized frame (257x257x21, 5.5 MB of float32 scores as raw numbers) makes a result
// record under 64 KB: a person-shaped disc and a rectangle on background.
func TestSegmentationRecordIsSmall(t *testing.T) {
	const n, classes = 257, 21
	v := make([]float32, n*n*classes)
	for y := range n {
		for x := range n {
			c := 0
			if dx, dy := float64(x-128), float64(y-100); dx*dx+dy*dy < 60*60 {
				c = 15 // person
			} else if x > 20 && x < 90 && y > 180 && y < 240 {
				c = 7 // car
			}
			for k := range classes {
				v[(y*n+x)*classes+k] = float32(math.Sin(float64(x*k+y))) * 0.1
			}
			v[(y*n+x)*classes+c] = 5
		}
	}
	seg, _ := segApply(t, spec.Segmentation{}, nil, []int{1, n, n, classes}, v)
	rec, err := json.Marshal(result.Result{Schema: result.Schema, Model: "deeplab", Segmentation: seg})
	if err != nil {
		t.Fatal(err)
	}
	if len(rec) >= 64<<10 || len(seg.Areas) != 3 || seg.Areas[0].Index != 0 || seg.Areas[1].Index != 15 {
		t.Errorf("record of %d bytes, areas %+v; want under 64 KB with background, person, car", len(rec), seg.Areas)
	}
	t.Logf("257x257x21 frame: a %d-byte record (mask PNG %d bytes)", len(rec), len(seg.Mask))
}

// A shape that is no picture, and a NaN score, are errors; neither panics.
func TestSegmentationRefusals(t *testing.T) {
	_, err := New(spec.Output{Kind: spec.OutputSegmentation}, []infer.TensorInfo{info(infer.Float32, 1, 1000)}, nil)
	if err == nil || !strings.Contains(err.Error(), "output.segmentation.tensor") {
		t.Errorf("a [1,1000] output: %v", err)
	}
	p, _ := New(spec.Output{Kind: spec.OutputSegmentation}, []infer.TensorInfo{info(infer.Float32, 1, 2, 2, 2)}, nil)
	if _, err := p.Apply([]infer.Tensor{f32([]int{1, 2, 2, 2}, 0, 1, 0, 1, float32(math.NaN()), 1, 0, 1)}); !errors.Is(err, ErrNonFinite) {
		t.Errorf("a NaN score: %v; want ErrNonFinite", err)
	}
}

// A segmentation output given kind classification is refused (its top class would be a
// flattened pixel position), pointing at kind segmentation.
func TestClassificationRefusesAPerPixelOutput(t *testing.T) {
	_, err := New(spec.Output{Kind: spec.OutputClassification}, []infer.TensorInfo{info(infer.Float32, 1, 257, 257, 21)}, nil)
	if err == nil || !strings.Contains(err.Error(), "kind segmentation") {
		t.Errorf("classification of [1,257,257,21]: %v; want a refusal naming kind segmentation", err)
	}
	if _, err := New(spec.Output{Kind: spec.OutputClassification}, []infer.TensorInfo{info(infer.Float32, 1, 1, 1, 1001)}, nil); err != nil {
		t.Errorf("classification of [1,1,1,1001]: %v", err)
	}
}
