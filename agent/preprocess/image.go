package preprocess

import (
	"errors"
	"fmt"
	"image"
	"image/color"
	"math"
	"strings"
	"sync"

	"github.com/edge-agent/edge-agent/agent/infer"
	"github.com/edge-agent/edge-agent/models/spec"
)

// errNotImage marks an input tensor whose shape is no image layout.
var errNotImage = errors.New("is not an image layout")

// imageLayout reads H, W and channels from an input shape. Layouts (NHWC, batch 1):
//
//	[1,H,W,C]  C is 1 (grey) or 3 (colour)
//	[1,H,W]    grey
//	[1,N]      grey, N a perfect square: H = W = √N (MNIST-style models flatten 28×28 to 784)
func imageLayout(shape []int) (h, w, c int, ok bool) {
	switch {
	case len(shape) == 4 && shape[0] == 1 && (shape[3] == 1 || shape[3] == 3):
		return shape[1], shape[2], shape[3], true
	case len(shape) == 3 && shape[0] == 1:
		return shape[1], shape[2], 1, true
	case len(shape) == 2 && shape[0] == 1:
		r := int(math.Sqrt(float64(shape[1])))
		for r*r > shape[1] {
			r--
		}
		for (r+1)*(r+1) <= shape[1] {
			r++
		}
		if r > 0 && r*r == shape[1] {
			return r, r, 1, true
		}
	}
	return 0, 0, 0, false
}

// colour modes of the image stage.
const (
	colourRGB = iota
	colourBGR
	colourGrey
)

// imageStage resizes a picture to input 0's H×W, picks colour, normalises and quantises.
//
// Pixels are read as non-premultiplied 8-bit RGB: alpha is ignored (a translucent pixel
// keeps its straight colour; *image.RGBA is un-premultiplied). Grey is the plain mean of
// R, G and B, not a luma weighting. Only the source pixels the output needs are read, each
// once per use of its row; the tap tables for a source size are built once and cached.
//
// A *image.YCbCr (what image/jpeg returns) is resampled in Y'CbCr and converted to RGB per
// output pixel, not per source pixel: the conversion is affine, so this equals converting
// first up to the 8-bit rounding and the clamping of out-of-gamut source pixels (within
// about one level), and it makes a 1920×1280 JPEG → 300×300 resize about twice as fast.
type imageStage struct {
	h, w, c int
	method  string
	colour  int
	// Per output channel, the affine map from the resampled 0..255 channel value (for grey,
	// the sum R+G+B) to the value stored before rounding: it folds grey's 1/3, Invert,
	// Mean/Std and the tensor's quantisation into one multiply-add.
	a, b [3]float64
	enc  encoder

	mu    sync.Mutex
	plans [4]*plan // most recently built tables, by source size
	next  int
	pool  sync.Pool // *scratch
}

