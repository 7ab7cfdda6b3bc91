// Package infer defines the inference Engine contract and the tensor types that flow between
// preprocess, the engine and postprocess. It has no cgo: engines (agent/infer/tflite) register
// themselves from init behind build constraints, so a build without the TensorFlow Lite C
// library still links and says clearly that no engine is available.
//
// infer imports nothing from agent/* or hal/*; stage packages import infer for its types.
package infer

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"strings"

	"github.com/edge-agent/edge-agent/internal/registry"
)

// DType is a tensor element type.
type DType int

// The element types edge-agent moves in and out of models.
const (
	Unknown DType = iota
	Float32
	UInt8
	Int8
	Int16
	Int32
	Int64
	Bool
	String
	Float16
	Float64
)

var dtypeNames = [...]string{"unknown", "float32", "uint8", "int8", "int16", "int32", "int64", "bool", "string", "float16", "float64"}

func (d DType) String() string {
	if int(d) >= 0 && int(d) < len(dtypeNames) {
		return dtypeNames[d]
	}
	return fmt.Sprintf("dtype(%d)", int(d))
}

// Size is the size of one element in bytes (0 for variable-size types).
func (d DType) Size() int {
	switch d {
	case UInt8, Int8, Bool:
		return 1
	case Int16, Float16:
		return 2
	case Float32, Int32:
		return 4
	case Int64, Float64:
		return 8
	}
	return 0
}

// ParseDType turns a name such as "float32" into a DType.
func ParseDType(s string) (DType, error) {
	for i, n := range dtypeNames {
		if n == strings.ToLower(s) && i != 0 {
			return DType(i), nil
		}
	}
	return Unknown, fmt.Errorf("unknown dtype %q (want one of float32, uint8, int8, int16, int32, int64, bool)", s)
}

// MarshalText makes DType readable in JSON and YAML.
func (d DType) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// UnmarshalText parses a dtype name.
func (d *DType) UnmarshalText(b []byte) error {
	v, err := ParseDType(string(b))
	if err != nil {
		return err
	}
	*d = v
	return nil
}

// Quant is the affine quantisation of a tensor: real = Scale * (q - ZeroPoint).
// Scale 0 means the tensor is not quantised.
type Quant struct {
	Scale     float32 `json:"scale,omitempty"`
	ZeroPoint int32   `json:"zero_point,omitempty"`
}

// Quantised reports whether the parameters describe a quantised tensor.
func (q Quant) Quantised() bool { return q.Scale != 0 }

// TensorInfo describes one input or output of a model.
type TensorInfo struct {
	Index int    `json:"index"`
	Name  string `json:"name"`
	DType DType  `json:"dtype"`
	Shape []int  `json:"shape"`
	Quant Quant  `json:"quantization"`
	Bytes int    `json:"bytes"`
}

// Elements is the number of elements the shape holds.
func (t TensorInfo) Elements() int { return Elements(t.Shape) }

// Dynamic reports a shape known only after an invoke: a dimension the model leaves open (-1),
// or an output the runtime has not sized yet (no bytes; a scalar has its element's bytes).
func (t TensorInfo) Dynamic() bool {
	if t.Bytes == 0 && t.DType.Size() > 0 {
		return true
	}
	for _, d := range t.Shape {
		if d < 0 {
			return true
		}
	}
	return false
}

// Elements is the product of a shape's dimensions (1 for a scalar).
func Elements(shape []int) int {
	n := 1
	for _, d := range shape {
		n *= d
	}
	return n
}

// Tensor is a dense tensor whose Data is owned by Go (never C memory): little-endian
// element bytes, len(Data) == Elements(Shape) * DType.Size().
type Tensor struct {
	DType DType
	Shape []int
	Data  []byte
}

// NewTensor allocates a zeroed tensor.
func NewTensor(dt DType, shape []int) Tensor {
	return Tensor{DType: dt, Shape: append([]int(nil), shape...), Data: make([]byte, Elements(shape)*dt.Size())}
}

// Len is the number of elements.
func (t Tensor) Len() int {
	if s := t.DType.Size(); s > 0 {
		return len(t.Data) / s
	}
	return 0
}

// Check reports whether the tensor's data length matches its shape and dtype.
func (t Tensor) Check() error {
	if t.DType.Size() == 0 {
		return fmt.Errorf("tensor dtype %s has no fixed element size", t.DType)
	}
	if want := Elements(t.Shape) * t.DType.Size(); len(t.Data) != want {
		return fmt.Errorf("tensor %s%v holds %d bytes, want %d", t.DType, t.Shape, len(t.Data), want)
	}
	return nil
}

// FromFloat32 builds a float32 tensor.
func FromFloat32(shape []int, v []float32) Tensor {
	t := Tensor{DType: Float32, Shape: append([]int(nil), shape...), Data: make([]byte, 4*len(v))}
	for i, x := range v {
		binary.LittleEndian.PutUint32(t.Data[4*i:], math.Float32bits(x))
	}
	return t
}

