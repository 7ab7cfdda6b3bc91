// Package sensortest holds helpers for the tests of hal/sensor and its kinds: locating the
// test data, collecting frames and reports, running a source in the background and
// checking that no goroutine outlives a test. Only tests import it.
package sensortest

import (
	"context"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edge-agent/edge-agent/hal/sensor"
	"github.com/edge-agent/edge-agent/internal/testenv"
)

// Testdata returns the repository's testdata folder; a missing folder fails the test.
func Testdata(t testing.TB) string { return testenv.DataDir(t) }

// NoLeaks fails the test if, once the test and its other cleanups are done, more goroutines
// are running than when NoLeaks was called. Call it first in a test that is not parallel.
func NoLeaks(t testing.TB) {
	t.Helper()
	before := runtime.NumGoroutine()
	t.Cleanup(func() {
		deadline := time.Now().Add(3 * time.Second)
		for runtime.NumGoroutine() > before {
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<20)
				buf = buf[:runtime.Stack(buf, true)]
				t.Errorf("goroutines: got %d; want at most %d (leak):\n%s", runtime.NumGoroutine(), before, buf)
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
	})
}

// Collector gathers emitted frames; safe for concurrent use.
type Collector struct {
	mu     sync.Mutex
	frames []sensor.Frame
}

// Emit is a sensor.Emit.
func (c *Collector) Emit(f sensor.Frame) {
	c.mu.Lock()
	c.frames = append(c.frames, f)
	c.mu.Unlock()
}

// Frames returns a copy of what was emitted so far.
func (c *Collector) Frames() []sensor.Frame {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]sensor.Frame(nil), c.frames...)
}

// WaitN waits until at least n frames arrived and returns them all; it fails the test after
// timeout.
func (c *Collector) WaitN(t testing.TB, n int, timeout time.Duration) []sensor.Frame {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		f := c.Frames()
		if len(f) >= n {
			return f
		}
		if time.Now().After(deadline) {
			t.Fatalf("frames: got %d after %v; want at least %d", len(f), timeout, n)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// Reports gathers what a source passed to sensor.Report; safe for concurrent use.
type Reports struct {
	mu   sync.Mutex
	errs []error
}

// Context returns ctx with r installed as the reporter.
func (r *Reports) Context(ctx context.Context) context.Context {
	return sensor.WithReport(ctx, func(err error) {
		r.mu.Lock()
		r.errs = append(r.errs, err)
		r.mu.Unlock()
	})
}

// Errors returns a copy of the reported errors.
func (r *Reports) Errors() []error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]error(nil), r.errs...)
}

// WaitContains waits until a reported error contains substr.
func (r *Reports) WaitContains(t testing.TB, substr string, timeout time.Duration) error {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		for _, err := range r.Errors() {
			if strings.Contains(err.Error(), substr) {
				return err
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("reports: got %v after %v; want one containing %q", r.Errors(), timeout, substr)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// Running is a source started by Start.
type Running struct {
	t      testing.TB
	cancel context.CancelFunc
	done   chan struct{}
	err    error // what Run returned; valid once done is closed
}

// Start runs src in the background with the reporter rep (may be nil) and emit. Stop (also
// registered as a cleanup) cancels it; Wait waits for it to return on its own.
func Start(t testing.TB, src sensor.Source, rep *Reports, emit sensor.Emit) *Running {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	if rep != nil {
		ctx = rep.Context(ctx)
	}
	r := &Running{t: t, cancel: cancel, done: make(chan struct{})}
	go func() {
		r.err = src.Run(ctx, emit)
		close(r.done)
	}()
	t.Cleanup(func() { r.Stop() })
	return r
}

// Stop cancels the source and returns what Run returned. A source must return promptly
// when cancelled: Stop fails the test if it takes more than 3 s.
func (r *Running) Stop() error {
	r.t.Helper()
	r.cancel()
	return r.Wait(3 * time.Second)
}

// Wait waits up to timeout for Run to return and returns its error.
func (r *Running) Wait(timeout time.Duration) error {
	r.t.Helper()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-r.done:
		return r.err
	case <-t.C:
		r.t.Fatalf("source Run did not return within %v", timeout)
		return nil
	}
}
