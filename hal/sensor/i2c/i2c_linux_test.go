package i2c

import (
	"os"
	"strings"
	"testing"

	"github.com/edge-agent/edge-agent/hal/sensor"
)

// Without hardware the failure paths still run: a missing bus, and a file that is not an
// i2c-dev device (the I2C_SLAVE ioctl is refused).
func TestRunErrorsWithoutDevice(t *testing.T) {
	root := t.TempDir()
	spec := sensor.Spec{Name: "temp", I2C: sensor.I2CSpec{Bus: "/i2c-1", Address: 0x48, Length: 2}}
	src, err := New(spec, sensor.Deps{Root: root})
	if err != nil {
		t.Fatal(err)
	}
	if err := src.Run(t.Context(), func(sensor.Frame) {}); err == nil || !strings.Contains(err.Error(), `source "temp": i2c.bus: open `+root+"/i2c-1") {
		t.Errorf("missing bus: got %v; want an open error naming i2c.bus", err)
	}
	if err := os.WriteFile(root+"/i2c-1", nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := src.Run(t.Context(), func(sensor.Frame) {}); err == nil || !strings.Contains(err.Error(), "i2c.address: select 0x48") {
		t.Errorf("not a device: got %v; want the I2C_SLAVE error", err)
	}
}
