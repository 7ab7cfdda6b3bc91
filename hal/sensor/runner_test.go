package sensor_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edge-agent/edge-agent/hal/sensor"
	"github.com/edge-agent/edge-agent/hal/sensor/internal/sensortest"
	"github.com/edge-agent/edge-agent/internal/testenv"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// sourceFunc adapts a function to sensor.Source.
type sourceFunc func(ctx context.Context, emit sensor.Emit) error

func (f sourceFunc) Run(ctx context.Context, emit sensor.Emit) error { return f(ctx, emit) }

// runInBackground starts r.Run and returns a function that waits for it to return.
func runInBackground(t *testing.T, ctx context.Context, r *sensor.Runner) (wait func()) {
	done := make(chan struct{})
	go func() {
		r.Run(ctx)
		close(done)
	}()
	return func() {
		t.Helper()
		select {
		case <-done:
		case <-time.After(3 * time.Second):
			t.Fatalf("Runner.Run did not return within 3s")
		}
	}
}

func TestRunnerRestartsWithGrowingBackoff(t *testing.T) {
	sensortest.NoLeaks(t)
	t0 := time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)
	var mu sync.Mutex
	var starts []time.Time
	src := sourceFunc(func(ctx context.Context, emit sensor.Emit) error {
		mu.Lock()
		starts = append(starts, time.Now())
		mu.Unlock()
		return errors.New("camera unplugged")
	})
	spec := sensor.Spec{Name: "cam", Kind: "command"}
	const minB, maxB = 25 * time.Millisecond, 100 * time.Millisecond
	r := sensor.NewRunner(spec, src, sensor.RunnerOptions{Logger: quiet, MinBackoff: minB, MaxBackoff: maxB, Now: func() time.Time { return t0 }})
	ctx, cancel := context.WithCancel(context.Background())
	wait := runInBackground(t, ctx, r)

	deadline := time.Now().Add(testenv.Patience(3 * time.Second))
	for r.Stats().Restarts < 5 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	st := r.Stats()
	if st.Restarts < 5 {
		t.Fatalf("Restarts: got %d after 3s; want at least 5", st.Restarts)
	}
	// Cancel while it is backing off: Run must return at once, not after the wait.
	for r.Stats().State != sensor.StateBackoff {
		time.Sleep(time.Millisecond)
	}
	cancel()
	wait()

	mu.Lock()
	defer mu.Unlock()
	var gaps []time.Duration
	for i := 1; i < len(starts); i++ {
		gaps = append(gaps, starts[i].Sub(starts[i-1]))
	}
	// Waits are the backoff minus up to a quarter of jitter: 25, 50, 100, 100 ms (capped).
	want := []time.Duration{minB, 2 * minB, maxB, maxB, maxB}
	for i, w := range want {
		if gaps[i] < w*3/4 {
			t.Errorf("gap %d: got %v; want at least %v", i, gaps[i], w*3/4)
		}
	}
	if !(gaps[0] < gaps[1] && gaps[1] < gaps[2]) {
		t.Errorf("gaps: got %v; want the first three growing", gaps[:3])
	}
	if gaps[4] > 3*maxB {
		t.Errorf("gap 4: got %v; want it capped near MaxBackoff %v", gaps[4], maxB)
	}

	st = r.Stats()
	if st.State != sensor.StateStopped {
		t.Errorf("State: got %q; want %q", st.State, sensor.StateStopped)
	}
	if st.Errors != uint64(len(starts)) || st.Restarts != uint64(len(starts)-1) {
		t.Errorf("Errors, Restarts: got %d, %d; want %d, %d", st.Errors, st.Restarts, len(starts), len(starts)-1)
	}
	if st.LastError != "camera unplugged" || !st.LastErrorAt.Equal(t0) {
		t.Errorf("LastError: got %q at %v; want %q at %v", st.LastError, st.LastErrorAt, "camera unplugged", t0)
	}
	if st.Name != "cam" || st.Kind != "command" {
		t.Errorf("Name, Kind: got %q, %q; want cam, command", st.Name, st.Kind)
	}
}

