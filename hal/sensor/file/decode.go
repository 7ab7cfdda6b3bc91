package file

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"image/jpeg"
	"image/png"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/edge-agent/edge-agent/hal/sensor"
)

var (
	pngMagic  = []byte("\x89PNG\r\n\x1a\n")
	jpegMagic = []byte{0xFF, 0xD8, 0xFF}
	npyMagic  = []byte("\x93NUMPY")
)

// read loads and decodes one file into a frame whose Ref is its path.
func (s *source) read(path string) (sensor.Frame, error) {
	fail := func(err error) (sensor.Frame, error) {
		return sensor.Frame{}, fmt.Errorf("source %q: file %s: %w", s.name, path, err)
	}
	f, err := os.Open(path)
	if err != nil {
		return fail(err)
	}
	defer f.Close()
	if st, err := f.Stat(); err == nil && st.Size() > MaxFileBytes {
		return fail(fmt.Errorf("%d bytes is over the %d MiB limit for one input file", st.Size(), MaxFileBytes>>20))
	}
	data, err := io.ReadAll(io.LimitReader(f, MaxFileBytes+1)) // the file may grow after Stat
	if err != nil {
		return fail(err)
	}
	if len(data) > MaxFileBytes {
		return fail(fmt.Errorf("over the %d MiB limit for one input file", MaxFileBytes>>20))
	}
	fr, err := s.decode(path, data)
	if err != nil {
		return fail(err)
	}
	fr.Ref = path
	return fr, nil
}

func (s *source) decode(path string, data []byte) (sensor.Frame, error) {
	return Decode(path, data, s.cfg)
}

// Decode turns one file's bytes into a frame exactly as the file kind does (the predict
// command uses it). It picks the format by extension for tensors (raw bytes may start with
// anything; cfg gives their dtype and shape) and by content for pictures (a .jpg that is
// really a PNG still works).
func Decode(path string, data []byte, cfg sensor.FileSpec) (sensor.Frame, error) {
	ext := strings.ToLower(filepath.Ext(path))
	switch {
	case ext == ".raw" || ext == ".bin":
		raw, err := rawTensor(data, cfg.DType, cfg.Shape)
		return sensor.Frame{Tensor: raw}, err
	case ext == ".npy" || bytes.HasPrefix(data, npyMagic):
		raw, err := ParseNPY(data)
		return sensor.Frame{Tensor: raw}, err
	case bytes.HasPrefix(data, pngMagic):
		img, err := png.Decode(bytes.NewReader(data))
		if err != nil {
			return sensor.Frame{}, fmt.Errorf("decode PNG: %w", err)
		}
		return sensor.Frame{Image: img}, nil // kept as decoded (*image.Gray, *image.NRGBA...): preprocess converts
	case bytes.HasPrefix(data, jpegMagic):
		img, err := jpeg.Decode(bytes.NewReader(data))
		if err != nil {
			return sensor.Frame{}, fmt.Errorf("decode JPEG: %w", err)
		}
		return sensor.Frame{Image: img}, nil
	}
	return sensor.Frame{}, fmt.Errorf("not a PNG, JPEG or .npy file (starts with % x)", data[:min(len(data), 8)])
}

func rawTensor(data []byte, dtype string, shape []int) (*sensor.Raw, error) {
	if dtype == "" {
		return nil, errors.New("raw tensor needs file.dtype and file.shape")
	}
	want := sensor.Elements(shape) * sensor.DTypeSize(dtype)
	if len(data) != want {
		return nil, fmt.Errorf("raw tensor is %d bytes; shape %v of %s needs %d", len(data), shape, dtype, want)
	}
	return &sensor.Raw{DType: dtype, Shape: append([]int(nil), shape...), Data: data}, nil
}

// npyTypes maps NumPy type codes (without byte order) to dtype names.
var npyTypes = map[string]string{
	"f2": "float16", "f4": "float32", "f8": "float64",
	"u1": "uint8", "i1": "int8", "i2": "int16", "i4": "int32", "i8": "int64", "b1": "bool",
}

