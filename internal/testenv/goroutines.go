package testenv

import (
	"runtime"
	"testing"
	"time"
)

// WaitGoroutines waits up to within for the number of goroutines to fall back to baseline
// (what a part started may take a moment to end after Close or cancel), then fails the test
// with every goroutine's stack.
func WaitGoroutines(t testing.TB, baseline int, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for runtime.NumGoroutine() > baseline {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("goroutines: %d after stop; want at most %d as before it started\n%s",
				runtime.NumGoroutine(), baseline, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// NoGoroutineLeaks fails the test if goroutines started during it outlive it (5 s grace).
// Call it first, so its cleanup runs after the others (Close).
func NoGoroutineLeaks(t testing.TB) {
	t.Helper()
	baseline := runtime.NumGoroutine()
	t.Cleanup(func() { WaitGoroutines(t, baseline, 5*time.Second) })
}
