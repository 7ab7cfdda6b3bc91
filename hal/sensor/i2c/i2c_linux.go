package i2c

import (
	"context"
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/edge-agent/edge-agent/hal/sensor"
	"github.com/edge-agent/edge-agent/hal/sensor/internal/pace"
)

// Run opens the bus, selects the device and reads Length bytes from Register every interval.
// A failed transfer (device unplugged, bus stuck) ends Run with an error: the runner retries
// with backoff and reopens the bus.
func (s *source) Run(ctx context.Context, emit sensor.Emit) error {
	fd, err := unix.Open(s.path, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("source %q: i2c.bus: open %s: %w", s.name, s.path, err)
	}
	defer unix.Close(fd)
	if err := unix.IoctlSetInt(fd, i2cSlave, int(s.cfg.Address)); err != nil {
		return fmt.Errorf("source %q: i2c.address: select 0x%02x on %s: %w", s.name, s.cfg.Address, s.path, err)
	}
	buf := make([]byte, s.cfg.Length)
	pacer := pace.Pacer{Period: s.period}
	for pacer.Wait(ctx) {
		if _, err := unix.Write(fd, []byte{s.cfg.Register}); err != nil {
			return fmt.Errorf("source %q: i2c 0x%02x on %s: write register 0x%02x: %w", s.name, s.cfg.Address, s.path, s.cfg.Register, err)
		}
		n, err := unix.Read(fd, buf)
		if err != nil {
			return fmt.Errorf("source %q: i2c 0x%02x on %s: read: %w", s.name, s.cfg.Address, s.path, err)
		}
		if n != len(buf) {
			return fmt.Errorf("source %q: i2c 0x%02x on %s: read %d bytes; want %d", s.name, s.cfg.Address, s.path, n, len(buf))
		}
		emit(sensor.Frame{Values: words(buf, s.scale)})
	}
	return nil
}
