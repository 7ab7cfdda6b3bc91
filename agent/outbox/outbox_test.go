package outbox

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/edge-agent/edge-agent/internal/testenv"
)

var quiet = slog.New(slog.DiscardHandler)

// openT opens an outbox with stream "results" (caps c) unless opt declares streams, and
// closes it when the test ends.
func openT(t testing.TB, path string, opt Options, c Caps) *Outbox {
	t.Helper()
	if opt.Streams == nil {
		opt.Streams = map[string]Caps{"results": c}
	}
	if opt.Logger == nil {
		opt.Logger = quiet
	}
	o, err := Open(path, opt)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() {
		if err := o.Close(); err != nil && !errors.Is(err, ErrClosed) {
			t.Errorf("Close: %v", err)
		}
	})
	return o
}

func closeT(t testing.TB, o *Outbox) {
	t.Helper()
	if err := o.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
}

func appendT(t testing.TB, s *Stream, data string) uint64 {
	t.Helper()
	seq, err := s.Append(context.Background(), []byte(data))
	if err != nil {
		t.Fatalf("Append(%q): %v", data, err)
	}
	return seq
}

type rec struct {
	seq  uint64
	data string
}

// readAll returns every record with seq > after, without waiting.
func readAll(t testing.TB, s *Stream, after uint64) []rec {
	t.Helper()
	var got []rec
	for {
		st := s.Stats()
		if st.Count == 0 || st.LastSeq <= after {
			return got
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err := s.Read(ctx, after, 1000, 1<<20, func(seq uint64, data []byte) {
			got = append(got, rec{seq, string(data)})
			after = seq
		})
		cancel()
		if err != nil {
			t.Fatalf("Read: %v", err)
		}
	}
}

func seqs(recs []rec) []uint64 {
	var out []uint64
	for _, r := range recs {
		out = append(out, r.seq)
	}
	return out
}

func seqRange(from, to uint64) []uint64 {
	var out []uint64
	for s := from; s <= to; s++ {
		out = append(out, s)
	}
	return out
}

func eqSeqs(a, b []uint64) bool { return fmt.Sprint(a) == fmt.Sprint(b) }

// waitFor polls cond until it holds; it fails the test after a generous deadline.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	testenv.Eventually(t, 10*time.Second, time.Millisecond, func() string { return what }, cond)
}

func TestRoundTripAndReopen(t *testing.T) {
	testenv.NoGoroutineLeaks(t)
	path := filepath.Join(t.TempDir(), "sub", "outbox.db")
	o := openT(t, path, Options{}, Caps{})
	s := o.Stream("results")
	if o.Stream("nope") != nil {
		t.Errorf("Stream(undeclared): got a stream; want nil")
	}
	for i := 1; i <= 10; i++ {
		if got := appendT(t, s, fmt.Sprintf("record-%02d", i)); got != uint64(i) {
			t.Fatalf("Append #%d: got seq %d; want %d", i, got, i)
		}
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("file mode: got %v (%v); want 0600", fi.Mode().Perm(), err)
	}

	all := readAll(t, s, 0)
	if !eqSeqs(seqs(all), seqRange(1, 10)) {
		t.Fatalf("Read: got seqs %v; want 1..10", seqs(all))
	}
	for _, r := range all {
		if want := fmt.Sprintf("record-%02d", r.seq); r.data != want {
			t.Errorf("seq %d: got %q; want %q", r.seq, r.data, want)
		}
	}

	// Limits: max, maxBytes (each record is 9 bytes), and at least one record.
	ctx := context.Background()
	for _, tc := range []struct {
		after         uint64
		max, maxBytes int
		want          []uint64
	}{
		{0, 3, 1000, []uint64{1, 2, 3}},
		{4, 100, 20, []uint64{5, 6}},
		{4, 100, 1, []uint64{5}},
		{8, 0, 0, []uint64{9, 10}},
	} {
		var got []uint64
		n, err := s.Read(ctx, tc.after, tc.max, tc.maxBytes, func(seq uint64, _ []byte) { got = append(got, seq) })
		if err != nil || n != len(got) || !eqSeqs(got, tc.want) {
			t.Errorf("Read(after %d, max %d, maxBytes %d): got %v, n %d, %v; want %v", tc.after, tc.max, tc.maxBytes, got, n, err, tc.want)
		}
	}

	if err := s.Ack(ctx, 5); err != nil {
		t.Fatalf("Ack: %v", err)
	}
	if got := seqs(readAll(t, s, 0)); !eqSeqs(got, seqRange(6, 10)) {
		t.Fatalf("after Ack(5): got %v; want 6..10", got)
	}
	st := s.Stats()
	if st.Count != 5 || st.Bytes != 45 || st.LastSeq != 10 || st.Appended != 10 || st.Acked != 5 || st.OldestTS.IsZero() {
		t.Errorf("Stats: got %+v; want count 5, bytes 45, last 10, appended 10, acked 5, an oldest time", st)
	}

	closeT(t, o)
	o = openT(t, path, Options{}, Caps{})
	s = o.Stream("results")
	if got := s.Stats(); got.Count != st.Count || got.Bytes != st.Bytes || got.LastSeq != 10 || got.Appended != 10 || got.Acked != 5 || !got.OldestTS.Equal(st.OldestTS) {
		t.Errorf("Stats after reopen: got %+v; want %+v", got, st)
	}
	if got := appendT(t, s, "after-reopen"); got != 11 {
		t.Errorf("Append after reopen: got seq %d; want 11", got)
	}
	// Emptied, the stream still never reuses a sequence number.
	if err := s.Ack(ctx, 11); err != nil {
		t.Fatal(err)
	}
	closeT(t, o)
	o = openT(t, path, Options{}, Caps{})
	s = o.Stream("results")
	if st := s.Stats(); st.Count != 0 || st.Bytes != 0 || !st.OldestTS.IsZero() || st.LastSeq != 11 {
		t.Errorf("Stats of the emptied stream after reopen: got %+v; want empty, last 11", st)
	}
	if got := appendT(t, s, "again"); got != 12 {
		t.Errorf("Append to the emptied stream after reopen: got seq %d; want 12", got)
	}
}