func newImageStage(im spec.Image, in infer.TensorInfo) (*imageStage, error) {
	h, w, c, ok := imageLayout(in.Shape)
	if !ok {
		return nil, fmt.Errorf("input.image: input %d (%s) shape %v %w: want [1,H,W,C] with C 1 or 3, [1,H,W], or [1,N] with N = H×W a square; for other models set input.kind to vector or tensor", in.Index, in.Name, in.Shape, errNotImage)
	}
	enc, err := newEncoder(in)
	if err != nil {
		return nil, fmt.Errorf("input.image: %w", err)
	}
	s := &imageStage{h: h, w: w, c: c, method: im.Resize, enc: enc}
	if s.method == "" {
		s.method = spec.ResizeBilinear
	}
	switch strings.ToLower(im.Color) {
	case "":
		s.colour = colourRGB
		if c == 1 {
			s.colour = colourGrey
		}
	case "rgb", "bgr":
		if c != 3 {
			return nil, fmt.Errorf("input.image.color: %q needs a 3-channel input but input %d (%s) %v has 1 channel; use grey", im.Color, in.Index, in.Name, in.Shape)
		}
		s.colour = colourRGB
		if strings.EqualFold(im.Color, "bgr") {
			s.colour = colourBGR
		}
	case "grey", "gray":
		s.colour = colourGrey // replicated into every channel of a 3-channel input
	}
	for _, st := range []struct {
		name string
		v    []float64
	}{{"mean", im.Mean}, {"std", im.Std}} {
		if len(st.v) > 1 && len(st.v) != c {
			return nil, fmt.Errorf("input.image.%s: has %d values for a %d-channel input; give one value or %d", st.name, len(st.v), c, c)
		}
		for i, x := range st.v {
			if math.IsNaN(x) || math.IsInf(x, 0) {
				return nil, fmt.Errorf("input.image.%s[%d]: %v is not a finite number", st.name, i, x)
			}
		}
	}
	mean := broadcast(im.Mean, c, 0)
	std := broadcast(im.Std, c, 1)
	if len(im.Mean) == 0 && len(im.Std) == 0 && enc.quantised() && (in.DType == infer.UInt8 || in.DType == infer.Int8) {
		// Nothing declared and a quantised 8-bit input: its own scale and zero point say
		// what real range it takes, and 8-bit image models are fed the pixel bytes as they
		// are (uint8 q = p, int8 q = p-128). Choose mean and std that do exactly that.
		shift := 0.0
		if in.DType == infer.Int8 {
			shift = 128
		}
		for ch := range c {
			mean[ch] = float64(enc.q.ZeroPoint) + shift
			std[ch] = 1 / float64(enc.q.Scale)
		}
	}
	for ch := 0; ch < c; ch++ {
		// p' = sign*p + off (Invert: 255 - p); v = (p' - mean)/std; q = v/scale + zp.
		sign, off := 1.0, 0.0
		if im.Invert {
			sign, off = -1, 255
		}
		a := sign / std[ch]
		b := (off - mean[ch]) / std[ch]
		if enc.quantised() {
			scale := float64(enc.q.Scale)
			a /= scale
			b = b/scale + float64(enc.q.ZeroPoint)
		}
		if s.colour == colourGrey {
			a /= 3
		}
		s.a[ch], s.b[ch] = a, b
	}
	return s, nil
}

// axis holds, for each output coordinate o, k source taps idx[o*k:(o+1)*k] with weights
// summing to 1. Outputs with fewer real taps are padded with weight-0 copies of their last
// tap, so every output has the same count and the inner loops have no bounds to look up.
type axis struct {
	k   int
	idx []int32
	w   []float64
}

// buildAxis computes the taps that map n source pixels to m output pixels.
//
//	nearest   floor(o·n/m), the convention of TensorFlow's resize_nearest_neighbor and
//	          OpenCV's INTER_NEAREST (it reproduces the testdata README's MNIST result)
//	bilinear  half-pixel centres: s = (o+½)·n/m − ½, clamped to [0, n−1]; the two
//	          neighbours of s weighted by distance (no antialiasing when shrinking)
//	area      box filter: every source pixel the output pixel covers, weighted by the
//	          exact covered length (fractions at the edges); enlarging gives nearest
//	          with blended seams
func buildAxis(n, m int, method string) axis {
	type tap struct {
		i int32
		w float64
	}
	taps := make([][]tap, m)
	k := 1
	for o := range taps {
		var t []tap
		add := func(i int, w float64) {
			if w > 0 {
				t = append(t, tap{int32(i), w})
			}
		}
		switch method {
		case spec.ResizeNearest:
			add(int((int64(o)*int64(n))/int64(m)), 1)
		case spec.ResizeArea:
			lo, hi := int64(o)*int64(n), int64(o+1)*int64(n) // in units of 1/m source pixel
			for i := lo / int64(m); i*int64(m) < hi; i++ {
				ov := min(hi, (i+1)*int64(m)) - max(lo, i*int64(m))
				add(int(i), float64(ov)/float64(n))
			}
		default: // bilinear
			s := (float64(o)+0.5)*float64(n)/float64(m) - 0.5
			s = max(0, min(s, float64(n-1)))
			i0 := int(s)
			f := s - float64(i0)
			if i0 >= n-1 {
				i0, f = n-1, 0
			}
			add(i0, 1-f)
			add(i0+1, f)
		}
		taps[o] = t
		k = max(k, len(t))
	}
	ax := axis{k: k, idx: make([]int32, m*k), w: make([]float64, m*k)}
	for o, t := range taps {
		for j := 0; j < k; j++ {
			if j < len(t) {
				ax.idx[o*k+j], ax.w[o*k+j] = t[j].i, t[j].w
			} else {
				ax.idx[o*k+j] = t[len(t)-1].i
			}
		}
	}
	return ax
}

