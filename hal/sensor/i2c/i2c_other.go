//go:build !linux

package i2c

import (
	"context"
	"fmt"

	"github.com/edge-agent/edge-agent/hal/sensor"
)

// Run fails: i2c-dev is a Linux interface.
func (s *source) Run(context.Context, sensor.Emit) error {
	return fmt.Errorf("source %q: i2c needs Linux i2c-dev", s.name)
}
