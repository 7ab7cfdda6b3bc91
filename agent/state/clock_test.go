package state

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The command clock only moves forward, survives a reopen (a restart), and a damaged file
// gives its modification time with a warning instead of stopping the agent.
func TestCommandClock(t *testing.T) {
	path := filepath.Join(t.TempDir(), "command-clock.json")
	c, err := OpenClock(path)
	if err != nil || !c.High().IsZero() || c.Warning != "" {
		t.Fatalf("new clock: %v, high %v, warning %q", err, c.High(), c.Warning)
	}
	t1 := time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)
	if err := c.Advance(t1); err != nil {
		t.Fatal(err)
	}
	if err := c.Advance(t1.Add(-time.Hour)); err != nil || !c.High().Equal(t1) {
		t.Fatalf("an earlier time moved the clock back: %v, high %v", err, c.High())
	}
	c2, err := OpenClock(path)
	if err != nil || !c2.High().Equal(t1) {
		t.Fatalf("after reopening: %v, high %v; want %v", err, c2.High(), t1)
	}
	os.WriteFile(path, []byte("{torn"), 0o600)
	mt := time.Date(2026, 12, 3, 13, 0, 0, 0, time.UTC)
	os.Chtimes(path, mt, mt)
	c3, err := OpenClock(path)
	if err != nil || !c3.High().Equal(mt) || !c3.NotBefore().Equal(mt) || !strings.Contains(c3.Warning, "damaged") {
		t.Fatalf("damaged file: %v, high %v, warning %q; want the file's mtime %v and a warning", err, c3.High(), c3.Warning, mt)
	}
	if err := c3.Advance(mt.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	if c4, err := OpenClock(path); err != nil || c4.Warning != "" || !c4.High().Equal(mt.Add(time.Minute)) {
		t.Fatalf("rewritten file: %v, %q, %v", err, c4.Warning, c4.High())
	}
}

// RefuseBefore persists, only moves forward, and Advance keeps it.
func TestClockRefuseBefore(t *testing.T) {
	path := filepath.Join(t.TempDir(), "command-clock.json")
	c, _ := OpenClock(path)
	t1 := time.Date(2026, 12, 4, 3, 0, 0, 0, time.UTC)
	if err := c.RefuseBefore(t1); err != nil {
		t.Fatal(err)
	}
	c.RefuseBefore(t1.Add(-time.Hour))
	c.Advance(t1.Add(time.Minute))
	c2, err := OpenClock(path)
	if err != nil || !c2.NotBefore().Equal(t1) || !c2.High().Equal(t1.Add(time.Minute)) {
		t.Fatalf("reopened: %v, not before %v, high %v; want %v and %v", err, c2.NotBefore(), c2.High(), t1, t1.Add(time.Minute))
	}
}