// plan is the resize tables for one source size.
type plan struct {
	srcW, srcH int
	cols       []int32 // source columns the output needs, ascending
	x          axis    // taps index cols (compact), not source columns
	y          axis    // taps are source rows
}

func newPlan(srcW, srcH, dstW, dstH int, method string) *plan {
	p := &plan{srcW: srcW, srcH: srcH, x: buildAxis(srcW, dstW, method), y: buildAxis(srcH, dstH, method)}
	compact := make([]int32, srcW)
	for i := range compact {
		compact[i] = -1
	}
	for _, i := range p.x.idx {
		compact[i] = 0
	}
	for i, v := range compact {
		if v == 0 {
			compact[i] = int32(len(p.cols))
			p.cols = append(p.cols, int32(i))
		}
	}
	for t, i := range p.x.idx {
		p.x.idx[t] = compact[i]
	}
	return p
}

func (s *imageStage) plan(srcW, srcH int) *plan {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, p := range s.plans {
		if p != nil && p.srcW == srcW && p.srcH == srcH {
			return p
		}
	}
	p := newPlan(srcW, srcH, s.w, s.h, s.method)
	s.plans[s.next] = p
	s.next = (s.next + 1) % len(s.plans)
	return p
}

// scratch is per-call working memory, pooled per image stage.
type scratch struct {
	rows []float64 // converted source rows (needed columns); direct path: row r in slot r%2
	held []int     // source row held by each slot, -1 for none
	acc  []float64 // weighted sum of source rows (area)
	work []float64 // one resampled output row, working channels
	line []float64 // one output row, tensor channels, ready to store
	cx   []int32   // chroma column offsets of the needed columns (YCbCr)
}

func grow[T any](b []T, n int) []T {
	if cap(b) < n {
		return make([]T, n)
	}
	return b[:n]
}

// Working channels: what a converted source row holds per pixel.
const (
	workRGB = iota // R, G, B
	workSum        // R+G+B (grey output; grey is linear, so summing first is exact)
	workYCC        // Y', Cb, Cr of a YCbCr source
)

// apply resamples img into data: convert the needed source rows into working channels,
// resample each output row (nearest and bilinear, at most 2×2 taps, directly; area rows
// first, then columns), map working channels to the tensor's channels with the affine
// normalisation, and store in the tensor's dtype.
func (s *imageStage) apply(img image.Image, data []byte) (err error) {
	src, err := newSource(img)
	if err != nil {
		return err
	}
	if src.kind == kindGeneric {
		defer func() {
			if r := recover(); r != nil {
				err = fmt.Errorf("%w: reading the %T image failed: %v", ErrBadFrame, img, r)
			}
		}()
	}
	p := s.plan(src.w, src.h)
	sc, _ := s.pool.Get().(*scratch)
	if sc == nil {
		sc = new(scratch)
	}
	defer s.pool.Put(sc)
	mode, nch := workRGB, 3
	switch {
	case src.kind == kindYCbCr:
		mode = workYCC
	case s.colour == colourGrey:
		mode, nch = workSum, 1
	}
	nc, kx, ky := len(p.cols), p.x.k, p.y.k
	rs := nch * nc // values per converted row
	// Nearest and bilinear (and enlarging area) have at most 2×2 taps: keep the two rows an
	// output row needs in slots r%2 and resample each output pixel directly. Shrinking area
	// accumulates its weighted rows straight into a vertical sum, so memory stays one row
	// however many source rows an output row covers.
	direct := kx <= 2 && ky <= 2
	if direct {
		sc.rows = grow(sc.rows, ky*rs)
	} else {
		sc.rows = grow(sc.rows, rs) // for addRow's slower kinds
		sc.acc = grow(sc.acc, rs)
	}
	sc.held = grow(sc.held, ky)
	sc.work = grow(sc.work, s.w*nch)
	sc.line = grow(sc.line, s.w*s.c)
	rows, held, work, line := sc.rows, sc.held, sc.work, sc.line
	for i := range held {
		held[i] = -1
	}
	if src.kind == kindYCbCr {
		sc.cx = grow(sc.cx, nc)
		src.chromaCols(p.cols, sc.cx)
	}
	grey := mode == workSum
	for oy := 0; oy < s.h; oy++ {
		yi, yw := p.y.idx[oy*ky:(oy+1)*ky], p.y.w[oy*ky:(oy+1)*ky]
		if direct {
			for _, r := range yi {
				if slot := int(r) % ky; held[slot] != int(r) {
					src.readRow(int(r), p.cols, sc.cx, rows[slot*rs:(slot+1)*rs], grey)
					held[slot] = int(r)
				}
			}
			if nch == 1 {
				line2grey(work, rows, rs, yi, yw, p.x)
			} else {
				line2(work, rows, rs, yi, yw, p.x)
			}
		} else {
			clear(sc.acc)
			for j, r := range yi {
				if yw[j] != 0 { // 0: padding
					src.addRow(int(r), p.cols, sc.cx, sc.acc, rows, yw[j], grey)
				}
			}
			columns(work, sc.acc, p.x, nch)
		}
		s.finish(line, work, mode)
		s.enc.store(data, oy*s.w*s.c, line)
	}
	return nil
}