// FromInt32 builds an int32 tensor.
func FromInt32(shape []int, v []int32) Tensor {
	t := Tensor{DType: Int32, Shape: append([]int(nil), shape...), Data: make([]byte, 4*len(v))}
	for i, x := range v {
		binary.LittleEndian.PutUint32(t.Data[4*i:], uint32(x))
	}
	return t
}

// FromUint8 builds a uint8 tensor (the slice is used, not copied).
func FromUint8(shape []int, v []uint8) Tensor {
	return Tensor{DType: UInt8, Shape: append([]int(nil), shape...), Data: v}
}

// FromValues builds a tensor of any numeric dtype from float64 values, rounding and
// saturating for integer types and mapping non-zero to true for bool.
func FromValues(dt DType, shape []int, v []float64) (Tensor, error) {
	t := NewTensor(dt, shape)
	if t.Len() != len(v) {
		return Tensor{}, fmt.Errorf("%d values for shape %v (%d elements)", len(v), shape, t.Len())
	}
	for i, x := range v {
		if err := t.SetFloat(i, x); err != nil {
			return Tensor{}, err
		}
	}
	return t, nil
}

// Float reads element i as float64 without dequantising.
func (t Tensor) Float(i int) float64 {
	d := t.Data
	switch t.DType {
	case Float32:
		return float64(math.Float32frombits(binary.LittleEndian.Uint32(d[4*i:])))
	case Float64:
		return math.Float64frombits(binary.LittleEndian.Uint64(d[8*i:]))
	case UInt8:
		return float64(d[i])
	case Int8:
		return float64(int8(d[i]))
	case Bool:
		if d[i] != 0 {
			return 1
		}
		return 0
	case Int16:
		return float64(int16(binary.LittleEndian.Uint16(d[2*i:])))
	case Int32:
		return float64(int32(binary.LittleEndian.Uint32(d[4*i:])))
	case Int64:
		return float64(int64(binary.LittleEndian.Uint64(d[8*i:])))
	case Float16:
		return float64(half(binary.LittleEndian.Uint16(d[2*i:])))
	}
	return math.NaN()
}

// SetFloat writes element i from a float64, rounding to nearest and saturating for integer
// dtypes.
func (t Tensor) SetFloat(i int, x float64) error {
	d := t.Data
	switch t.DType {
	case Float32:
		binary.LittleEndian.PutUint32(d[4*i:], math.Float32bits(float32(x)))
	case Float64:
		binary.LittleEndian.PutUint64(d[8*i:], math.Float64bits(x))
	case UInt8:
		d[i] = uint8(clampRound(x, 0, math.MaxUint8))
	case Int8:
		d[i] = uint8(int8(clampRound(x, math.MinInt8, math.MaxInt8)))
	case Bool:
		if x != 0 {
			d[i] = 1
		} else {
			d[i] = 0
		}
	case Int16:
		binary.LittleEndian.PutUint16(d[2*i:], uint16(int16(clampRound(x, math.MinInt16, math.MaxInt16))))
	case Int32:
		binary.LittleEndian.PutUint32(d[4*i:], uint32(int32(clampRound(x, math.MinInt32, math.MaxInt32))))
	case Int64:
		binary.LittleEndian.PutUint64(d[8*i:], uint64(int64(clampRound(x, math.MinInt64, math.MaxInt64))))
	default:
		return fmt.Errorf("cannot write numbers into a %s tensor", t.DType)
	}
	return nil
}

func clampRound(x, lo, hi float64) float64 {
	if math.IsNaN(x) {
		return 0
	}
	x = math.RoundToEven(x)
	return math.Max(lo, math.Min(hi, x))
}

// Floats returns every element as float64, dequantised with q when q is set.
func (t Tensor) Floats(q Quant) []float64 {
	out := make([]float64, t.Len())
	for i := range out {
		v := t.Float(i)
		if q.Quantised() {
			v = float64(q.Scale) * (v - float64(q.ZeroPoint))
		}
		out[i] = v
	}
	return out
}

// half converts an IEEE 754 binary16 to float32.
func half(h uint16) float32 {
	sign := uint32(h>>15) << 31
	exp := uint32(h>>10) & 0x1f
	frac := uint32(h) & 0x3ff
	switch {
	case exp == 0 && frac == 0:
		return math.Float32frombits(sign)
	case exp == 0:
		return float32(math.Ldexp(float64(frac), -24)) * float32(1-2*int(sign>>31))
	case exp == 0x1f:
		return math.Float32frombits(sign | 0x7f800000 | frac<<13)
	}
	return math.Float32frombits(sign | (exp+112)<<23 | frac<<13)
}

