package simfleet

import (
	"context"
	"encoding/json"
	"errors"
	"math"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/edge-agent/edge-agent/agent/command"
	"github.com/edge-agent/edge-agent/agent/link"
)

func read(t *testing.T, q *Queue, after uint64, max, maxBytes int) []uint64 {
	t.Helper()
	var seqs []uint64
	n, err := q.Read(context.Background(), after, max, maxBytes, func(seq uint64, _ []byte) { seqs = append(seqs, seq) })
	if err != nil || n != len(seqs) {
		t.Fatalf("Read(after %d): n %d, err %v, seqs %v", after, n, err, seqs)
	}
	return seqs
}

// The queue reads in seq order within the limits, deletes on Ack, and at its cap drops the
// oldest record and counts it.
func TestQueue(t *testing.T) {
	q := NewQueue(3)
	for range 5 {
		q.Append([]byte(`{"v":1}`))
	}
	if st := q.Stats(); st.Count != 3 || st.Appended != 5 || st.Dropped != 2 || st.Bytes != 3*7 {
		t.Fatalf("stats %+v; want 3 kept of 5 appended, 2 dropped, 21 bytes", st)
	}
	if got := read(t, q, 0, 10, 1000); !slices.Equal(got, []uint64{3, 4, 5}) {
		t.Errorf("read from the start: %v; want the 3 kept, 3..5", got)
	}
	if got := read(t, q, 3, 1, 1000); !slices.Equal(got, []uint64{4}) {
		t.Errorf("read after 3, max 1: %v; want [4]", got)
	}
	if got := read(t, q, 0, 10, 10); !slices.Equal(got, []uint64{3}) {
		t.Errorf("read within 10 bytes: %v; want one record (always at least one)", got)
	}
	if err := q.Ack(context.Background(), 4); err != nil {
		t.Fatal(err)
	}
	if st := q.Stats(); st.Count != 1 || st.AckedThrough != 4 {
		t.Errorf("after Ack(4): %+v; want 1 left, acked through 4", st)
	}
	if got := read(t, q, 0, 10, 1000); !slices.Equal(got, []uint64{5}) {
		t.Errorf("read after the ack: %v; want [5]", got)
	}

	// Nothing after 5: Read waits for the next Append, or for ctx.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if n, err := q.Read(ctx, 5, 10, 1000, func(uint64, []byte) {}); n != 0 || !errors.Is(err, context.Canceled) {
		t.Errorf("Read on an ended ctx: %d, %v; want 0, context.Canceled", n, err)
	}
	got := make(chan []uint64, 1)
	go func() {
		var seqs []uint64
		q.Read(context.Background(), 5, 10, 1000, func(seq uint64, _ []byte) { seqs = append(seqs, seq) })
		got <- seqs
	}()
	q.Append([]byte(`{"v":2}`))
	select {
	case seqs := <-got:
		if !slices.Equal(seqs, []uint64{6}) {
			t.Errorf("waiting Read got %v; want [6]", seqs)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a waiting Read did not return after Append")
	}
}

// The simulated deploy refuses what the agent's deploy refuses, and otherwise reports
// progress up to 1 and finishes done without installing.
func TestDeployHandler(t *testing.T) {
	d := &device{id: "sim-1", cfg: &Config{DeployTime: 40 * time.Millisecond}}
	good := `{"url": "https://bundles.invalid/b.tar.gz", "sha256": "` + strings.Repeat("ab", 32) + `"}`
	for _, tc := range []struct{ args, want string }{
		{`{}`, "deploy needs args"},
		{`{"url": "https://x.invalid/b"}`, "deploy needs args"},
		{`[1]`, "deploy needs args"},
		{`{"url": "https://x.invalid/b", "sha256": "abc"}`, "not 64 hex digits"},
		{`{"url": "ftp://x.invalid/b", "sha256": "` + strings.Repeat("0", 64) + `"}`, "http"},
	} {
		_, err := d.deploy(context.Background(), command.Command{Args: json.RawMessage(tc.args)}, func(float64, string) {})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("deploy %s: %v; want an error saying %q", tc.args, err, tc.want)
		}
	}
	var fractions []float64
	res, err := d.deploy(context.Background(), command.Command{Args: json.RawMessage(good)}, func(f float64, _ string) { fractions = append(fractions, f) })
	if err != nil {
		t.Fatalf("deploy %s: %v", good, err)
	}
	if len(fractions) < 2 || fractions[len(fractions)-1] != 1 || !slices.IsSorted(fractions) {
		t.Errorf("progress %v; want rising fractions ending at 1", fractions)
	}
	if m, ok := res.(map[string]any); !ok || m["simulated"] != true || m["installed"] != false {
		t.Errorf("result %v; want simulated, not installed", res)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := d.deploy(ctx, command.Command{Args: json.RawMessage(good)}, func(float64, string) {}); !errors.Is(err, context.Canceled) {
		t.Errorf("deploy on an ended ctx: %v; want context.Canceled", err)
	}
}

// Replay memory: a repeated id is seen until it expires; only the most recent ids are kept.
func TestMemIDs(t *testing.T) {
	m := newMemIDs(2)
	later := time.Now().Add(time.Hour)
	for _, step := range []struct {
		id    string
		until time.Time
		seen  bool
	}{
		{"a", later, false}, {"a", later, true},
		{"old", time.Now().Add(-time.Second), false}, {"old", later, false}, // expired: taken as new
		{"b", later, false}, // "a" is now the oldest of three and forgotten
		{"a", later, false},
	} {
		if seen, err := m.remember(step.id, step.until); err != nil || seen != step.seen {
			t.Errorf("remember %s: %v, %v; want %v", step.id, seen, err, step.seen)
		}
	}
	if len(m.until) > 2 || len(m.order) > 2 {
		t.Errorf("memory holds %d ids (%d in order); want at most 2", len(m.until), len(m.order))
	}
}

// New refuses a configuration it cannot run, naming what is wrong, and names the devices.
func TestNew(t *testing.T) {
	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Config{Devices: 0, Group: "g"}, "outside 1.."},
		{Config{Devices: 1}, "no group"},
		{Config{Devices: 1, Group: "g", ResultsPerSec: math.NaN()}, "results per second"},
		{Config{Devices: 1, Group: "g", ResultsPerSec: -1}, "results per second"},
		{Config{Devices: 1, Group: "g", Link: link.Config{Broker: "ws://x"}}, "mqtt.broker"},
	} {
		if _, err := New(tc.cfg); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("New(%+v): %v; want an error saying %q", tc.cfg, err, tc.want)
		}
	}
	f, err := New(Config{Devices: 3, Group: "g"})
	if err != nil {
		t.Fatal(err)
	}
	if got := f.IDs(); !slices.Equal(got, []string{"sim-1", "sim-2", "sim-3"}) {
		t.Errorf("ids %v; want sim-1..sim-3", got)
	}
}