func TestStreamsAreIndependent(t *testing.T) {
	testenv.NoGoroutineLeaks(t)
	o := openT(t, filepath.Join(t.TempDir(), "o.db"), Options{Streams: map[string]Caps{"results": {}, "events": {MaxCount: 1}}}, Caps{})
	r, e := o.Stream("results"), o.Stream("events")
	appendT(t, r, "r1")
	appendT(t, e, "e1")
	appendT(t, e, "e2")
	appendT(t, r, "r2")
	if got := readAll(t, r, 0); len(got) != 2 || got[0] != (rec{1, "r1"}) || got[1] != (rec{2, "r2"}) {
		t.Errorf("results: got %v; want [{1 r1} {2 r2}]", got)
	}
	if got := readAll(t, e, 0); len(got) != 1 || got[0] != (rec{2, "e2"}) {
		t.Errorf("events: got %v; want [{2 e2}]", got)
	}
	st := o.Stats()
	if len(st.Streams) != 2 || st.Streams["events"].Dropped.Oldest != 1 || st.Streams["results"].Count != 2 || st.FileBytes == 0 {
		t.Errorf("Stats: got %+v", st)
	}
}

func TestConcurrentAppendsShareCommits(t *testing.T) {
	testenv.NoGoroutineLeaks(t)
	o := openT(t, filepath.Join(t.TempDir(), "o.db"), Options{}, Caps{})
	s := o.Stream("results")
	const writers, each = 64, 50
	var mu sync.Mutex
	bySeq := map[uint64]string{}
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := range each {
				data := fmt.Sprintf("w%d-i%d", w, i)
				seq, err := s.Append(context.Background(), []byte(data))
				if err != nil {
					t.Errorf("Append: %v", err)
					return
				}
				mu.Lock()
				if prev, dup := bySeq[seq]; dup {
					t.Errorf("seq %d given to %q and %q", seq, prev, data)
				}
				bySeq[seq] = data
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	const n = writers * each
	if len(bySeq) != n {
		t.Fatalf("got %d distinct seqs; want %d", len(bySeq), n)
	}
	got := readAll(t, s, 0)
	if !eqSeqs(seqs(got), seqRange(1, n)) {
		t.Fatalf("stored seqs are not 1..%d", n)
	}
	for _, r := range got {
		if bySeq[r.seq] != r.data {
			t.Errorf("seq %d: stored %q; Append of %q returned it", r.seq, r.data, bySeq[r.seq])
		}
	}
	st := o.Stats()
	if st.Commits >= n {
		t.Errorf("Commits: got %d for %d appends; want fewer (group commit)", st.Commits, n)
	}
	t.Logf("%d appends in %d commits", n, st.Commits)
}

func TestDropOldest(t *testing.T) {
	testenv.NoGoroutineLeaks(t)
	path := filepath.Join(t.TempDir(), "o.db")
	o := openT(t, path, Options{}, Caps{MaxCount: 10})
	s := o.Stream("results")
	const k = 3
	for i := 1; i <= 10+k; i++ {
		appendT(t, s, fmt.Sprint("r", i))
	}
	st := s.Stats()
	if st.Count != 10 || st.Dropped != (Dropped{Oldest: k}) || st.Appended != 10+k {
		t.Errorf("Stats: got %+v; want count 10, dropped oldest %d", st, k)
	}
	if got := seqs(readAll(t, s, 0)); !eqSeqs(got, seqRange(k+1, 10+k)) {
		t.Errorf("records: got %v; want %d..%d (the oldest %d evicted)", got, k+1, 10+k, k)
	}
}

func TestMaxBytes(t *testing.T) {
	testenv.NoGoroutineLeaks(t)
	o := openT(t, filepath.Join(t.TempDir(), "o.db"), Options{MaxRecord: 64}, Caps{MaxBytes: 100})
	s := o.Stream("results")
	rec30 := strings.Repeat("x", 30)
	for range 4 {
		appendT(t, s, rec30)
	}
	if st := s.Stats(); st.Count != 3 || st.Bytes != 90 || st.Dropped.Oldest != 1 {
		t.Errorf("Stats: got %+v; want 3 records, 90 bytes, 1 dropped", st)
	}
	if got := seqs(readAll(t, s, 0)); !eqSeqs(got, []uint64{2, 3, 4}) {
		t.Errorf("records: got %v; want [2 3 4]", got)
	}
	for _, n := range []int{65, 101} {
		if _, err := s.Append(context.Background(), make([]byte, n)); !errors.Is(err, ErrTooLarge) {
			t.Errorf("Append of %d bytes: got %v; want ErrTooLarge", n, err)
		}
	}
	o2 := openT(t, filepath.Join(t.TempDir(), "o.db"), Options{MaxRecord: 1000}, Caps{MaxBytes: 100})
	if _, err := o2.Stream("results").Append(context.Background(), make([]byte, 101)); !errors.Is(err, ErrTooLarge) {
		t.Errorf("Append larger than the stream's MaxBytes: got %v; want ErrTooLarge", err)
	}
}

func TestDropNewest(t *testing.T) {
	testenv.NoGoroutineLeaks(t)
	o := openT(t, filepath.Join(t.TempDir(), "o.db"), Options{}, Caps{MaxCount: 5, Policy: DropNewest})
	s := o.Stream("results")
	for i := 1; i <= 5; i++ {
		appendT(t, s, fmt.Sprint("r", i))
	}
	for range 2 {
		if seq, err := s.Append(context.Background(), []byte("refused")); !errors.Is(err, ErrFull) || seq != 0 {
			t.Errorf("Append to a full drop-newest stream: got %d, %v; want ErrFull", seq, err)
		}
	}
	if st := s.Stats(); st.Count != 5 || st.Dropped != (Dropped{Newest: 2}) || st.LastSeq != 5 {
		t.Errorf("Stats: got %+v; want 5 records, 2 refused, last seq 5", st)
	}
	if err := s.Ack(context.Background(), 2); err != nil {
		t.Fatal(err)
	}
	if got := appendT(t, s, "r6"); got != 6 {
		t.Errorf("Append after Ack: got seq %d; want 6 (refused records take no seq)", got)
	}
}

func TestBlock(t *testing.T) {
	testenv.NoGoroutineLeaks(t)
	o := openT(t, filepath.Join(t.TempDir(), "o.db"), Options{}, Caps{MaxCount: 3, Policy: Block})
	s := o.Stream("results")
	for i := 1; i <= 3; i++ {
		appendT(t, s, fmt.Sprint("r", i))
	}
	type res struct {
		seq uint64
		err error
	}
	appendAsync := func(ctx context.Context, data string) chan res {
		ch := make(chan res, 1)
		go func() {
			seq, err := s.Append(ctx, []byte(data))
			ch <- res{seq, err}
		}()
		return ch
	}
	parked := func(n int32) func() bool { return func() bool { return s.nparked.Load() == n } }

	// Parked until an Ack makes room, then stored.
	r4 := appendAsync(context.Background(), "r4")
	waitFor(t, "the append to park", parked(1))
	select {
	case r := <-r4:
		t.Fatalf("Append to a full block stream returned %+v before any Ack", r)
	default:
	}
	if err := s.Ack(context.Background(), 1); err != nil {
		t.Fatal(err)
	}
	if r := <-r4; r.err != nil || r.seq != 4 {
		t.Fatalf("parked Append after Ack: got %+v; want seq 4", r)
	}

	// Given up while parked: never stored.
	ctx, cancel := context.WithCancel(context.Background())
	r5 := appendAsync(ctx, "given-up")
	waitFor(t, "the append to park", parked(1))
	cancel()
	if r := <-r5; !errors.Is(r.err, context.Canceled) {
		t.Fatalf("cancelled parked Append: got %+v; want context.Canceled", r)
	}
	if err := s.Ack(context.Background(), 2); err != nil {
		t.Fatal(err)
	}
	if got := appendT(t, s, "r5"); got != 5 {
		t.Errorf("Append after a cancelled one: got seq %d; want 5 (the cancelled one was not stored)", got)
	}
	if got := readAll(t, s, 0); len(got) != 3 || got[0].data != "r3" || got[1].data != "r4" || got[2].data != "r5" {
		t.Errorf("records: got %v; want r3 r4 r5", got)
	}
	if st := s.Stats(); st.Dropped != (Dropped{}) {
		t.Errorf("Dropped: got %+v; want none (block drops nothing)", st.Dropped)
	}

	// Still parked at Close: ErrClosed.
	r6 := appendAsync(context.Background(), "r6")
	waitFor(t, "the append to park", parked(1))
	closeT(t, o)
	if r := <-r6; !errors.Is(r.err, ErrClosed) {
		t.Errorf("Append parked at Close: got %+v; want ErrClosed", r)
	}
}

// clock is a settable clock for MaxAge tests.
type clock struct{ ns atomic.Int64 }

func newClock(t time.Time) *clock    { c := &clock{}; c.ns.Store(t.UnixNano()); return c }
func (c *clock) Now() time.Time      { return time.Unix(0, c.ns.Load()) }
func (c *clock) Add(d time.Duration) { c.ns.Add(int64(d)) }

func TestMaxAge(t *testing.T) {
	testenv.NoGoroutineLeaks(t)
	t0 := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	clk := newClock(t0)
	o := openT(t, filepath.Join(t.TempDir(), "o.db"), Options{Now: clk.Now, tick: 5 * time.Millisecond}, Caps{MaxAge: time.Minute})
	s := o.Stream("results")
	for range 3 {
		appendT(t, s, "old")
	}
	if got := s.Stats().OldestTS; !got.Equal(t0) {
		t.Errorf("OldestTS: got %v; want %v", got, t0)
	}
	clk.Add(30 * time.Second)
	appendT(t, s, "newer")
	clk.Add(31 * time.Second) // the first three are now 61 s old, "newer" 31 s
	appendT(t, s, "newest")   // the commit expires them
	st := s.Stats()
	if st.Count != 2 || st.Dropped != (Dropped{Age: 3}) || !st.OldestTS.Equal(t0.Add(30*time.Second)) {
		t.Errorf("Stats after the expiring commit: got %+v; want 2 records, 3 expired, oldest at t0+30s", st)
	}
	if got := readAll(t, s, 0); len(got) != 2 || got[0].data != "newer" || got[1].data != "newest" {
		t.Errorf("records: got %v; want newer, newest", got)
	}
	// A quiet stream ages out on the timer.
	clk.Add(10 * time.Minute)
	waitFor(t, "the quiet stream to age out", func() bool { return s.Stats().Count == 0 })
	if st := s.Stats(); st.Dropped != (Dropped{Age: 5}) || !st.OldestTS.IsZero() || st.Bytes != 0 {
		t.Errorf("Stats after aging out: got %+v; want empty, 5 expired", st)
	}
}

func TestCountersSurviveReopen(t *testing.T) {
	testenv.NoGoroutineLeaks(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "o.db")
	clk := newClock(time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC))
	opt := Options{
		Now: clk.Now,
		Streams: map[string]Caps{
			"old": {MaxCount: 2},
			"new": {MaxCount: 2, Policy: DropNewest},
			"age": {MaxAge: time.Hour},
		},
	}
	o := openT(t, path, opt, Caps{})
	for range 5 {
		appendT(t, o.Stream("old"), "o")
		o.Stream("new").Append(context.Background(), []byte("n"))
	}
	appendT(t, o.Stream("age"), "a")
	clk.Add(2 * time.Hour)
	appendT(t, o.Stream("age"), "b")
	if err := o.Stream("old").Ack(context.Background(), 4); err != nil {
		t.Fatal(err)
	}
	want := o.Stats().Streams
	closeT(t, o)

	o = openT(t, path, opt, Caps{})
	got := o.Stats().Streams
	for name, w := range want {
		if g := got[name]; fmt.Sprint(g) != fmt.Sprint(w) {
			t.Errorf("stream %q after reopen: got %+v; want %+v", name, g, w)
		}
	}
	if d := got["old"].Dropped.Oldest; d != 3 {
		t.Errorf("old: Dropped.Oldest %d; want 3", d)
	}
	if d := got["new"].Dropped.Newest; d != 3 {
		t.Errorf("new: Dropped.Newest %d; want 3", d)
	}
	if d := got["age"].Dropped.Age; d != 1 {
		t.Errorf("age: Dropped.Age %d; want 1", d)
	}
	if a := got["old"]; a.Acked != 1 || a.Count != 1 || a.Appended != 5 {
		t.Errorf("old: got %+v; want acked 1, count 1, appended 5", a)
	}
}