// ParseNPY reads a NumPy .npy file (format versions 1, 2 and 3) holding a C-ordered,
// little-endian array of a numeric type. The returned Raw's Data aliases data.
func ParseNPY(data []byte) (*sensor.Raw, error) {
	if len(data) < 10 || !bytes.HasPrefix(data, npyMagic) {
		return nil, errors.New("not a .npy file (no \\x93NUMPY magic)")
	}
	var hlen, off int
	switch major := data[6]; major {
	case 1:
		hlen, off = int(binary.LittleEndian.Uint16(data[8:])), 10
	case 2, 3:
		if len(data) < 12 {
			return nil, errors.New(".npy header truncated")
		}
		hlen, off = int(binary.LittleEndian.Uint32(data[8:])), 12
	default:
		return nil, fmt.Errorf(".npy format version %d.%d is not supported (1, 2 or 3)", major, data[7])
	}
	if hlen > len(data)-off {
		return nil, fmt.Errorf(".npy header of %d bytes runs past the end of the file", hlen)
	}
	p := &pyParser{s: string(data[off : off+hlen])}
	v, err := p.value()
	if err != nil {
		return nil, fmt.Errorf(".npy header: %w", err)
	}
	hdr, ok := v.(map[string]any)
	if !ok {
		return nil, errors.New(".npy header is not a dict")
	}
	descr, ok := hdr["descr"].(string)
	if !ok {
		return nil, errors.New(".npy header: descr is not a simple type (structured arrays are not supported)")
	}
	if len(descr) < 3 {
		return nil, fmt.Errorf(".npy dtype %q is not supported", descr)
	}
	dtype, ok := npyTypes[descr[1:]]
	if !ok {
		return nil, fmt.Errorf(".npy dtype %q is not supported (float16/32/64, uint8, int8/16/32/64, bool)", descr)
	}
	size := sensor.DTypeSize(dtype)
	switch order := descr[0]; {
	case size == 1: // byte order means nothing for one byte
	case order == '>':
		return nil, fmt.Errorf(".npy dtype %q is big-endian; save it little-endian, e.g. a.astype('<%s')", descr, descr[1:])
	case order != '<' && order != '=': // '=' is native, and every target of the agent is little-endian
		return nil, fmt.Errorf(".npy dtype %q has an unknown byte order", descr)
	}
	if fo, _ := hdr["fortran_order"].(bool); fo {
		return nil, errors.New(".npy array is in Fortran order; save a C-ordered copy, e.g. np.ascontiguousarray(a)")
	}
	dims, ok := hdr["shape"].([]any)
	if !ok {
		return nil, errors.New(".npy header: shape is not a tuple")
	}
	shape := make([]int, len(dims))
	for i, d := range dims {
		n, ok := d.(int)
		if !ok || n < 0 {
			return nil, fmt.Errorf(".npy header: shape %v is not a tuple of sizes", dims)
		}
		shape[i] = n
	}
	body := data[off+hlen:]
	n := 1
	for _, d := range shape {
		if d != 0 && n > len(body)/d {
			return nil, fmt.Errorf(".npy shape %v needs more bytes than the file has (%d)", shape, len(body))
		}
		n *= d
	}
	if len(body) != n*size {
		return nil, fmt.Errorf(".npy data is %d bytes; shape %v of %s needs %d", len(body), shape, dtype, n*size)
	}
	return &sensor.Raw{DType: dtype, Shape: shape, Data: body}, nil
}

// pyParser reads the Python literal in a .npy header: dicts, strings, tuples or lists,
// integers, True, False and None. That is all NumPy writes there.
type pyParser struct {
	s string
	i int
}

func (p *pyParser) skip() {
	for p.i < len(p.s) && strings.IndexByte(" \t\r\n", p.s[p.i]) >= 0 {
		p.i++
	}
}

func (p *pyParser) errorf(format string, args ...any) error {
	return fmt.Errorf("at byte %d: %s", p.i, fmt.Sprintf(format, args...))
}

func (p *pyParser) value() (any, error) {
	p.skip()
	if p.i >= len(p.s) {
		return nil, p.errorf("unexpected end")
	}
	switch c := p.s[p.i]; {
	case c == '{':
		p.i++
		m := map[string]any{}
		for {
			p.skip()
			if p.i < len(p.s) && p.s[p.i] == '}' {
				p.i++
				return m, nil
			}
			k, err := p.value()
			if err != nil {
				return nil, err
			}
			key, ok := k.(string)
			if !ok {
				return nil, p.errorf("dict key is not a string")
			}
			p.skip()
			if p.i >= len(p.s) || p.s[p.i] != ':' {
				return nil, p.errorf("want ':'")
			}
			p.i++
			if m[key], err = p.value(); err != nil {
				return nil, err
			}
			if err := p.sep('}'); err != nil {
				return nil, err
			}
		}
	case c == '(' || c == '[':
		end := byte(')')
		if c == '[' {
			end = ']'
		}
		p.i++
		list := []any{}
		for {
			p.skip()
			if p.i < len(p.s) && p.s[p.i] == end {
				p.i++
				return list, nil
			}
			v, err := p.value()
			if err != nil {
				return nil, err
			}
			list = append(list, v)
			if err := p.sep(end); err != nil {
				return nil, err
			}
		}
	case c == '\'' || c == '"':
		j := strings.IndexByte(p.s[p.i+1:], c)
		if j < 0 {
			return nil, p.errorf("unterminated string")
		}
		v := p.s[p.i+1 : p.i+1+j]
		p.i += j + 2
		return v, nil
	case c >= '0' && c <= '9':
		j := p.i
		for j < len(p.s) && p.s[j] >= '0' && p.s[j] <= '9' {
			j++
		}
		n, err := strconv.Atoi(p.s[p.i:j])
		if err != nil {
			return nil, p.errorf("%v", err)
		}
		p.i = j
		if p.i < len(p.s) && p.s[p.i] == 'L' { // Python 2 long, as old NumPy wrote it
			p.i++
		}
		return n, nil
	}
	for word, v := range map[string]any{"True": true, "False": false, "None": nil} {
		if strings.HasPrefix(p.s[p.i:], word) {
			p.i += len(word)
			return v, nil
		}
	}
	return nil, p.errorf("unexpected %q", p.s[p.i])
}

// sep consumes a ',' or sees the closing byte end (left for the caller).
func (p *pyParser) sep(end byte) error {
	p.skip()
	if p.i < len(p.s) && p.s[p.i] == ',' {
		p.i++
		return nil
	}
	if p.i < len(p.s) && p.s[p.i] == end {
		return nil
	}
	return p.errorf("want ',' or %q", end)
}
