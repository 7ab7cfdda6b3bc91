package all_test

import (
	"slices"
	"testing"

	_ "github.com/edge-agent/edge-agent/hal/sensor/all"

	"github.com/edge-agent/edge-agent/hal/sensor"
)

func TestEveryKindRegistered(t *testing.T) {
	want := []string{"command", "csv", "file", "http", "i2c", "mqtt", "synthetic"}
	if got := sensor.Kinds.Names(); !slices.Equal(got, want) {
		t.Errorf("Kinds.Names(): got %v; want %v", got, want)
	}
}