// finish maps one resampled row from working channels to the tensor's channels.
func (s *imageStage) finish(line, work []float64, mode int) {
	a, b := s.a, s.b
	if mode == workSum {
		if s.c == 1 {
			for i, v := range work {
				line[i] = v*a[0] + b[0]
			}
			return
		}
		for i, v := range work {
			o := line[3*i : 3*i+3]
			o[0], o[1], o[2] = v*a[0]+b[0], v*a[1]+b[1], v*a[2]+b[2]
		}
		return
	}
	for i := range s.w {
		px := work[3*i : 3*i+3]
		r, g, bl := px[0], px[1], px[2]
		if mode == workYCC {
			// JFIF Y'CbCr → RGB, the constants of color.YCbCrToRGB, clamped to 0..255.
			y, cb, cr := r, g-128, bl-128
			r = clamp255(y + 1.40200*cr)
			g = clamp255(y - 0.34414*cb - 0.71414*cr)
			bl = clamp255(y + 1.77200*cb)
		}
		switch {
		case s.colour == colourGrey:
			v := r + g + bl
			if s.c == 1 {
				line[i] = v*a[0] + b[0]
			} else {
				o := line[3*i : 3*i+3]
				o[0], o[1], o[2] = v*a[0]+b[0], v*a[1]+b[1], v*a[2]+b[2]
			}
		case s.colour == colourBGR:
			o := line[3*i : 3*i+3]
			o[0], o[1], o[2] = bl*a[0]+b[0], g*a[1]+b[1], r*a[2]+b[2]
		default:
			o := line[3*i : 3*i+3]
			o[0], o[1], o[2] = r*a[0]+b[0], g*a[1]+b[1], bl*a[2]+b[2]
		}
	}
}

// clamp255 limits v to 0..255 (plain comparisons: the min and max builtins handle NaN and
// signed zeros, which costs more here than the whole conversion).
func clamp255(v float64) float64 {
	if v < 0 {
		return 0
	}
	if v > 255 {
		return 255
	}
	return v
}

// columns resamples a vertically resampled row (nch values per needed column)
// horizontally into work.
func columns(work, acc []float64, x axis, nch int) {
	kx := x.k
	n := len(x.idx) / kx
	if nch == 1 {
		for ox := range n {
			ti, tw := x.idx[ox*kx:(ox+1)*kx], x.w[ox*kx:(ox+1)*kx]
			var v float64
			for i, c := range ti {
				v += tw[i] * acc[c]
			}
			work[ox] = v
		}
		return
	}
	for ox := range n {
		ti, tw := x.idx[ox*kx:(ox+1)*kx], x.w[ox*kx:(ox+1)*kx]
		var r, g, b float64
		for i, c := range ti {
			px := acc[3*c : 3*c+3]
			w := tw[i]
			r += w * px[0]
			g += w * px[1]
			b += w * px[2]
		}
		o := work[3*ox : 3*ox+3]
		o[0], o[1], o[2] = r, g, b
	}
}