func TestReadWaitsForAppend(t *testing.T) {
	testenv.NoGoroutineLeaks(t)
	o := openT(t, filepath.Join(t.TempDir(), "o.db"), Options{}, Caps{})
	s := o.Stream("results")

	// A reader following the stream sees every record exactly once, whether it was
	// waiting or not when each was committed.
	const n = 200
	got := make(chan []rec, 1)
	go func() {
		var recs []rec
		after := uint64(0)
		for len(recs) < n {
			_, err := s.Read(context.Background(), after, 7, 1<<20, func(seq uint64, data []byte) {
				recs = append(recs, rec{seq, string(data)})
				after = seq
			})
			if err != nil {
				t.Errorf("Read: %v", err)
				break
			}
		}
		got <- recs
	}()
	for i := 1; i <= n; i++ {
		appendT(t, s, fmt.Sprint("r", i))
	}
	recs := <-got
	if !eqSeqs(seqs(recs), seqRange(1, n)) {
		t.Fatalf("reader got %v; want 1..%d", seqs(recs), n)
	}

	// A Read that is waiting gets the record committed next.
	next := make(chan rec, 1)
	go func() {
		var r rec
		if _, err := s.Read(context.Background(), n, 10, 1<<20, func(seq uint64, data []byte) { r = rec{seq, string(data)} }); err != nil {
			t.Errorf("Read: %v", err)
		}
		next <- r
	}()
	waitFor(t, "the reader to wait", func() bool { return s.waiting.Load() == 1 })
	appendT(t, s, "late")
	if r := <-next; r != (rec{n + 1, "late"}) {
		t.Errorf("waiting Read: got %+v; want {%d late}", r, n+1)
	}

	// Nothing after n+1: Read waits until ctx ends.
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		k, err := s.Read(ctx, n+1, 10, 1<<20, func(uint64, []byte) { t.Error("fn called with nothing to read") })
		if k != 0 {
			t.Errorf("Read returned %d records; want 0", k)
		}
		done <- err
	}()
	waitFor(t, "the reader to wait", func() bool { return s.waiting.Load() == 1 })
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("Read on cancel: got %v; want context.Canceled", err)
	}

	// A waiting Read returns ErrClosed at Close.
	go func() {
		_, err := s.Read(context.Background(), n+1, 10, 1<<20, func(uint64, []byte) {})
		done <- err
	}()
	waitFor(t, "the reader to wait", func() bool { return s.waiting.Load() == 1 })
	closeT(t, o)
	if err := <-done; !errors.Is(err, ErrClosed) {
		t.Errorf("Read at Close: got %v; want ErrClosed", err)
	}
}

