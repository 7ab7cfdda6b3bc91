// Package i2c is the "i2c" source kind: a register read from a device on a Linux i2c-dev
// bus (/dev/i2c-1 on a Raspberry Pi), turned into values as big-endian signed 16-bit words
// times a scale. It imports nothing from agent/.
package i2c

import (
	"fmt"
	"time"

	"github.com/edge-agent/edge-agent/hal/sensor"
)

func init() { sensor.Kinds.Register("i2c", New) }

const (
	defaultPeriod = time.Second // a bus poll, unlike a file replay, has no "as fast as possible"
	maxLength     = 256
	i2cSlave      = 0x0703 // ioctl I2C_SLAVE from <linux/i2c-dev.h>
)

type source struct {
	name   string
	cfg    sensor.I2CSpec
	path   string
	scale  float64
	period time.Duration
}

// New validates spec.I2C. The device is deps.Root + Bus, so tests and containers can point
// at another tree; on a board it is the i2c-dev character device.
func New(spec sensor.Spec, deps sensor.Deps) (sensor.Source, error) {
	c := spec.I2C
	bad := func(field, format string, args ...any) error {
		return fmt.Errorf("source %q: i2c.%s: %s", spec.Name, field, fmt.Sprintf(format, args...))
	}
	if c.Bus == "" {
		return nil, bad("bus", "must not be empty (e.g. /dev/i2c-1)")
	}
	if c.Address < 0x03 || c.Address > 0x77 {
		return nil, bad("address", "0x%02x is not a 7-bit device address (0x03..0x77)", c.Address)
	}
	if c.Length <= 0 || c.Length%2 != 0 || c.Length > maxLength {
		return nil, bad("length", "%d must be an even number of bytes between 2 and %d (16-bit words)", c.Length, maxLength)
	}
	if c.Scale != c.Scale { // NaN
		return nil, bad("scale", "must be a number")
	}
	s := &source{name: spec.Name, cfg: c, path: deps.Root + c.Bus, scale: c.Scale, period: spec.Period()}
	if s.scale == 0 {
		s.scale = 1
	}
	if s.period == 0 {
		s.period = defaultPeriod
	}
	return s, nil
}

// words turns big-endian signed 16-bit words into values times scale.
func words(b []byte, scale float64) []float64 {
	v := make([]float64, len(b)/2)
	for i := range v {
		v[i] = float64(int16(uint16(b[2*i])<<8|uint16(b[2*i+1]))) * scale
	}
	return v
}
