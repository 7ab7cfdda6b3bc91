// Package synthetic is the "synthetic" source kind: generated sine waves, gaussian noise and
// random walks, for demos, soak tests and models such as sin(x). It imports nothing from
// agent/.
package synthetic

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"

	"github.com/edge-agent/edge-agent/hal/sensor"
	"github.com/edge-agent/edge-agent/hal/sensor/internal/pace"
)

func init() { sensor.Kinds.Register("synthetic", New) }

const maxChannels = 1 << 16

type source struct {
	cfg   sensor.SyntheticSpec // defaults filled in
	pacer pace.Pacer
	names []string
}

// New validates spec.Synthetic and returns the source. Zero fields take their defaults:
// wave sine, 1 channel, amplitude 1, period 64 samples, step 0.1.
func New(spec sensor.Spec, _ sensor.Deps) (sensor.Source, error) {
	c := spec.Synthetic
	bad := func(field, format string, args ...any) error {
		return fmt.Errorf("source %q: synthetic.%s: %s", spec.Name, field, fmt.Sprintf(format, args...))
	}
	switch c.Wave {
	case "":
		c.Wave = "sine"
	case "sine", "noise", "walk":
	default:
		return nil, bad("wave", "%q is not one of sine, noise, walk", c.Wave)
	}
	switch {
	case c.Channels < 0 || c.Channels > maxChannels:
		return nil, bad("channels", "must be between 0 and %d, got %d", maxChannels, c.Channels)
	case c.Channels == 0:
		c.Channels = 1
	}
	if !finite(c.Amplitude) || !finite(c.Offset) || !finite(c.Period) || !finite(c.Step) {
		return nil, fmt.Errorf("source %q: synthetic: amplitude, offset, period and step must be finite numbers", spec.Name)
	}
	if c.Amplitude == 0 {
		c.Amplitude = 1
	}
	switch {
	case c.Period < 0:
		return nil, bad("period", "must not be negative, got %v", c.Period)
	case c.Period == 0:
		c.Period = 64
	}
	switch {
	case c.Step < 0:
		return nil, bad("step", "must not be negative, got %v", c.Step)
	case c.Step == 0:
		c.Step = 0.1
	}
	if c.Count < 0 {
		return nil, bad("count", "must not be negative, got %d", c.Count)
	}
	if c.Phase && c.Wave != "sine" {
		return nil, bad("phase", "applies to wave sine only, not %q", c.Wave)
	}
	names := make([]string, c.Channels)
	for i := range names {
		names[i] = fmt.Sprintf("ch%d", i)
	}
	return &source{cfg: c, pacer: pace.Pacer{Period: spec.Period()}, names: names}, nil
}

func finite(x float64) bool { return !math.IsNaN(x) && !math.IsInf(x, 0) }

// Run emits frames until Count is reached (then returns nil) or ctx is done. A restart
// begins the signal again from sample 0 with the same seed.
func (s *source) Run(ctx context.Context, emit sensor.Emit) error {
	c := s.cfg
	seed := uint64(c.Seed)
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	walk := make([]float64, c.Channels)
	for i := range walk {
		walk[i] = c.Offset
	}
	pacer := s.pacer
	for n := 0; c.Count == 0 || n < c.Count; n++ {
		if !pacer.Wait(ctx) {
			return nil
		}
		v := make([]float64, c.Channels)
		for ch := range v {
			switch c.Wave {
			case "sine":
				// Channels are spread evenly around the circle, so two channels are a
				// sine and its negation, four are quadrature, and so on.
				x := math.Mod(2*math.Pi*float64(n)/c.Period+2*math.Pi*float64(ch)/float64(c.Channels), 2*math.Pi)
				if c.Phase {
					v[ch] = x + c.Offset // offset -π gives [-π, π)
				} else {
					v[ch] = c.Amplitude*math.Sin(x) + c.Offset
				}
			case "noise":
				v[ch] = c.Amplitude*rng.NormFloat64() + c.Offset
			case "walk":
				walk[ch] += c.Step * rng.NormFloat64()
				v[ch] = walk[ch]
			}
		}
		// Names is shared by every frame of this source; consumers treat it as read-only.
		emit(sensor.Frame{Values: v, Names: s.names})
	}
	return nil
}
