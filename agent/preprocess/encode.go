package preprocess

import (
	"encoding/binary"
	"fmt"
	"math"

	"github.com/edge-agent/edge-agent/agent/infer"
)

// encoder writes values into a tensor's element bytes. Integer dtypes are rounded to
// nearest (ties to even, as infer.Tensor.SetFloat does) and saturated; NaN becomes 0.
// Quantisation (q = v/scale + zero_point) is applied by the caller, or folded into the
// image stage's per-channel affine map.
type encoder struct {
	dt infer.DType
	q  infer.Quant // used only for integer dtypes
}

func newEncoder(t infer.TensorInfo) (encoder, error) {
	switch t.DType {
	case infer.Float32, infer.Float64:
		return encoder{dt: t.DType}, nil
	case infer.UInt8, infer.Int8, infer.Int16, infer.Int32, infer.Int64:
		if q := t.Quant; q.Quantised() && (math.IsNaN(float64(q.Scale)) || math.IsInf(float64(q.Scale), 0)) {
			return encoder{}, fmt.Errorf("input %d (%s) has an unusable quantisation scale %v", t.Index, t.Name, q.Scale)
		}
		return encoder{dt: t.DType, q: t.Quant}, nil
	}
	return encoder{}, fmt.Errorf("input %d (%s) is %s; preprocess writes float32, float64, uint8, int8, int16, int32 or int64 inputs", t.Index, t.Name, t.DType)
}

// quantised reports whether values must be mapped through the tensor's quantisation.
func (e encoder) quantised() bool { return e.q.Quantised() }

// quantise maps a real value to the tensor's quantised domain (before rounding).
func (e encoder) quantise(v float64) float64 {
	if !e.q.Quantised() {
		return v
	}
	return v/float64(e.q.Scale) + float64(e.q.ZeroPoint)
}

// store writes vals as elements at, at+1, ... of data.
func (e encoder) store(data []byte, at int, vals []float64) {
	switch e.dt {
	case infer.Float32:
		d := data[4*at : 4*(at+len(vals))]
		for i, v := range vals {
			binary.LittleEndian.PutUint32(d[4*i:], math.Float32bits(float32(v)))
		}
	case infer.Float64:
		d := data[8*at : 8*(at+len(vals))]
		for i, v := range vals {
			binary.LittleEndian.PutUint64(d[8*i:], math.Float64bits(v))
		}
	case infer.UInt8:
		d := data[at : at+len(vals)]
		for i, v := range vals {
			switch {
			case v >= 0xff:
				d[i] = 0xff
			case v > 0:
				d[i] = uint8(roundBits(v))
			default: // ≤ 0 or NaN
				d[i] = 0
			}
		}
	case infer.Int8:
		d := data[at : at+len(vals)]
		for i, v := range vals {
			switch {
			case v >= math.MaxInt8:
				d[i] = math.MaxInt8
			case v > math.MinInt8:
				d[i] = uint8(roundBits(v))
			case v <= math.MinInt8:
				d[i] = 0x80
			default: // NaN
				d[i] = 0
			}
		}
	case infer.Int16:
		d := data[2*at : 2*(at+len(vals))]
		for i, v := range vals {
			binary.LittleEndian.PutUint16(d[2*i:], uint16(int16(sat(v, math.MinInt16, math.MaxInt16))))
		}
	case infer.Int32:
		d := data[4*at : 4*(at+len(vals))]
		for i, v := range vals {
			binary.LittleEndian.PutUint32(d[4*i:], uint32(int32(sat(v, math.MinInt32, math.MaxInt32))))
		}
	case infer.Int64:
		d := data[8*at : 8*(at+len(vals))]
		for i, v := range vals {
			binary.LittleEndian.PutUint64(d[8*i:], uint64(sat64(v)))
		}
	}
}

// sat rounds v to nearest (ties to even) and saturates it to [lo, hi] (within ±2³¹);
// NaN gives 0.
func sat(v float64, lo, hi float64) int64 {
	switch {
	case v != v:
		return 0
	case v <= lo:
		return int64(lo)
	case v >= hi:
		return int64(hi)
	}
	return int64(roundEven(v))
}

// roundBits returns round-to-even(v) in the low bits of its result, as two's complement,
// for |v| < 2⁵¹: the float64 v + 1.5·2⁵² has an ulp of 1, so its mantissa holds the rounded
// integer. It saves the float-to-int conversion in the 8-bit stores.
func roundBits(v float64) uint64 {
	const magic = 0x1.8p52
	return math.Float64bits(v + magic)
}

// roundEven is math.RoundToEven for |v| < 2⁵¹: adding and removing 1.5·2⁵² rounds to
// nearest even in the FPU's default mode, without the library call.
func roundEven(v float64) float64 {
	const magic = 0x1.8p52
	return (v + magic) - magic
}

// sat64 is sat for int64, whose bounds are not exact float64 values.
func sat64(v float64) int64 {
	switch {
	case v != v:
		return 0
	case v <= math.MinInt64:
		return math.MinInt64
	case v >= math.MaxInt64: // 2^63 as float64
		return math.MaxInt64
	}
	return int64(math.RoundToEven(v))
}