func TestClosed(t *testing.T) {
	testenv.NoGoroutineLeaks(t)
	o := openT(t, filepath.Join(t.TempDir(), "o.db"), Options{}, Caps{})
	s := o.Stream("results")
	appendT(t, s, "r1")
	closeT(t, o)
	if err := o.Close(); !errors.Is(err, ErrClosed) {
		t.Errorf("second Close: got %v; want ErrClosed", err)
	}
	if _, err := s.Append(context.Background(), []byte("x")); !errors.Is(err, ErrClosed) {
		t.Errorf("Append after Close: got %v; want ErrClosed", err)
	}
	if err := s.Ack(context.Background(), 1); !errors.Is(err, ErrClosed) {
		t.Errorf("Ack after Close: got %v; want ErrClosed", err)
	}
	if _, err := s.Read(context.Background(), 0, 1, 1, func(uint64, []byte) {}); !errors.Is(err, ErrClosed) {
		t.Errorf("Read after Close: got %v; want ErrClosed", err)
	}
}

// Appends racing Close either commit (and are readable after reopening) or fail with
// ErrClosed; none hangs.
func TestCloseDuringAppends(t *testing.T) {
	testenv.NoGoroutineLeaks(t)
	path := filepath.Join(t.TempDir(), "o.db")
	o := openT(t, path, Options{}, Caps{})
	s := o.Stream("results")
	var mu sync.Mutex
	var ok []uint64
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for {
				seq, err := s.Append(context.Background(), []byte("x"))
				if errors.Is(err, ErrClosed) {
					return
				}
				if err != nil {
					t.Errorf("Append: %v", err)
					return
				}
				mu.Lock()
				ok = append(ok, seq)
				mu.Unlock()
			}
		})
	}
	waitFor(t, "some appends", func() bool { return s.Stats().Count >= 100 })
	closeT(t, o)
	wg.Wait()
	o = openT(t, path, Options{}, Caps{})
	stored := map[uint64]bool{}
	for _, r := range readAll(t, o.Stream("results"), 0) {
		stored[r.seq] = true
	}
	for _, seq := range ok {
		if !stored[seq] {
			t.Errorf("seq %d: Append returned it before Close, but it is not stored", seq)
		}
	}
}

