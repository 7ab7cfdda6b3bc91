package postprocess

// Segmentation: a model's per-pixel scores ([1,H,W,C], or [1,C,H,W] with layout nchw) become
// a mask of class indexes, each pixel's best class (one channel: class 1 where the score
// passes the threshold, else 0), encoded as an 8-bit grey PNG, with the area of each class.
// A 257x257x21 frame is 11 MB of float32 scores; its mask is tens of KB at most.

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"fmt"
	"image"
	"image/png"
	"math"
	"slices"

	"github.com/edge-agent/edge-agent/agent/infer"
	"github.com/edge-agent/edge-agent/agent/result"
	"github.com/edge-agent/edge-agent/models/spec"
)

type segHead struct {
	tensor  int
	h, w, c int
	nchw    bool
	thr     float64
	sigmoid bool
	enc     *png.Encoder
}

func (p *Postprocessor) newSegmentation(g spec.Segmentation) error {
	field := "output.segmentation.tensor"
	o, err := p.tensor(field, g.Tensor)
	if err != nil {
		return err
	}
	s := &segHead{tensor: g.Tensor, nchw: g.Layout == "nchw", thr: cmp.Or(g.Threshold, 0.5), sigmoid: g.Sigmoid,
		enc: &png.Encoder{CompressionLevel: png.BestSpeed}}
	switch sh := o.Shape; {
	case len(sh) == 3 && sh[0] == 1: // [1,H,W]: one channel
		s.h, s.w, s.c = sh[1], sh[2], 1
	case len(sh) == 4 && sh[0] == 1 && s.nchw:
		s.c, s.h, s.w = sh[1], sh[2], sh[3]
	case len(sh) == 4 && sh[0] == 1:
		s.h, s.w, s.c = sh[1], sh[2], sh[3]
	default:
		return fmt.Errorf("%s: output %d (%s) has shape %v; segmentation takes [1,H,W,C], [1,H,W] or (layout nchw) [1,C,H,W]", field, g.Tensor, o.Name, o.Shape)
	}
	if s.h < 1 || s.w < 1 || s.c < 1 || s.c > 256 {
		return fmt.Errorf("%s: output %d (%s) %v: want a picture of at least 1x1 with 1 to 256 classes", field, g.Tensor, o.Name, o.Shape)
	}
	if s.c == 1 {
		s.thr = threshold(o, s.thr)
	}
	p.seg = s
	return nil
}

func (p *Postprocessor) segment(out []infer.Tensor) (Output, error) {
	s := p.seg
	get, err := p.reader(out, s.tensor)
	if err != nil {
		return Output{}, err
	}
	mask := image.NewGray(image.Rect(0, 0, s.w, s.h))
	counts := make([]int, max(s.c, 2))
	plane := s.h * s.w
	if t := out[s.tensor]; s.c > 1 && !s.nchw && t.DType == infer.Float32 && !p.outputs[s.tensor].Quant.Quantised() {
		// The common case (float32, NHWC) read directly: this loop runs H·W·C times.
		if at := argmaxF32(t.Data, s.c, mask.Pix, counts); at >= 0 {
			return Output{}, nonFinite(fmt.Sprintf("segmentation output %d", s.tensor), at, get(at))
		}
		return p.segResult(mask, counts)
	}
	for i := range plane {
		class := 0
		if s.c == 1 {
			x := get(i)
			if s.sigmoid {
				x = sigmoid(x)
			}
			if !finite(x) {
				return Output{}, nonFinite(fmt.Sprintf("segmentation output %d", s.tensor), i, x)
			}
			if x >= s.thr {
				class = 1
			}
		} else {
			best := 0.0
			for c := range s.c {
				at := i*s.c + c
				if s.nchw {
					at = c*plane + i
				}
				x := get(at)
				if c == 0 || x > best {
					best, class = x, c
				}
				if x != x || x-x != 0 { // NaN or ±Inf (finite, inlined: this loop runs H·W·C times)
					return Output{}, nonFinite(fmt.Sprintf("segmentation output %d", s.tensor), at, x)
				}
			}
		}
		mask.Pix[i] = uint8(class)
		counts[class]++
	}
	return p.segResult(mask, counts)
}

// argmaxF32 writes each pixel's best class of a float32 NHWC map into pix and counts them; it
// returns the index of a NaN or infinite score, or -1.
func argmaxF32(d []byte, c int, pix []uint8, counts []int) int {
	for i := range pix {
		base := i * c * 4
		best, class := math.Float32frombits(binary.LittleEndian.Uint32(d[base:])), 0
		for k := 0; k < c; k++ {
			x := math.Float32frombits(binary.LittleEndian.Uint32(d[base+4*k:]))
			if x-x != 0 { // NaN or ±Inf
				return i*c + k
			}
			if x > best {
				best, class = x, k
			}
		}
		pix[i] = uint8(class)
		counts[class]++
	}
	return -1
}

// segResult encodes the mask and lists the areas.
func (p *Postprocessor) segResult(mask *image.Gray, counts []int) (Output, error) {
	s := p.seg
	plane := s.w * s.h
	var buf bytes.Buffer
	if err := s.enc.Encode(&buf, mask); err != nil {
		return Output{}, fmt.Errorf("segmentation: encode the mask: %w", err)
	}
	var areas []result.ClassArea
	for c, n := range counts {
		if n > 0 {
			areas = append(areas, result.ClassArea{Index: c, Label: p.label(c), Pixels: n, Fraction: float64(n) / float64(plane)})
		}
	}
	slices.SortStableFunc(areas, func(a, b result.ClassArea) int { return cmp.Compare(b.Pixels, a.Pixels) })
	return Output{Segmentation: &result.Segmentation{Width: s.w, Height: s.h, Mask: buf.Bytes(), Areas: areas}}, nil
}