// line2 resamples one output row of 3 working channels from at most 2×2 taps (nearest,
// bilinear), unrolled: taps beyond the real ones repeat a row or column with weight 0.
func line2(work, rows []float64, rs int, yi []int32, yw []float64, x axis) {
	ky, kx := len(yi), x.k
	r0 := rows[(int(yi[0])%ky)*rs:][:rs]
	r1 := rows[(int(yi[ky-1])%ky)*rs:][:rs]
	wy0, wy1 := yw[0], yw[ky-1]
	if ky == 1 {
		wy1 = 0
	}
	n := len(x.idx) / kx
	for ox := range n {
		c0, c1 := 3*int(x.idx[ox*kx]), 3*int(x.idx[ox*kx+kx-1])
		wx0, wx1 := x.w[ox*kx], x.w[ox*kx+kx-1]
		if kx == 1 {
			wx1 = 0
		}
		p00, p01 := r0[c0:c0+3], r0[c1:c1+3]
		p10, p11 := r1[c0:c0+3], r1[c1:c1+3]
		w00, w01, w10, w11 := wy0*wx0, wy0*wx1, wy1*wx0, wy1*wx1
		o := work[3*ox : 3*ox+3]
		o[0] = w00*p00[0] + w01*p01[0] + w10*p10[0] + w11*p11[0]
		o[1] = w00*p00[1] + w01*p01[1] + w10*p10[1] + w11*p11[1]
		o[2] = w00*p00[2] + w01*p01[2] + w10*p10[2] + w11*p11[2]
	}
}

// line2grey is line2 for one working channel.
func line2grey(work, rows []float64, rs int, yi []int32, yw []float64, x axis) {
	ky, kx := len(yi), x.k
	r0 := rows[(int(yi[0])%ky)*rs:][:rs]
	r1 := rows[(int(yi[ky-1])%ky)*rs:][:rs]
	wy0, wy1 := yw[0], yw[ky-1]
	if ky == 1 {
		wy1 = 0
	}
	n := len(x.idx) / kx
	for ox := range n {
		c0, c1 := int(x.idx[ox*kx]), int(x.idx[ox*kx+kx-1])
		wx0, wx1 := x.w[ox*kx], x.w[ox*kx+kx-1]
		if kx == 1 {
			wx1 = 0
		}
		work[ox] = wy0*(wx0*r0[c0]+wx1*r0[c1]) + wy1*(wx0*r1[c0]+wx1*r1[c1])
	}
}

// Source pixel access, with direct Pix reads for the common decoder outputs.
const (
	kindGeneric = iota
	kindRGBA
	kindNRGBA
	kindYCbCr
	kindGray
)

type source struct {
	kind       int
	w, h       int
	minX, minY int
	pix        []uint8 // RGBA, NRGBA, Gray
	stride     int
	ycc        *image.YCbCr
	hdiv, vdiv int // YCbCr chroma subsampling
	img        image.Image
}