func TestOpenErrors(t *testing.T) {
	testenv.NoGoroutineLeaks(t)
	dir := t.TempDir()
	if _, err := Open(filepath.Join(dir, "a.db"), Options{Logger: quiet}); err == nil {
		t.Error("Open without streams: got nil error")
	}
	if _, err := Open(filepath.Join(dir, "a.db"), Options{Logger: quiet, Streams: map[string]Caps{"r": {Policy: "drop-some"}}}); err == nil || !strings.Contains(err.Error(), "drop-some") {
		t.Errorf("Open with a bad policy: got %v; want an error naming it", err)
	}

	// A second owner is refused with a clear message.
	path := filepath.Join(dir, "locked.db")
	openT(t, path, Options{}, Caps{})
	_, err := Open(path, Options{Logger: quiet, Streams: map[string]Caps{"r": {}}, lockTimeout: 50 * time.Millisecond})
	if want := fmt.Sprintf("outbox %s is locked by another process (is another edge-agent running?)", path); err == nil || err.Error() != want {
		t.Errorf("Open of a locked outbox: got %v; want %q", err, want)
	}
}

func TestCorruptFile(t *testing.T) {
	testenv.NoGoroutineLeaks(t)
	dir := t.TempDir()
	valid := filepath.Join(dir, "valid.db")
	o := openT(t, valid, Options{}, Caps{})
	for range 100 {
		appendT(t, o.Stream("results"), strings.Repeat("v", 100))
	}
	closeT(t, o)
	validBytes, err := os.ReadFile(valid)
	if err != nil {
		t.Fatal(err)
	}
	// A bbolt file of someone else's.
	foreign := filepath.Join(dir, "foreign.db")
	db, err := bolt.Open(foreign, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bolt.Tx) error { _, err := tx.CreateBucket([]byte("other")); return err }); err != nil {
		t.Fatal(err)
	}
	db.Close()

	for _, tc := range []struct {
		name string
		data []byte // nil: keep the file as it is
	}{
		{"text.db", bytes.Repeat([]byte("this is not a bbolt file\n"), 1000)},
		{"zeros.db", make([]byte, 64<<10)},
		{"short.db", []byte("x")},
		{"metas-zeroed.db", append(make([]byte, 8192), validBytes[8192:]...)},
		{"foreign.db", nil},
	} {
		path := filepath.Join(dir, tc.name)
		if tc.data != nil {
			if err := os.WriteFile(path, tc.data, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		o, err := Open(path, Options{Logger: quiet, Streams: map[string]Caps{"results": {}}})
		if err == nil {
			o.Close()
			t.Errorf("%s: Open succeeded; want an error", tc.name)
			continue
		}
		if msg := err.Error(); !strings.Contains(msg, path) || !strings.Contains(msg, "move it aside") || !errors.Is(err, ErrDamaged) {
			t.Errorf("%s: got %q; want ErrDamaged with the file's name and what to do", tc.name, msg)
		} else {
			t.Logf("%s: %v", tc.name, err)
		}
	}
}

// A file whose meta pages are valid but whose tree is noise makes bbolt panic while it
// rebuilds its freelist. Open turns that into an error, and the file can be moved aside
// and a new outbox opened at its path, as the error says. No leak check: bbolt leaves the
// goroutine that collects its check errors blocked when it panics.
func TestDamagedTree(t *testing.T) {
	path := filepath.Join(t.TempDir(), "o.db")
	o := openT(t, path, Options{}, Caps{})
	for range 100 {
		appendT(t, o.Stream("results"), strings.Repeat("v", 100))
	}
	closeT(t, o)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for i := 4 * 4096; i < len(b); i++ { // pages 0-1 are the metas
		b[i] = byte(i * 7)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	opt := Options{Logger: quiet, Streams: map[string]Caps{"results": {}}, lockTimeout: 50 * time.Millisecond}
	_, err = Open(path, opt)
	if err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "move it aside") {
		t.Fatalf("Open of a damaged file: got %v; want an error naming it and what to do", err)
	}
	t.Log(err)
	if err := os.Rename(path, path+".damaged"); err != nil {
		t.Fatal(err)
	}
	o = openT(t, path, opt, Caps{})
	if got := appendT(t, o.Stream("results"), "fresh"); got <= 100 {
		t.Errorf("Append to the new outbox: got seq %d; want it above the 100 the damaged one gave out", got)
	}
}

func TestStaleCompactFileIsRemoved(t *testing.T) {
	testenv.NoGoroutineLeaks(t)
	path := filepath.Join(t.TempDir(), "o.db")
	if err := os.WriteFile(path+compactSuffix, []byte("half a copy"), 0o600); err != nil {
		t.Fatal(err)
	}
	openT(t, path, Options{}, Caps{})
	if _, err := os.Stat(path + compactSuffix); !os.IsNotExist(err) {
		t.Errorf("stale %s: got %v; want it removed", path+compactSuffix, err)
	}
}

func TestStatsJSON(t *testing.T) {
	testenv.NoGoroutineLeaks(t)
	o := openT(t, filepath.Join(t.TempDir(), "o.db"), Options{}, Caps{})
	empty, err := json.Marshal(o.Stats())
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(empty, []byte("oldest_ts")) {
		t.Errorf("empty stream: got %s; want no oldest_ts", empty)
	}
	appendT(t, o.Stream("results"), "x")
	b, err := json.Marshal(o.Stats())
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{"file_bytes", "commits", "compactions", "streams", "results", "count", "bytes", "oldest_ts",
		"last_seq", "appended", "acked", "dropped", "oldest", "newest", "age", "caps", "max_count", "max_bytes", "max_age", "policy"} {
		if !bytes.Contains(b, []byte(`"`+key+`":`)) {
			t.Errorf("Stats JSON %s: no key %q", b, key)
		}
	}
}

// The damage matrix of the fault-injection audit (an outbox truncated to 200,000 bytes, or
// with random bytes over data pages, panicked on every start): truncated at several offsets,
// data pages overwritten, a meta page zeroed. Open never faults or panics: it reads the file
// whole or refuses it with ErrDamaged, and a new outbox opens in its place.
func TestDamageMatrixNeverCrashes(t *testing.T) {
	valid := filepath.Join(t.TempDir(), "o.db")
	o := openT(t, valid, Options{}, Caps{})
	for i := range 4000 {
		appendT(t, o.Stream("results"), fmt.Sprintf(`{"seq_hint":%d,"pad":%q}`, i, strings.Repeat("r", 150)))
	}
	closeT(t, o)
	cases := testenv.DamagedCopies(t, valid, 200_000) // 200,000 bytes panicked before
	opt := Options{Logger: quiet, Streams: map[string]Caps{"results": {}}, lockTimeout: 50 * time.Millisecond}
	refused := 0
	for name, data := range cases {
		path := filepath.Join(t.TempDir(), "o.db")
		os.WriteFile(path, data, 0o600)
		o, err := Open(path, opt)
		switch {
		case err == nil:
			if strings.HasPrefix(name, "truncated") {
				t.Errorf("%s: opened; a truncated file must be refused", name)
			}
			o.Close()
		case errors.Is(err, ErrDamaged):
			refused++
			if err := os.Rename(path, path+".damaged"); err != nil {
				t.Fatal(err)
			}
			fresh := openT(t, path, opt, Caps{})
			appendT(t, fresh.Stream("results"), "after")
			closeT(t, fresh)
		default:
			t.Errorf("%s: %v; want ErrDamaged or a whole outbox", name, err)
		}
	}
	t.Logf("%d damage patterns, %d refused as damaged, the rest read whole; no crash", len(cases), refused)
}

// A sequence number is never given out twice by one device's outbox path: an outbox that is
// deleted, moved aside, emptied or replaced by an older copy starts above every sequence the
// one before gave out; a plain restart continues without a gap.
func TestSequenceNeverRepeats(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "o.db")
	opt := Options{Logger: quiet, Streams: map[string]Caps{"results": {}}, lease: 64}
	last := uint64(0)
	fill := func(n int) {
		t.Helper()
		o := openT(t, path, opt, Caps{})
		for range n {
			seq := appendT(t, o.Stream("results"), "r")
			if seq <= last {
				t.Fatalf("seq %d after %d: repeated", seq, last)
			}
			last = seq
		}
		closeT(t, o)
	}
	fill(10)
	fill(5) // a restart
	if last != 15 {
		t.Errorf("after a restart the sequence jumped: last %d; want 15", last)
	}
	old, _ := os.ReadFile(path)
	fill(200) // past several lease renewals (every lease/2)
	os.Remove(path)
	fill(1)
	if last <= 215 {
		t.Errorf("a deleted outbox restarted at %d", last)
	}
	os.WriteFile(path, old, 0o600) // an older copy put back
	fill(1)
	os.WriteFile(path, nil, 0o600) // emptied
	fill(1)
	os.Rename(path, path+".damaged")
	fill(3)
	t.Logf("last sequence %d", last)
}

