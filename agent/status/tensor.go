package status

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"

	"github.com/edge-agent/edge-agent/agent/infer"
)

// maxDepth bounds how deeply arrays may nest in a tensor (tensors have a handful of
// dimensions; the bound keeps a hostile body from growing the parser's stacks).
const maxDepth = 8

// errTooMany means a tensor holds more values than its caller allowed.
var errTooMany = errors.New("too many values")

// parseTensor reads a JSON value of nested arrays of numbers (booleans for a bool tensor)
// in row-major order into dtype's little-endian bytes, and returns its shape. Arrays must be
// rectangular, and numbers must fit dtype: integers within range for the integer types,
// finite and within range for float32. At most maxValues values are read (errTooMany).
// where names the value in errors ("instances[0]"); hint is the number of values expected.
func parseTensor(raw []byte, dt infer.DType, maxValues, hint int, where string) ([]int, []byte, error) {
	shape, data, end, err := parseTensorAt(raw, dt, maxValues, hint, where)
	if err != nil {
		return nil, nil, err
	}
	for _, c := range raw[end:] {
		if c != ' ' && c != '\t' && c != '\n' && c != '\r' {
			return nil, nil, fmt.Errorf("%s: unexpected %q after the tensor", where, c)
		}
	}
	return shape, data, nil
}

// parseTensorAt is parseTensor on the value that starts raw, and also returns where the
// value ends: the predict API parses instances in place, without a pass to find their ends.
func parseTensorAt(raw []byte, dt infer.DType, maxValues, hint int, where string) ([]int, []byte, int, error) {
	size := dt.Size()
	if size == 0 || dt == infer.Float16 {
		return nil, nil, 0, fmt.Errorf("%s: the model's input is %s, which the predict API cannot write; send the tensor as {\"b64\": <a .npy file>}", where, dt)
	}
	p := tensorParser{raw: raw, dt: dt, where: where, max: maxValues}
	p.data = make([]byte, 0, min(hint, maxValues)*size)
	for i := range p.dims {
		p.dims[i] = -1
	}
	if err := p.value(0); err != nil {
		return nil, nil, 0, err
	}
	shape := []int{}
	if p.leaf > 0 {
		shape = slices.Clone(p.dims[:p.leaf])
	}
	return shape, p.data, p.pos, nil
}

type tensorParser struct {
	raw   []byte
	pos   int
	dt    infer.DType
	where string
	max   int
	data  []byte
	n     int // values read
	leaf  int // depth of the values; -1 until the first one
	dims  [maxDepth]int
	idx   [maxDepth]int // index within the enclosing array at each depth, for errors
	set   bool
}

func (p *tensorParser) path(depth int) string {
	var b strings.Builder
	b.WriteString(p.where)
	for i := range depth {
		fmt.Fprintf(&b, "[%d]", p.idx[i])
	}
	return b.String()
}

func (p *tensorParser) skipSpace() {
	for p.pos < len(p.raw) {
		switch p.raw[p.pos] {
		case ' ', '\t', '\n', '\r':
			p.pos++
		default:
			return
		}
	}
}

func (p *tensorParser) value(depth int) error {
	p.skipSpace()
	if p.pos >= len(p.raw) {
		return fmt.Errorf("%s: the JSON ends inside the tensor", p.path(depth))
	}
	if p.raw[p.pos] == '[' {
		return p.array(depth)
	}
	if !p.set {
		p.leaf, p.set = depth, true
	} else if depth != p.leaf {
		return fmt.Errorf("%s: a number where the other values are at depth %d: the arrays are ragged (every row must have the same shape)", p.path(depth), p.leaf)
	}
	return p.scalar(depth)
}

func (p *tensorParser) array(depth int) error {
	if depth == maxDepth {
		return fmt.Errorf("%s: arrays nest deeper than %d", p.path(depth), maxDepth)
	}
	if p.set && depth >= p.leaf {
		return fmt.Errorf("%s: an array where the other values are numbers: the arrays are ragged", p.path(depth))
	}
	p.pos++ // '['
	n := 0
	p.skipSpace()
	if p.pos < len(p.raw) && p.raw[p.pos] == ']' {
		p.pos++
	} else {
		for {
			p.idx[depth] = n
			if err := p.value(depth + 1); err != nil {
				return err
			}
			n++
			p.skipSpace()
			if p.pos >= len(p.raw) {
				return fmt.Errorf("%s: the JSON ends inside the tensor", p.path(depth))
			}
			c := p.raw[p.pos]
			p.pos++
			if c == ']' {
				break
			}
			if c != ',' {
				return fmt.Errorf("%s: unexpected %q in an array", p.path(depth), c)
			}
		}
	}
	if n == 0 && !p.set {
		p.leaf, p.set = depth+1, true // [] holds no values: its depth is where they would be
	}
	switch {
	case p.dims[depth] < 0:
		p.dims[depth] = n
	case p.dims[depth] != n:
		return fmt.Errorf("%s: has %d elements where an earlier array at the same depth has %d: the arrays are ragged", p.path(depth), n, p.dims[depth])
	}
	return nil
}

