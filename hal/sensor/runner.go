package sensor

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"
)

// Runner states, as RunnerStats.State reports them.
const (
	StateRunning  = "running"  // Source.Run is executing
	StateBackoff  = "backoff"  // the source failed; waiting before restarting it
	StateFinished = "finished" // the source returned nil on its own (a finite replay)
	StateStopped  = "stopped"  // not started yet, or ctx was cancelled
)

// stableRun is how long a run must last to count as healthy even if it produced no frames
// (a slow poller), so that its next failure restarts it quickly again.
const stableRun = 10 * time.Second

// RunnerOptions tune a Runner; the zero value is usable.
type RunnerOptions struct {
	Logger     *slog.Logger     // default slog.Default()
	MinBackoff time.Duration    // first wait after a failure (default 200ms)
	MaxBackoff time.Duration    // cap of the doubling wait (default 30s)
	Now        func() time.Time // clock for frame times and error times (default time.Now)
}

// RunnerStats is a snapshot of a Runner for the status page and metrics.
type RunnerStats struct {
	Name, Kind  string
	State       string // StateRunning, StateBackoff, StateFinished or StateStopped
	Frames      uint64 // frames emitted
	Errors      uint64 // failed runs plus problems the source reported and skipped
	Restarts    uint64 // times the source was started again after failing
	LastError   string
	LastErrorAt time.Time
	Queue       QueueStats
}

// Runner owns one Source: it runs it, stamps and queues its frames, and restarts it with
// exponential backoff when it fails.
type Runner struct {
	spec     Spec
	src      Source
	log      *slog.Logger
	min, max time.Duration
	now      func() time.Time
	q        *Queue

	mu        sync.Mutex // guards the fields below; held while pushing so Seq order is queue order
	state     string
	seq       uint64
	frames    uint64
	errors    uint64
	restarts  uint64
	lastErr   string
	lastErrAt time.Time
}

// NewRunner returns a Runner for src, whose queue holds spec.Queue frames (DefaultQueue if 0).
func NewRunner(spec Spec, src Source, opt RunnerOptions) *Runner {
	r := &Runner{spec: spec, src: src, log: opt.Logger, min: opt.MinBackoff, max: opt.MaxBackoff, now: opt.Now, state: StateStopped}
	if r.log == nil {
		r.log = slog.Default()
	}
	r.log = r.log.With("source", spec.Name, "kind", spec.Kind)
	if r.min <= 0 {
		r.min = 200 * time.Millisecond
	}
	if r.max <= 0 {
		r.max = 30 * time.Second
	}
	if r.max < r.min {
		r.max = r.min
	}
	if r.now == nil {
		r.now = time.Now
	}
	capacity := spec.Queue
	if capacity <= 0 {
		capacity = DefaultQueue
	}
	r.q = NewQueue(capacity)
	return r
}

// Queue is where the frames go; it is closed when Run returns.
func (r *Runner) Queue() *Queue { return r.q }

// Run runs the source until ctx is cancelled or the source finishes, restarting it after
// failures. Call it once. When it returns, no goroutine of the source is left and the
// queue is closed (frames still in it can be popped).
func (r *Runner) Run(ctx context.Context) {
	defer r.q.Close()
	backoff := r.min
	for {
		r.setState(StateRunning)
		start := r.now()
		r.mu.Lock()
		framesBefore := r.frames
		r.mu.Unlock()

		life := &runLife{}
		err := r.src.Run(WithReport(ctx, r.report), func(f Frame) { r.emit(life, f) })
		r.mu.Lock()
		life.over = true // a source that keeps emit past its return is ignored, not trusted
		produced := r.frames > framesBefore
		r.mu.Unlock()

		if ctx.Err() != nil {
			r.setState(StateStopped)
			return
		}
		if err == nil {
			r.setState(StateFinished)
			r.log.Info("source finished")
			return
		}
		if produced || r.now().Sub(start) >= stableRun {
			backoff = r.min // it worked for a while: a new failure is news, not a loop
		}
		wait := jitter(backoff)
		r.mu.Lock()
		r.errors++
		r.lastErr = err.Error()
		r.lastErrAt = r.now()
		r.state = StateBackoff
		r.mu.Unlock()
		r.log.Warn("source failed; restarting after backoff", "err", err, "backoff", wait)

		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			r.setState(StateStopped)
			return
		case <-t.C:
		}
		backoff = min(backoff*2, r.max)
		r.mu.Lock()
		r.restarts++
		r.mu.Unlock()
	}
}

// runLife marks one Source.Run call; over is set (under Runner.mu) when it returned.
type runLife struct{ over bool }

func (r *Runner) emit(life *runLife, f Frame) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if life.over {
		return
	}
	r.seq++
	f.Source = r.spec.Name
	f.Seq = r.seq
	if f.Time.IsZero() {
		f.Time = r.now()
	}
	r.frames++
	r.q.Push(f)
}

func (r *Runner) report(err error) {
	r.mu.Lock()
	r.errors++
	r.lastErr = err.Error()
	r.lastErrAt = r.now()
	r.mu.Unlock()
	r.log.Warn("source skipped input", "err", err)
}

func (r *Runner) setState(s string) {
	r.mu.Lock()
	r.state = s
	r.mu.Unlock()
}

// Stats returns a snapshot.
func (r *Runner) Stats() RunnerStats {
	r.mu.Lock()
	defer r.mu.Unlock()
	return RunnerStats{
		Name: r.spec.Name, Kind: r.spec.Kind, State: r.state,
		Frames: r.frames, Errors: r.errors, Restarts: r.restarts,
		LastError: r.lastErr, LastErrorAt: r.lastErrAt,
		Queue: r.q.Stats(),
	}
}

// jitter shortens d by up to a quarter, so sources that failed together (a shared camera,
// a broker restart) do not all retry in step, while each wait stays longer than the last.
func jitter(d time.Duration) time.Duration {
	if q := int64(d / 4); q > 0 {
		return d - time.Duration(rand.Int64N(q))
	}
	return d
}