// A damaged outbox's readable records are stored again in the new one, under their own
// sequence numbers: through the damage matrix, every restored record is one that was
// appended with that number and not acknowledged, none comes twice, and new appends go
// above all of them.
func TestSalvageRestoresReadableRecords(t *testing.T) {
	valid := filepath.Join(t.TempDir(), "o.db")
	o := openT(t, valid, Options{Streams: map[string]Caps{"results": {}, "events": {}}}, Caps{})
	data := map[uint64]string{}
	for i := range 4000 {
		d := fmt.Sprintf(`{"n":%d,"pad":%q}`, i, strings.Repeat("r", 100+i%60))
		data[appendT(t, o.Stream("results"), d)] = d
		if i%100 == 0 {
			appendT(t, o.Stream("events"), fmt.Sprintf(`{"event":%d}`, i))
		}
		if i%400 == 399 && i < 2000 { // acks free pages that still hold the records
			if err := o.Stream("results").Ack(context.Background(), uint64(i-200)); err != nil {
				t.Fatal(err)
			}
		}
	}
	const acked = 1799 // the last ack: through 1999 - 200 (seq = i + 1)
	closeT(t, o)
	recognise := func(b []byte) string {
		switch {
		case !json.Valid(b):
			return ""
		case bytes.HasPrefix(b, []byte(`{"n":`)):
			return "results"
		case bytes.HasPrefix(b, []byte(`{"event":`)):
			return "events"
		}
		return ""
	}
	cases := testenv.DamagedCopies(t, valid, 200_000)
	cases["whole"], _ = os.ReadFile(valid)
	total := 0
	for name, b := range cases {
		dir := t.TempDir()
		path := filepath.Join(dir, "o.db")
		os.WriteFile(path, b, 0o600)
		lease, _ := os.ReadFile(leasePath(valid))
		os.WriteFile(leasePath(path), lease, 0o600)
		os.Rename(path, path+".damaged")
		n := openT(t, path, Options{Streams: map[string]Caps{"results": {}, "events": {}}, SalvageFrom: path + ".damaged", Recognise: recognise}, Caps{})
		rep := n.SalvageReport()
		got, err := 0, error(nil)
		if n.Stream("results").Stats().Count > 0 { // Read waits for a record when there is none
			_, err = n.Stream("results").Read(context.Background(), 0, 10000, 1<<30, func(seq uint64, d []byte) {
				got++
				if want, ok := data[seq]; !ok || want != string(d) {
					t.Errorf("%s: seq %d restored as %q; it was appended as %q", name, seq, d, want)
				} else if seq <= acked {
					t.Errorf("%s: seq %d was acknowledged; it came back", name, seq)
				}
			})
		}
		if err != nil {
			t.Fatal(err)
		}
		if got != rep.Restored["results"] || got > 4000-acked {
			t.Errorf("%s: %d records in the new outbox, report %+v", name, got, rep)
		}
		if next := appendT(t, n.Stream("results"), "new"); next <= 4000 {
			t.Errorf("%s: a new record got seq %d; the damaged file gave out up to 4000", name, next)
		}
		if name == "whole" && (got != 4000-acked || rep.Restored["events"] != 40 || !rep.Whole) {
			t.Errorf("whole file: %d results, report %+v; want %d results, 40 events", got, rep, 4000-acked)
		}
		lost, known := rep.Lost("results")
		t.Logf("%s: %d of %d results restored (lost %d, known %v), %d skipped, %d bad pages", name, got, 4000-acked, lost, known, rep.Skipped, rep.BadPages)
		total += got
		n.Close()
	}
	if total < len(cases)*(4000-acked)/2 {
		t.Errorf("%d records restored over %d damage patterns; want at least half of what they held", total, len(cases))
	}
}