// newSource checks img and its pixel buffers so that reading never goes out of bounds.
func newSource(img image.Image) (src source, err error) {
	var r image.Rectangle
	switch m := img.(type) {
	case *image.RGBA:
		if m == nil {
			return src, fmt.Errorf("%w: image is a nil *image.RGBA", ErrBadFrame)
		}
		src = source{kind: kindRGBA, pix: m.Pix, stride: m.Stride}
		r = m.Rect
	case *image.NRGBA:
		if m == nil {
			return src, fmt.Errorf("%w: image is a nil *image.NRGBA", ErrBadFrame)
		}
		src = source{kind: kindNRGBA, pix: m.Pix, stride: m.Stride}
		r = m.Rect
	case *image.Gray:
		if m == nil {
			return src, fmt.Errorf("%w: image is a nil *image.Gray", ErrBadFrame)
		}
		src = source{kind: kindGray, pix: m.Pix, stride: m.Stride}
		r = m.Rect
	case *image.YCbCr:
		if m == nil {
			return src, fmt.Errorf("%w: image is a nil *image.YCbCr", ErrBadFrame)
		}
		src = source{kind: kindYCbCr, ycc: m}
		r = m.Rect
		switch m.SubsampleRatio {
		case image.YCbCrSubsampleRatio444:
			src.hdiv, src.vdiv = 1, 1
		case image.YCbCrSubsampleRatio422:
			src.hdiv, src.vdiv = 2, 1
		case image.YCbCrSubsampleRatio420:
			src.hdiv, src.vdiv = 2, 2
		case image.YCbCrSubsampleRatio440:
			src.hdiv, src.vdiv = 1, 2
		case image.YCbCrSubsampleRatio411:
			src.hdiv, src.vdiv = 4, 1
		case image.YCbCrSubsampleRatio410:
			src.hdiv, src.vdiv = 4, 2
		default:
			src = source{kind: kindGeneric}
		}
		if r.Min.X < 0 || r.Min.Y < 0 {
			src = source{kind: kindGeneric} // chroma rounding differs below 0; let At decide
		}
	}
	if src.kind == kindGeneric {
		defer func() {
			if p := recover(); p != nil {
				err = fmt.Errorf("%w: the %T image failed: %v", ErrBadFrame, img, p)
			}
		}()
		src = source{kind: kindGeneric, img: img}
		r = img.Bounds()
	}
	src.w, src.h, src.minX, src.minY = r.Dx(), r.Dy(), r.Min.X, r.Min.Y
	if r.Empty() {
		return src, fmt.Errorf("%w: image is empty (%dx%d)", ErrBadFrame, max(src.w, 0), max(src.h, 0))
	}
	const maxSide = 1 << 16
	if src.w > maxSide || src.h > maxSide {
		return src, fmt.Errorf("%w: image is %dx%d, larger than %d pixels a side", ErrBadFrame, src.w, src.h, maxSide)
	}
	bad := false
	switch src.kind {
	case kindRGBA, kindNRGBA:
		bad = !fits(len(src.pix), src.stride, 4*src.w, src.h)
	case kindGray:
		bad = !fits(len(src.pix), src.stride, src.w, src.h)
	case kindYCbCr:
		m := src.ycc
		// Chroma of the last pixel, as (*image.YCbCr).COffset computes it.
		cw := (r.Max.X-1)/src.hdiv - r.Min.X/src.hdiv + 1
		ch := (r.Max.Y-1)/src.vdiv - r.Min.Y/src.vdiv + 1
		bad = !fits(len(m.Y), m.YStride, src.w, src.h) ||
			!fits(len(m.Cb), m.CStride, cw, ch) || !fits(len(m.Cr), m.CStride, cw, ch)
	}
	if bad {
		return src, fmt.Errorf("%w: %T pixel buffer is smaller than its %dx%d bounds say", ErrBadFrame, img, src.w, src.h)
	}
	return src, nil
}

// fits reports whether rows of rowBytes at stride fit in n bytes.
func fits(n, stride, rowBytes, rows int) bool {
	if stride < 0 || (rows > 1 && stride < rowBytes) {
		return false
	}
	return (rows-1)*stride+rowBytes <= n
}

// chromaCols precomputes the chroma offset of each needed column (YCbCr).
func (s *source) chromaCols(cols []int32, cx []int32) {
	base := s.minX / s.hdiv
	for k, x := range cols {
		cx[k] = int32((s.minX+int(x))/s.hdiv - base)
	}
}

