package testenv

import (
	"os"
	"strconv"
	"testing"
	"time"
)

// DefaultPatience multiplies every wait's deadline. Deadlines are written for an idle machine;
// CI runs the race detector on a busy 2-core machine, several times slower. A wait ends as soon
// as its condition holds, so a longer deadline costs time only when a test fails.
const DefaultPatience = 4

// Patience is d scaled by EDGE_TEST_PATIENCE (a positive number; default DefaultPatience).
func Patience(d time.Duration) time.Duration {
	f := float64(DefaultPatience)
	if v, err := strconv.ParseFloat(os.Getenv("EDGE_TEST_PATIENCE"), 64); err == nil && v > 0 {
		f = v
	}
	return time.Duration(float64(d) * f)
}

// Eventually polls cond every poll until it holds, and fails the test when it has not held
// within Patience(within), saying what it waited for (what is called only then).
func Eventually(t testing.TB, within, poll time.Duration, what func() string, cond func() bool) {
	t.Helper()
	limit := Patience(within)
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", limit, what())
		}
		time.Sleep(poll)
	}
}