// (epoch, seq) never repeats: a first outbox starts an epoch; restarts, a lost outbox file
// (the lease file says where numbering got to) and a salvage keep it; losing the outbox and
// its lease file together starts a new one, since nothing says which numbers were given out.
func TestEpoch(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "o.db")
	opt := Options{Logger: quiet, Streams: map[string]Caps{"results": {}}, lease: 64}
	open := func(o Options) (*Outbox, uint64) {
		t.Helper()
		ob := openT(t, path, o, Caps{})
		return ob, appendT(t, ob.Stream("results"), `{"schema":"x"}`)
	}
	o, _ := open(opt)
	first := o.Epoch()
	closeT(t, o)
	if first == 0 || first > maxEpoch {
		t.Fatalf("a first outbox: epoch %d; want one in 1..2^53-1", first)
	}
	o, seq := open(opt) // a restart
	if o.Epoch() != first || seq != 2 {
		t.Errorf("after a restart: epoch %d seq %d; want %d and 2", o.Epoch(), seq, first)
	}
	closeT(t, o)
	os.Remove(path) // the outbox lost, its lease kept
	o, seq = open(opt)
	if o.Epoch() != first || seq <= 2 {
		t.Errorf("a replaced outbox: epoch %d seq %d; want %d and above 2", o.Epoch(), seq, first)
	}
	closeT(t, o)
	os.Remove(path)
	os.Remove(leasePath(path)) // both lost: a new epoch
	o, seq = open(opt)
	second := o.Epoch()
	if second == first || second == 0 || seq != 1 {
		t.Errorf("outbox and lease lost: epoch %d seq %d; want a new epoch (not %d), numbering from 1", second, seq, first)
	}
	for range 5 {
		appendT(t, o.Stream("results"), `{"schema":"x"}`)
	}
	closeT(t, o)
	// The lease lost and the outbox damaged: the salvage keeps numbering in the damaged
	// file's epoch, above its numbers, so salvaged records keep their keys.
	os.Remove(leasePath(path))
	os.Rename(path, path+".damaged")
	o, seq = open(Options{Logger: quiet, Streams: map[string]Caps{"results": {}}, lease: 64, SalvageFrom: path + ".damaged",
		Recognise: func([]byte) string { return "results" }})
	if o.Epoch() != second || seq <= 6 || o.SalvageReport().Restored["results"] != 6 {
		t.Errorf("salvaged without a lease: epoch %d seq %d, %+v; want epoch %d, seq above 6, 6 restored", o.Epoch(), seq, o.SalvageReport(), second)
	}
	closeT(t, o)
	if o, _ = open(opt); o.Epoch() != second {
		t.Errorf("the salvage's epoch was not kept: %d after a restart; want %d", o.Epoch(), second)
	}
}