// readRow converts source row y (relative to the bounds) at cols into dst: R, G, B per
// pixel, or their sum when grey is set; a YCbCr source gives Y', Cb, Cr (grey is not used:
// the conversion happens per output pixel, in finish).
func (s *source) readRow(y int, cols, cx []int32, dst []float64, grey bool) {
	switch s.kind {
	case kindNRGBA:
		line := s.pix[y*s.stride : y*s.stride+4*s.w]
		if grey {
			dst := dst[:len(cols)]
			for k, x := range cols {
				p := line[4*x : 4*x+3]
				dst[k] = float64(int(p[0]) + int(p[1]) + int(p[2]))
			}
			return
		}
		for k, x := range cols {
			p := line[4*x : 4*x+3]
			d := dst[3*k : 3*k+3]
			d[0], d[1], d[2] = float64(p[0]), float64(p[1]), float64(p[2])
		}
	case kindRGBA:
		line := s.pix[y*s.stride : y*s.stride+4*s.w]
		for k, x := range cols {
			p := line[4*x : 4*x+4]
			r, g, b := p[0], p[1], p[2]
			switch a := p[3]; a {
			case 0xff:
			case 0:
				r, g, b = 0, 0, 0
			default:
				r, g, b = unpremul(r, a), unpremul(g, a), unpremul(b, a)
			}
			put(dst, k, r, g, b, grey)
		}
	case kindGray:
		line := s.pix[y*s.stride : y*s.stride+s.w]
		if grey {
			dst := dst[:len(cols)]
			for k, x := range cols {
				dst[k] = 3 * float64(line[x])
			}
			return
		}
		for k, x := range cols {
			v := float64(line[x])
			d := dst[3*k : 3*k+3]
			d[0], d[1], d[2] = v, v, v
		}
	case kindYCbCr:
		m := s.ycc
		ay := s.minY + y
		yl := m.Y[y*m.YStride : y*m.YStride+s.w]
		co := (ay/s.vdiv - s.minY/s.vdiv) * m.CStride
		cb, cr := m.Cb[co:], m.Cr[co:]
		for k, x := range cols {
			c := cx[k]
			d := dst[3*k : 3*k+3]
			d[0], d[1], d[2] = float64(yl[x]), float64(cb[c]), float64(cr[c])
		}
	default:
		for k, x := range cols {
			c := color.NRGBAModel.Convert(s.img.At(s.minX+int(x), s.minY+y)).(color.NRGBA)
			put(dst, k, c.R, c.G, c.B, grey)
		}
	}
}

// put writes one pixel of a converted row: R, G, B, or for grey their sum.
func put(dst []float64, k int, r, g, b uint8, grey bool) {
	if grey {
		dst[k] = float64(int(r) + int(g) + int(b))
		return
	}
	d := dst[3*k : 3*k+3]
	d[0], d[1], d[2] = float64(r), float64(g), float64(b)
}

// addRow adds w times source row y, converted as readRow does, to acc. The common decoder
// outputs are converted and accumulated in one pass; others go through readRow into tmp.
func (s *source) addRow(y int, cols, cx []int32, acc, tmp []float64, w float64, grey bool) {
	switch {
	case s.kind == kindGray && grey:
		line := s.pix[y*s.stride : y*s.stride+s.w]
		acc := acc[:len(cols)]
		w3 := 3 * w
		for k, x := range cols {
			acc[k] += w3 * float64(line[x])
		}
	case s.kind == kindNRGBA && grey:
		line := s.pix[y*s.stride : y*s.stride+4*s.w]
		acc := acc[:len(cols)]
		if n := len(cols); n > 0 && int(cols[n-1]-cols[0]) == n-1 {
			// Every column in a run (area shrinks always need them all): walk the pixels.
			px := line[4*int(cols[0]) : 4*(int(cols[0])+n)]
			for k := range acc {
				p := px[4*k : 4*k+4 : 4*k+4]
				acc[k] += w * float64(int(p[0])+int(p[1])+int(p[2]))
			}
			return
		}
		for k, x := range cols {
			p := line[4*x : 4*x+3]
			acc[k] += w * float64(int(p[0])+int(p[1])+int(p[2]))
		}
	case s.kind == kindNRGBA:
		line := s.pix[y*s.stride : y*s.stride+4*s.w]
		for k, x := range cols {
			p := line[4*x : 4*x+3]
			d := acc[3*k : 3*k+3]
			d[0] += w * float64(p[0])
			d[1] += w * float64(p[1])
			d[2] += w * float64(p[2])
		}
	default:
		tmp = tmp[:len(acc)]
		s.readRow(y, cols, cx, tmp, grey)
		for k, v := range tmp {
			acc[k] += w * v
		}
	}
}

// unpremul undoes alpha premultiplication of one channel as color.NRGBAModel does.
func unpremul(v, a uint8) uint8 {
	if v >= a {
		return 0xff
	}
	return uint8((uint32(v) * 0xffff / uint32(a)) >> 8)
}
