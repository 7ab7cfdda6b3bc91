package synthetic_test

import (
	"context"
	"math"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/edge-agent/edge-agent/hal/sensor"
	"github.com/edge-agent/edge-agent/hal/sensor/internal/sensortest"
	"github.com/edge-agent/edge-agent/hal/sensor/synthetic"
)

// run builds the source through the registry and runs it to its Count.
func run(t *testing.T, s sensor.SyntheticSpec) []sensor.Frame {
	t.Helper()
	src, err := sensor.Kinds.New(sensor.Spec{Name: "gen", Kind: "synthetic", Synthetic: s}, sensor.Deps{})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	var c sensortest.Collector
	if err := src.Run(context.Background(), c.Emit); err != nil {
		t.Fatalf("Run: got %v; want nil after Count frames", err)
	}
	return c.Frames()
}

func TestSineMatchesMathSin(t *testing.T) {
	const amp, off, period = 2.0, 0.5, 8.0
	frames := run(t, sensor.SyntheticSpec{Wave: "sine", Channels: 2, Amplitude: amp, Offset: off, Period: period, Count: 20})
	if len(frames) != 20 {
		t.Fatalf("frames: got %d; want 20", len(frames))
	}
	for n, f := range frames {
		if !slices.Equal(f.Names, []string{"ch0", "ch1"}) {
			t.Fatalf("Names: got %v; want [ch0 ch1]", f.Names)
		}
		for ch, got := range f.Values {
			// Two channels sit half a turn apart.
			want := amp*math.Sin(2*math.Pi*float64(n)/period+math.Pi*float64(ch)) + off
			if math.Abs(got-want) > 1e-9 {
				t.Errorf("sample %d channel %d: got %v; want %v", n, ch, got, want)
			}
		}
	}
}

func TestSinePhase(t *testing.T) {
	frames := run(t, sensor.SyntheticSpec{Phase: true, Period: 10, Count: 25})
	for n, f := range frames {
		want := math.Mod(2*math.Pi*float64(n)/10, 2*math.Pi)
		if x := f.Values[0]; x < 0 || x >= 2*math.Pi || math.Abs(x-want) > 1e-9 {
			t.Errorf("sample %d: got phase %v; want %v in [0, 2π)", n, x, want)
		}
	}
}

func TestSeededWavesRepeat(t *testing.T) {
	for _, wave := range []string{"noise", "walk"} {
		a := run(t, sensor.SyntheticSpec{Wave: wave, Seed: 42, Channels: 3, Count: 50})
		b := run(t, sensor.SyntheticSpec{Wave: wave, Seed: 42, Channels: 3, Count: 50})
		c := run(t, sensor.SyntheticSpec{Wave: wave, Seed: 43, Channels: 3, Count: 50})
		same, differ := true, false
		for i := range a {
			same = same && slices.Equal(a[i].Values, b[i].Values)
			differ = differ || !slices.Equal(a[i].Values, c[i].Values)
		}
		if !same || !differ {
			t.Errorf("%s: same seed equal: got %v; want true. other seed differs: got %v; want true", wave, same, differ)
		}
	}
}

func TestNoiseAndWalkStatistics(t *testing.T) {
	noise := run(t, sensor.SyntheticSpec{Wave: "noise", Amplitude: 2, Offset: 10, Seed: 1, Count: 4000})
	var sum, sq float64
	for _, f := range noise {
		sum += f.Values[0]
		sq += f.Values[0] * f.Values[0]
	}
	mean := sum / float64(len(noise))
	std := math.Sqrt(sq/float64(len(noise)) - mean*mean)
	if math.Abs(mean-10) > 0.2 || math.Abs(std-2) > 0.2 {
		t.Errorf("noise: got mean %.3f std %.3f; want about 10 and 2", mean, std)
	}

	walk := run(t, sensor.SyntheticSpec{Wave: "walk", Step: 0.5, Offset: 3, Seed: 1, Count: 4000})
	var stepSq float64
	prev := 3.0
	for _, f := range walk {
		stepSq += (f.Values[0] - prev) * (f.Values[0] - prev)
		prev = f.Values[0]
	}
	if s := math.Sqrt(stepSq / float64(len(walk))); math.Abs(s-0.5) > 0.05 {
		t.Errorf("walk: got step size %.3f; want about 0.5", s)
	}
}

func TestPacedAndCancelled(t *testing.T) {
	sensortest.NoLeaks(t)
	src, err := synthetic.New(sensor.Spec{Name: "slow", Interval: 10 * time.Millisecond, Synthetic: sensor.SyntheticSpec{Count: 5}}, sensor.Deps{})
	if err != nil {
		t.Fatal(err)
	}
	var c sensortest.Collector
	start := time.Now()
	if err := src.Run(context.Background(), c.Emit); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 40*time.Millisecond {
		t.Errorf("5 frames 10ms apart: got %v; want at least 40ms", d)
	}

	forever, _ := synthetic.New(sensor.Spec{Name: "forever", Rate: 1000}, sensor.Deps{})
	var c2 sensortest.Collector
	r := sensortest.Start(t, forever, nil, c2.Emit)
	c2.WaitN(t, 3, 2*time.Second)
	if err := r.Stop(); err != nil {
		t.Errorf("Run after cancel: got %v; want nil", err)
	}
	n := len(c2.Frames())
	time.Sleep(20 * time.Millisecond)
	if got := len(c2.Frames()); got != n {
		t.Errorf("frames after Run returned: got %d; want %d", got, n)
	}
}

func TestValidation(t *testing.T) {
	tests := []struct {
		spec sensor.SyntheticSpec
		want string
	}{
		{sensor.SyntheticSpec{Wave: "square"}, `source "gen": synthetic.wave: "square" is not one of sine, noise, walk`},
		{sensor.SyntheticSpec{Channels: -1}, "synthetic.channels"},
		{sensor.SyntheticSpec{Period: -3}, "synthetic.period"},
		{sensor.SyntheticSpec{Step: -1}, "synthetic.step"},
		{sensor.SyntheticSpec{Count: -1}, "synthetic.count"},
		{sensor.SyntheticSpec{Wave: "noise", Phase: true}, "synthetic.phase"},
		{sensor.SyntheticSpec{Amplitude: math.Inf(1)}, "finite"},
	}
	for _, tt := range tests {
		_, err := synthetic.New(sensor.Spec{Name: "gen", Synthetic: tt.spec}, sensor.Deps{})
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%+v: got %v; want an error containing %q", tt.spec, err, tt.want)
		}
	}
}
