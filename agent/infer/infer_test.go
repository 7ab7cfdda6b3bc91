package infer

import (
	"errors"
	"math"
	"testing"

	"github.com/edge-agent/edge-agent/internal/registry"
)

func TestValuesRoundTripPerDType(t *testing.T) {
	for _, c := range []struct {
		dt   DType
		in   []float64
		want []float64
	}{
		{Float32, []float64{-1.5, 0, 3.25}, []float64{-1.5, 0, 3.25}},
		{UInt8, []float64{-3, 7.5, 300}, []float64{0, 8, 255}}, // saturate, round half to even
		{Int8, []float64{-200, -1.4, 127.6}, []float64{-128, -1, 127}},
		{Int16, []float64{40000, -2.5}, []float64{32767, -2}},
		{Int32, []float64{1e12, -7}, []float64{math.MaxInt32, -7}},
		{Int64, []float64{-9, 12}, []float64{-9, 12}},
		{Bool, []float64{0, 2, -1}, []float64{0, 1, 1}},
	} {
		tn, err := FromValues(c.dt, []int{len(c.in)}, c.in)
		if err != nil {
			t.Fatalf("%s: %v", c.dt, err)
		}
		if err := tn.Check(); err != nil {
			t.Fatalf("%s: %v", c.dt, err)
		}
		got := tn.Floats(Quant{})
		for i := range got {
			if got[i] != c.want[i] {
				t.Errorf("%s[%d]: got %v; want %v", c.dt, i, got[i], c.want[i])
			}
		}
	}
}

func TestDequantise(t *testing.T) {
	tn := FromUint8([]int{3}, []byte{0, 128, 255})
	got := tn.Floats(Quant{Scale: 0.5, ZeroPoint: 128})
	want := []float64{-64, 0, 63.5}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("[%d] got %v; want %v", i, got[i], want[i])
		}
	}
}

func TestCheckInputs(t *testing.T) {
	specs := []TensorInfo{{Name: "x", DType: Float32, Shape: []int{1, 4}, Bytes: 16}}
	if err := CheckInputs(specs, []Tensor{FromFloat32([]int{1, 4}, make([]float32, 4))}); err != nil {
		t.Fatalf("matching input refused: %v", err)
	}
	for name, in := range map[string][]Tensor{
		"count": nil,
		"dtype": {FromInt32([]int{1, 4}, make([]int32, 4))},
		"size":  {FromFloat32([]int{1, 3}, make([]float32, 3))},
	} {
		if err := CheckInputs(specs, in); !errors.Is(err, ErrInput) {
			t.Errorf("%s: err = %v; want ErrInput", name, err)
		}
	}
}

func TestRegistryWithoutEngine(t *testing.T) {
	r := Registry{registry.New[Factory]("engine")}
	if _, err := r.New("tflite"); !errors.Is(err, ErrNoEngine) {
		t.Fatalf("err = %v; want ErrNoEngine", err)
	}
}

func TestHalfFloat(t *testing.T) {
	for bits, want := range map[uint16]float32{0x3C00: 1, 0xC000: -2, 0x0000: 0, 0x3555: 0.33325195} {
		if got := half(bits); math.Abs(float64(got-want)) > 1e-6 {
			t.Errorf("half(%#x) = %v; want %v", bits, got, want)
		}
	}
}