// A full disk (a real tmpfs): appends are refused with ErrNoSpace and counted, the outbox says
// it is full, failed commits are logged once per interval, acknowledgements still commit (the
// reserve is theirs), and once space returns appends are stored again with no sequence number
// skipped or repeated.
func TestFullDisk(t *testing.T) {
	dir := testenv.SmallDisk(t, 8<<20)
	logs := &testenv.LockedBuffer{}
	opt := Options{Logger: slog.New(slog.NewTextHandler(logs, nil)), Streams: map[string]Caps{"results": {}}, Reserve: 1 << 20, tick: 20 * time.Millisecond}
	o := openT(t, filepath.Join(dir, "o.db"), opt, Caps{})
	s := o.Stream("results")
	release := testenv.Fill(t, dir, 512<<10)
	rec := strings.Repeat("r", 1000)
	var stored []uint64
	for {
		seq, err := s.Append(context.Background(), []byte(rec))
		if err != nil {
			if !errors.Is(err, ErrNoSpace) {
				t.Fatalf("append on a full disk: %v; want ErrNoSpace", err)
			}
			break
		}
		stored = append(stored, seq)
		if len(stored) > 10_000 {
			t.Fatal("10,000 records of 1 KB on a disk with 512 KB free")
		}
	}
	refused := 1
	for range 500 {
		if _, err := s.Append(context.Background(), []byte(rec)); !errors.Is(err, ErrNoSpace) {
			t.Fatalf("append in disk-full mode: %v; want ErrNoSpace", err)
		}
		refused++
	}
	st := o.Stats()
	if !st.DiskFull || st.Streams["results"].Refused.NoSpace != uint64(refused) || st.Streams["results"].Count != len(stored) {
		t.Errorf("stats %+v; want disk full, %d refused, %d stored", st, refused, len(stored))
	}
	if _, err := os.Stat(reservePath(o.path)); !os.IsNotExist(err) {
		t.Errorf("the reserve is still there on a full disk: %v", err)
	}
	if err := s.Ack(context.Background(), stored[len(stored)/2]); err != nil {
		t.Fatalf("ack on a full disk: %v; want it to commit (the reserve is for acknowledgements)", err)
	}
	if n := strings.Count(logs.String(), "commit failed"); n > 1 {
		t.Errorf("%d commit-failure lines for %d refused appends; want at most one per 10 s", n, refused)
	}
	release()
	testenv.Eventually(t, 10*time.Second, 10*time.Millisecond, func() string { return "appends taken again" }, func() bool { return !o.Stats().DiskFull })
	seq := appendT(t, s, rec)
	if seq != stored[len(stored)-1]+1 {
		t.Errorf("after space returned: seq %d; want %d (no number skipped or repeated)", seq, stored[len(stored)-1]+1)
	}
	if _, err := os.Stat(reservePath(o.path)); err != nil {
		t.Errorf("the reserve was not written again: %v", err)
	}
	t.Logf("%d records stored, %d refused while full; %d log lines", len(stored), refused, strings.Count(logs.String(), "\n"))
}

// An acknowledgement that shares a commit with an append that fills the disk is not lost with
// it: the commit fails, the outbox turns disk-full, and the acknowledgement commits alone.
func TestFullDiskAckSurvivesAFailedCommit(t *testing.T) {
	dir := testenv.SmallDisk(t, 8<<20)
	// MaxWait: the committer waits this long for more operations after the first, so the
	// append and the ack below share one commit.
	opt := Options{Logger: quiet, Streams: map[string]Caps{"results": {}}, Reserve: 1 << 20, MaxWait: 2 * time.Second}
	o := openT(t, filepath.Join(dir, "o.db"), opt, Caps{})
	s := o.Stream("results")
	last := appendT(t, s, "small") // one commit: each waits MaxWait
	testenv.Fill(t, dir, 0)
	errs := make(chan error, 2)
	go func() {
		_, err := s.Append(context.Background(), bytes.Repeat([]byte("x"), 512<<10))
		errs <- err
	}()
	go func() { errs <- s.Ack(context.Background(), last) }()
	var appendErr, ackErr error
	for range 2 {
		if err := <-errs; errors.Is(err, ErrNoSpace) {
			appendErr = err
		} else {
			ackErr = err
		}
	}
	st := o.Stats()
	if appendErr == nil || ackErr != nil || st.Streams["results"].Count != 0 || !st.DiskFull {
		t.Errorf("append %v, ack %v, stats %+v; want the append refused for space, the ack committed, the outbox empty and disk-full", appendErr, ackErr, st)
	}
}
