package pace

import (
	"context"
	"testing"
	"time"
)

func TestPacerSpacesFrames(t *testing.T) {
	p := Pacer{Period: 15 * time.Millisecond}
	start := time.Now()
	for range 4 {
		if !p.Wait(context.Background()) {
			t.Fatal("Wait: got false; want true")
		}
	}
	if d := time.Since(start); d < 45*time.Millisecond {
		t.Errorf("4 waits 15ms apart: got %v; want at least 45ms (the first is immediate)", d)
	}

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if (&Pacer{}).Wait(ctx) || p.Wait(ctx) {
		t.Errorf("Wait on a cancelled ctx: got true; want false")
	}
}

func TestGate(t *testing.T) {
	t0 := time.Unix(0, 0)
	g := Gate{Period: 10 * time.Millisecond}
	tests := []struct {
		at   time.Duration
		want bool
	}{{0, true}, {5 * time.Millisecond, false}, {10 * time.Millisecond, true}, {19 * time.Millisecond, false}, {25 * time.Millisecond, true}}
	for _, tt := range tests {
		if got := g.Allow(t0.Add(tt.at)); got != tt.want {
			t.Errorf("Allow at %v: got %v; want %v", tt.at, got, tt.want)
		}
	}
	open := Gate{}
	if !open.Allow(t0) || !open.Allow(t0) {
		t.Errorf("zero Period: got a frame dropped; want all through")
	}
}
