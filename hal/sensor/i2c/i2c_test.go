package i2c

import (
	"slices"
	"strings"
	"testing"

	"github.com/edge-agent/edge-agent/hal/sensor"
)

// On a board the bus is a real character device (/dev/i2c-1, major 89) driven by the
// kernel; this machine has none, so only the validation and the word decoding are tested.

func TestWords(t *testing.T) {
	tests := []struct {
		in    []byte
		scale float64
		want  []float64
	}{
		{[]byte{0x00, 0x01}, 1, []float64{1}},
		{[]byte{0x7F, 0xFF, 0x80, 0x00}, 1, []float64{32767, -32768}},
		{[]byte{0xFF, 0xFF}, 1, []float64{-1}},
		{[]byte{0x01, 0x00, 0xFF, 0x00}, 0.5, []float64{128, -128}},
		{nil, 1, []float64{}},
	}
	for _, tt := range tests {
		if got := words(tt.in, tt.scale); !slices.Equal(got, tt.want) {
			t.Errorf("words(% x, %v): got %v; want %v", tt.in, tt.scale, got, tt.want)
		}
	}
}

func TestValidation(t *testing.T) {
	good := sensor.I2CSpec{Bus: "/dev/i2c-1", Address: 0x48, Length: 2}
	with := func(f func(*sensor.I2CSpec)) sensor.I2CSpec { s := good; f(&s); return s }
	tests := []struct {
		spec sensor.I2CSpec
		want string
	}{
		{with(func(s *sensor.I2CSpec) { s.Bus = "" }), `source "temp": i2c.bus: must not be empty`},
		{with(func(s *sensor.I2CSpec) { s.Address = 0x80 }), "i2c.address: 0x80 is not a 7-bit device address"},
		{with(func(s *sensor.I2CSpec) { s.Address = 0x01 }), "i2c.address"},
		{with(func(s *sensor.I2CSpec) { s.Length = 0 }), "i2c.length"},
		{with(func(s *sensor.I2CSpec) { s.Length = 3 }), "i2c.length: 3 must be an even number"},
		{with(func(s *sensor.I2CSpec) { s.Length = 512 }), "i2c.length"},
	}
	for _, tt := range tests {
		_, err := sensor.Kinds.New(sensor.Spec{Name: "temp", Kind: "i2c", I2C: tt.spec}, sensor.Deps{})
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%+v: got %v; want an error containing %q", tt.spec, err, tt.want)
		}
	}
	src, err := New(sensor.Spec{Name: "temp", I2C: good}, sensor.Deps{Root: "/fixture"})
	if err != nil {
		t.Fatalf("valid spec: got %v; want nil", err)
	}
	if s := src.(*source); s.path != "/fixture/dev/i2c-1" || s.scale != 1 {
		t.Errorf("defaults: got path %q scale %v; want /fixture/dev/i2c-1 and 1", s.path, s.scale)
	}
}