// ModelInfo is what introspection tells about a loaded model.
type ModelInfo struct {
	Inputs  []TensorInfo `json:"inputs"`
	Outputs []TensorInfo `json:"outputs"`
	// Ops lists the distinct operators the model uses: builtin names (CONV_2D) and custom
	// op names (TFLite_Detection_PostProcess).
	Ops []string `json:"ops"`
	// CustomOps is the subset of Ops that are custom operators.
	CustomOps []string `json:"custom_ops,omitempty"`
	// Delegate is the delegate actually in use ("cpu", "xnnpack", "edgetpu", "gpu", "external").
	Delegate string `json:"delegate"`
	// Fallback says why the requested delegate is not in use ("" when it is).
	Fallback string `json:"fallback,omitempty"`
	Threads  int    `json:"threads"`
	Pool     int    `json:"pool"`
	Runtime  string `json:"runtime"`
	Bytes    int64  `json:"bytes"`
}

// Delegate names accepted by Options.Delegate.
const (
	DelegateAuto    = "auto"
	DelegateCPU     = "cpu"
	DelegateXNNPACK = "xnnpack"
	DelegateEdgeTPU = "edgetpu"
	DelegateGPU     = "gpu"
)

// Delegates is the list of accepted delegate names, for validation and help text.
var Delegates = []string{DelegateAuto, DelegateCPU, DelegateXNNPACK, DelegateEdgeTPU, DelegateGPU}

// Options tune how a model is loaded.
type Options struct {
	// Threads for the CPU kernels (and XNNPACK); 0 means the number of CPUs, capped at 4.
	Threads int
	// Pool is the number of interpreters, i.e. how many inferences may run at once.
	// Interpreters are created lazily; 0 means 1.
	Pool int
	// Delegate is one of Delegates; "" means auto.
	Delegate string
	// EdgeTPULibrary is the Edge TPU delegate plugin ("" = libedgetpu.so.1).
	EdgeTPULibrary string
	// EdgeTPUAvailable says whether hal/accel saw an Edge TPU; auto uses it only then.
	EdgeTPUAvailable bool
	// GPUAvailable says whether hal/accel saw a usable GPU.
	GPUAvailable bool
	// Logf receives runtime messages (error reporter, delegate fallbacks); may be nil.
	Logf func(format string, args ...any)
}

// Engine loads models.
type Engine interface {
	Name() string
	// Version is the runtime's version, e.g. "2.9.0".
	Version() string
	LoadFile(path string, opt Options) (Model, error)
	LoadBytes(data []byte, opt Options) (Model, error)
}

// Model is a loaded model, safe for concurrent use: each call to Infer borrows one
// interpreter from the model's pool.
type Model interface {
	Info() ModelInfo
	// Infer runs the model. Inputs must match Info().Inputs in dtype and element count.
	// Outputs are copies owned by the caller.
	Infer(ctx context.Context, inputs []Tensor) ([]Tensor, error)
	// Close waits for in-flight inferences and frees the runtime's memory.
	Close() error
}

// Errors engines return for decisions callers make.
var (
	// ErrNoEngine means the binary was built without an inference engine.
	ErrNoEngine = errors.New("no inference engine in this build: build with CGO_ENABLED=1 and the TensorFlow Lite C library (make build; scripts/install-tflite.sh installs it)")
	// ErrBadModel means the model file is not a usable TensorFlow Lite model.
	ErrBadModel = errors.New("not a valid TensorFlow Lite model")
	// ErrUnsupportedOps means the model uses operators this runtime lacks.
	ErrUnsupportedOps = errors.New("model uses operators this runtime does not provide")
	// ErrNeedsEdgeTPU means the model was compiled for the Edge TPU and no TPU delegate loaded.
	ErrNeedsEdgeTPU = errors.New("model was compiled for the Edge TPU")
	// ErrInput means the inputs do not match the model.
	ErrInput = errors.New("input does not match the model")
	// ErrClosed means the model was closed.
	ErrClosed = errors.New("model is closed")
)

// Factory creates an engine.
type Factory func() (Engine, error)

// Registry maps engine names to factories. Filled from init functions, read-only after.
type Registry struct{ *registry.Registry[Factory] }

// Engines is the process-wide registry engines add themselves to from init.
var Engines = Registry{registry.New[Factory]("engine")}

// New creates the named engine, or ErrNoEngine.
func (r Registry) New(name string) (Engine, error) {
	f, ok := r.Lookup(name)
	if !ok {
		return nil, fmt.Errorf("engine %q: %w", name, ErrNoEngine)
	}
	return f()
}

// CheckInputs verifies inputs against the model's input specs.
func CheckInputs(specs []TensorInfo, inputs []Tensor) error {
	if len(inputs) != len(specs) {
		return fmt.Errorf("%w: got %d input tensors, model takes %d", ErrInput, len(inputs), len(specs))
	}
	for i, in := range inputs {
		s := specs[i]
		if in.DType != s.DType {
			return fmt.Errorf("%w: input %d (%s) is %s, model wants %s", ErrInput, i, s.Name, in.DType, s.DType)
		}
		if len(in.Data) != s.Bytes {
			return fmt.Errorf("%w: input %d (%s) has %d elements, model wants %d (shape %v)", ErrInput, i, s.Name, in.Len(), s.Elements(), s.Shape)
		}
	}
	return nil
}