func (p *tensorParser) scalar(depth int) error {
	if p.n == p.max {
		return errTooMany
	}
	start := p.pos
	for p.pos < len(p.raw) {
		c := p.raw[p.pos]
		if c == ',' || c == ']' || c == '}' || c == ' ' || c == '\t' || c == '\n' || c == '\r' {
			break
		}
		p.pos++
	}
	tok := p.raw[start:p.pos]
	if len(tok) == 0 {
		return fmt.Errorf("%s: a value is missing", p.path(depth))
	}
	size := p.dt.Size()
	off := len(p.data)
	p.data = append(p.data, make([]byte, size)...)
	d := p.data[off:]
	p.n++
	bad := func(why string) error {
		return fmt.Errorf("%s: %s %s (the model's input is %s)", p.path(depth), shortTok(tok), why, p.dt)
	}
	if p.dt == infer.Bool {
		switch string(tok) {
		case "true", "1":
			d[0] = 1
		case "false", "0":
			d[0] = 0
		default:
			return bad("is not true, false, 0 or 1")
		}
		return nil
	}
	if !validNumber(tok) {
		return bad("is not a number")
	}
	switch p.dt {
	case infer.Int64:
		v, err := strconv.ParseInt(string(tok), 10, 64)
		if err != nil {
			f, ferr := strconv.ParseFloat(string(tok), 64)
			if ferr != nil || f != math.Trunc(f) || f < math.MinInt64 || f >= math.MaxInt64 {
				return bad("is not an int64")
			}
			v = int64(f)
		}
		binary.LittleEndian.PutUint64(d, uint64(v))
		return nil
	}
	v, ok := smallInt(tok)
	if p.dt == infer.Float32 {
		// Integers up to 2²⁴ are exact in a float32; others are parsed at float32
		// precision, since rounding through float64 first could land a value on the other
		// side of a float32 rounding boundary.
		if !ok || math.Abs(v) > 1<<24 {
			var err error
			if v, err = strconv.ParseFloat(string(tok), 32); err != nil {
				return bad("is outside the float32 range")
			}
		}
		binary.LittleEndian.PutUint32(d, math.Float32bits(float32(v)))
		return nil
	}
	if !ok {
		var err error
		if v, err = strconv.ParseFloat(string(tok), 64); err != nil || math.IsInf(v, 0) || math.IsNaN(v) {
			return bad("is not a finite number")
		}
	}
	switch p.dt {
	case infer.Float64:
		binary.LittleEndian.PutUint64(d, math.Float64bits(v))
	default:
		lo, hi := intRange(p.dt)
		if v != math.Trunc(v) {
			return bad("is not an integer")
		}
		if v < lo || v > hi {
			return bad(fmt.Sprintf("is outside %g..%g", lo, hi))
		}
		switch p.dt {
		case infer.UInt8, infer.Int8:
			d[0] = byte(int64(v))
		case infer.Int16:
			binary.LittleEndian.PutUint16(d, uint16(int64(v)))
		case infer.Int32:
			binary.LittleEndian.PutUint32(d, uint32(int64(v)))
		}
	}
	return nil
}

// smallInt parses a plain integer token of up to 15 digits (exact in a float64) without
// allocating: pictures and one-hot vectors are mostly such numbers.
func smallInt(tok []byte) (float64, bool) {
	neg := tok[0] == '-'
	if neg {
		tok = tok[1:]
	}
	if len(tok) == 0 || len(tok) > 15 || (len(tok) > 1 && tok[0] == '0') {
		return 0, false
	}
	var n int64
	for _, c := range tok {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	if neg {
		return -float64(n), true
	}
	return float64(n), true
}

func intRange(dt infer.DType) (lo, hi float64) {
	switch dt {
	case infer.UInt8:
		return 0, math.MaxUint8
	case infer.Int8:
		return math.MinInt8, math.MaxInt8
	case infer.Int16:
		return math.MinInt16, math.MaxInt16
	}
	return math.MinInt32, math.MaxInt32
}

func shortTok(tok []byte) string {
	if len(tok) > 24 {
		return string(tok[:24]) + "…"
	}
	return string(tok)
}

// instanceShape is the shape of one instance of an input: the input's shape without its
// leading batch dimension of 1.
func instanceShape(in infer.TensorInfo) []int {
	if len(in.Shape) > 1 && in.Shape[0] == 1 {
		return in.Shape[1:]
	}
	return in.Shape
}
