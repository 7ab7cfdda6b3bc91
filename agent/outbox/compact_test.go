package outbox

import (
	"context"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/edge-agent/edge-agent/internal/testenv"
)

// fill appends n records of size bytes from writers goroutines and returns the smallest
// and largest seq it got.
func fill(t testing.TB, s *Stream, n, size, writers int) (lo, hi uint64) {
	t.Helper()
	data := make([]byte, size)
	var next atomic.Int64
	var mu sync.Mutex
	lo = ^uint64(0)
	var wg sync.WaitGroup
	for range writers {
		wg.Go(func() {
			for next.Add(1) <= int64(n) {
				seq, err := s.Append(context.Background(), data)
				if err != nil {
					t.Errorf("Append: %v", err)
					return
				}
				mu.Lock()
				lo, hi = min(lo, seq), max(hi, seq)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return lo, hi
}

// Over a long run of fill-then-drain rounds the file stays bounded: bbolt reuses freed
// pages within a round, and compaction gives the space back once the backlog is acked.
func TestCompactionKeepsFileBounded(t *testing.T) {
	testenv.NoGoroutineLeaks(t)
	const (
		rounds  = 30
		perRnd  = 20_000
		recSize = 200
		// The live data of a full round is 20k × (200 B + 32 B key, timestamp and leaf
		// header) ≈ 4.6 MB. While under 16 MiB, bbolt sizes the file to the power of two
		// above its high-water mark: 8 MiB, or 16 MiB if copy-on-write churn pushes the
		// mark past 8 MiB. Anything above that means space is not being reused.
		peakBound = 16 << 20
		// Compacted with nothing live, the file is a handful of pages.
		emptyBound = 1 << 20
	)
	path := filepath.Join(t.TempDir(), "o.db")
	opt := Options{CompactMinBytes: 1 << 20, compactEvery: 1}
	o := openT(t, path, opt, Caps{})
	s := o.Stream("results")
	// A reader follows the stream throughout, so compaction swaps the file under reads.
	ctx, cancel := context.WithCancel(context.Background())
	followed := make(chan int, 1)
	go func() {
		after, n := uint64(0), 0
		for {
			_, err := s.Read(ctx, after, 500, 1<<20, func(seq uint64, data []byte) {
				if seq <= after || len(data) != recSize {
					t.Errorf("follower: seq %d (%d bytes) after %d; want a larger seq, %d bytes", seq, len(data), after, recSize)
				}
				after = seq
				n++
			})
			if err != nil {
				followed <- n
				return
			}
		}
	}()
	var last uint64
	var peaks []int64
	for r := range rounds {
		lo, hi := fill(t, s, perRnd, recSize, 128)
		if lo != last+1 || hi != last+perRnd {
			t.Fatalf("round %d: seqs %d..%d; want %d..%d (continuing across compactions)", r, lo, hi, last+1, last+perRnd)
		}
		last = hi
		st := o.Stats()
		peaks = append(peaks, st.FileBytes)
		if st.FileBytes > peakBound {
			t.Errorf("round %d: file is %d bytes with %d records; want at most %d", r, st.FileBytes, perRnd, peakBound)
		}
		compactions := st.Compactions
		if err := s.Ack(context.Background(), hi); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "compaction after draining", func() bool { return o.Stats().Compactions > compactions })
		if st := o.Stats(); st.FileBytes > emptyBound {
			t.Errorf("round %d: drained and compacted, the file is %d bytes; want at most %d", r, st.FileBytes, emptyBound)
		}
	}
	// Not growing round over round: the late rounds peak no higher than the early ones.
	if early, late := maxOf(peaks[:10]), maxOf(peaks[rounds-10:]); late > early {
		t.Errorf("file peaks grew: %d in the first 10 rounds, %d in the last 10", early, late)
	}
	t.Logf("peak file sizes per round: %v", peaks)
	cancel()
	if n := <-followed; n == 0 {
		t.Errorf("the follower read nothing")
	}

	closeT(t, o)
	o = openT(t, path, opt, Caps{})
	if got := appendT(t, o.Stream("results"), "after"); got != last+1 {
		t.Errorf("Append after compactions and reopen: got seq %d; want %d", got, last+1)
	}
}

func maxOf(xs []int64) int64 {
	m := xs[0]
	for _, x := range xs {
		m = max(m, x)
	}
	return m
}