// A source that produced frames before failing is restarted after the minimum backoff, not
// after a wait that kept growing across unrelated failures.
func TestRunnerResetsBackoffAfterFrames(t *testing.T) {
	sensortest.NoLeaks(t)
	var mu sync.Mutex
	var starts []time.Time
	src := sourceFunc(func(ctx context.Context, emit sensor.Emit) error {
		mu.Lock()
		starts = append(starts, time.Now())
		mu.Unlock()
		emit(sensor.Frame{Values: []float64{1}})
		return errors.New("stream broke")
	})
	r := sensor.NewRunner(sensor.Spec{Name: "s", Queue: 100}, src, sensor.RunnerOptions{Logger: quiet, MinBackoff: 20 * time.Millisecond, MaxBackoff: time.Second})
	ctx, cancel := context.WithCancel(context.Background())
	wait := runInBackground(t, ctx, r)
	for r.Stats().Restarts < 4 {
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	wait()
	mu.Lock()
	defer mu.Unlock()
	for i := 1; i < len(starts); i++ {
		if gap := starts[i].Sub(starts[i-1]); gap > 150*time.Millisecond {
			t.Errorf("gap %d: got %v; want about MinBackoff (20ms) every time", i, gap)
		}
	}
}

func TestRunnerStampsFramesAndFinishes(t *testing.T) {
	sensortest.NoLeaks(t)
	t0 := time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)
	given := t0.Add(-time.Hour)
	src := sourceFunc(func(ctx context.Context, emit sensor.Emit) error {
		emit(sensor.Frame{Source: "ignored", Values: []float64{1}})
		emit(sensor.Frame{Values: []float64{2}, Time: given})
		emit(sensor.Frame{Values: []float64{3}})
		return nil // finite: done
	})
	r := sensor.NewRunner(sensor.Spec{Name: "replay", Kind: "csv"}, src, sensor.RunnerOptions{Logger: quiet, Now: func() time.Time { return t0 }})
	r.Run(context.Background()) // returns by itself

	tests := []struct {
		seq  uint64
		time time.Time
		v    float64
	}{{1, t0, 1}, {2, given, 2}, {3, t0, 3}}
	for _, tt := range tests {
		f, ok := r.Queue().Pop(context.Background())
		if !ok {
			t.Fatalf("Pop: got nothing; want frame %d", tt.seq)
		}
		if f.Source != "replay" || f.Seq != tt.seq || !f.Time.Equal(tt.time) || f.Values[0] != tt.v {
			t.Errorf("frame: got source %q seq %d time %v value %v; want replay %d %v %v", f.Source, f.Seq, f.Time, f.Values[0], tt.seq, tt.time, tt.v)
		}
	}
	if _, ok := r.Queue().Pop(context.Background()); ok {
		t.Errorf("Pop after the last frame: got a frame; want the queue closed")
	}
	st := r.Stats()
	if st.State != sensor.StateFinished || st.Frames != 3 || st.Errors != 0 || st.Restarts != 0 {
		t.Errorf("Stats: got %+v; want finished, 3 frames, no errors", st)
	}
	if st.Queue.Capacity != sensor.DefaultQueue {
		t.Errorf("Queue capacity: got %d; want default %d", st.Queue.Capacity, sensor.DefaultQueue)
	}
}

func TestRunnerCountsReportedProblems(t *testing.T) {
	sensortest.NoLeaks(t)
	reported := make(chan struct{})
	src := sourceFunc(func(ctx context.Context, emit sensor.Emit) error {
		sensor.Report(ctx, errors.New("bad.png: not a PNG"))
		close(reported)
		<-ctx.Done()
		return nil
	})
	r := sensor.NewRunner(sensor.Spec{Name: "folder", Kind: "file"}, src, sensor.RunnerOptions{Logger: quiet})
	ctx, cancel := context.WithCancel(context.Background())
	wait := runInBackground(t, ctx, r)
	<-reported
	st := r.Stats()
	if st.State != sensor.StateRunning || st.Errors != 1 || st.Restarts != 0 || st.LastError != "bad.png: not a PNG" {
		t.Errorf("Stats: got %+v; want running, 1 error, 0 restarts, LastError from the report", st)
	}
	cancel()
	wait()
	if st := r.Stats(); st.State != sensor.StateStopped {
		t.Errorf("State after cancel: got %q; want stopped", st.State)
	}
}

// A source that keeps its emit function past Run cannot push frames afterwards.
func TestRunnerIgnoresEmitAfterReturn(t *testing.T) {
	var kept sensor.Emit
	src := sourceFunc(func(ctx context.Context, emit sensor.Emit) error {
		kept = emit
		emit(sensor.Frame{})
		return nil
	})
	r := sensor.NewRunner(sensor.Spec{Name: "x"}, src, sensor.RunnerOptions{Logger: quiet})
	r.Run(context.Background())
	kept(sensor.Frame{})
	if st := r.Stats(); st.Frames != 1 || st.Queue.Pushed != 1 {
		t.Errorf("got Frames %d, Pushed %d; want 1, 1", st.Frames, st.Queue.Pushed)
	}
}

func TestRunnerLogsFailureWithSourceAndKind(t *testing.T) {
	var buf strings.Builder // written only by Run's goroutine (this one)
	logger := slog.New(slog.NewTextHandler(&buf, nil))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	calls := 0
	src := sourceFunc(func(context.Context, sensor.Emit) error {
		if calls++; calls == 2 {
			cancel()
		}
		return errors.New("boom")
	})
	sensor.NewRunner(sensor.Spec{Name: "cam", Kind: "http"}, src, sensor.RunnerOptions{Logger: logger, MinBackoff: time.Millisecond}).Run(ctx)
	for _, want := range []string{"source=cam", "kind=http", "err=boom", "backoff="} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("log: got %q; want it to contain %q", buf.String(), want)
		}
	}
}
