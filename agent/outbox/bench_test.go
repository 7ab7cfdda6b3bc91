package outbox

import (
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

const (
	benchWriters = 64
	benchRecord  = 200
)

// BenchmarkDurableAppend stores b.N records of 200 bytes from 64 goroutines twice, each on
// a fresh file: with bbolt alone (the baseline) and through Stream.Append. Both wait for the
// fsync'd commit of every record. The two alternate in ten rounds of b.N/10 records, so that
// both see the same machine: on a shared disk, one measured after the other drifts apart.
//
// The baseline is bbolt's own group commit, DB.Batch, each call putting one record under
// NextSequence, with the same bbolt options as the outbox. Its MaxBatchSize is set to the
// number of writers: with the default (1000 calls or 10 ms) a batch of 64 writers would
// always wait the 10 ms, a straw man rather than a baseline.
func BenchmarkDurableAppend(b *testing.B) {
	payload := make([]byte, benchRecord)
	for i := range payload {
		payload[i] = byte('a' + i%26)
	}
	const rounds = 10
	n := b.N

	db, err := bolt.Open(filepath.Join(b.TempDir(), "baseline.db"), 0o600, boltOptions(time.Second))
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	db.MaxBatchSize = benchWriters
	if err := db.Update(func(tx *bolt.Tx) error { _, err := tx.CreateBucket([]byte("r")); return err }); err != nil {
		b.Fatal(err)
	}
	var txs sync.Map // ids of the transactions that committed records
	baseline := func() error {
		return db.Batch(func(tx *bolt.Tx) error {
			txs.Store(tx.ID(), struct{}{})
			bk := tx.Bucket([]byte("r"))
			seq, err := bk.NextSequence()
			if err != nil {
				return err
			}
			return bk.Put(seqKey(seq), payload)
		})
	}

	o, err := Open(filepath.Join(b.TempDir(), "outbox.db"), Options{Streams: map[string]Caps{"results": {}}, Logger: quiet})
	if err != nil {
		b.Fatal(err)
	}
	defer o.Close()
	s := o.Stream("results")
	outbox := func() error {
		_, err := s.Append(context.Background(), payload)
		return err
	}

	b.ResetTimer()
	var baseDur, outDur time.Duration
	for r := range rounds {
		k := n/rounds + boolInt(r < n%rounds)
		start := time.Now()
		runWriters(k, baseline)
		baseDur += time.Since(start)
		start = time.Now()
		runWriters(k, outbox)
		outDur += time.Since(start)
	}
	b.StopTimer()

	if got := s.Stats().Count; got != n {
		b.Fatalf("outbox holds %d records; want %d", got, n)
	}
	baseCommits := 0
	txs.Range(func(any, any) bool { baseCommits++; return true })
	outCommits := o.Stats().Commits
	base := float64(n) / baseDur.Seconds()
	out := float64(n) / outDur.Seconds()
	b.ReportMetric(base, "baseline/s")
	b.ReportMetric(out, "outbox/s")
	b.ReportMetric(out/base, "ratio")
	b.ReportMetric(float64(n)/float64(baseCommits), "baseline_recs/commit")
	b.ReportMetric(float64(n)/float64(outCommits), "outbox_recs/commit")
	b.ReportMetric(float64(baseCommits), "baseline_commits")
	b.ReportMetric(float64(outCommits), "outbox_commits")
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// runWriters calls fn n times in all from benchWriters goroutines.
func runWriters(n int, fn func() error) {
	var next atomic.Int64
	var wg sync.WaitGroup
	for range benchWriters {
		wg.Go(func() {
			for next.Add(1) <= int64(n) {
				if err := fn(); err != nil {
					panic(err)
				}
			}
		})
	}
	wg.Wait()
}

// BenchmarkOpenMillion opens an outbox holding 1,000,000 records of 200 bytes (built once,
// with bbolt directly, in the outbox's layout) after a crash (no saved freelist). Open checks
// the meta pages and the size, then reads every page once under a fault guard
// (boltcheck.Walk), so that a damaged page fails at open and not in the middle of serving.
// The baseline, in the same run and alternating with it, is the least a reader of that file
// does: bolt.Open (which walks the pages to rebuild the freelist) and one ForEach over every
// record. The salvage of the same file (a damaged outbox's records read without bbolt or a
// mapping and stored again in a new one) is timed once per round too. The file is in the page
// cache here; a cold start also reads it from disk.
func BenchmarkOpenMillion(b *testing.B) {
	const n = 1_000_000
	dir := b.TempDir()
	path := filepath.Join(dir, "million.db")
	buildOutboxFile(b, path, "results", n, benchRecord)
	crashed, err := os.ReadFile(path) // no freelist saved, as after a crash
	if err != nil {
		b.Fatal(err)
	}
	opt := Options{Streams: map[string]Caps{"results": {}}, Logger: quiet}
	var open, base, salvage time.Duration
	salvaged, allocated := 0, uint64(0)
	for i := range b.N {
		os.WriteFile(path, crashed, 0o600)
		t0 := time.Now()
		db, err := bolt.Open(path, 0o600, boltOptions(time.Second))
		if err != nil {
			b.Fatal(err)
		}
		count := 0
		err = db.View(func(tx *bolt.Tx) error {
			return tx.Bucket(streamBucket("results")).ForEach(func(k, v []byte) error { count++; return nil })
		})
		if err != nil || count != n {
			b.Fatalf("baseline read %d records, %v", count, err)
		}
		db.Close()
		base += time.Since(t0)

		os.WriteFile(path, crashed, 0o600)
		t0 = time.Now()
		o, err := Open(path, opt)
		if err != nil {
			b.Fatal(err)
		}
		open += time.Since(t0)
		if got := o.Stream("results").Stats().Count; got != n {
			b.Fatalf("Count: got %d; want %d", got, n)
		}
		if err := o.Close(); err != nil {
			b.Fatal(err)
		}

		if i == 0 || i%4 == 0 {
			fresh := filepath.Join(dir, fmt.Sprintf("salvaged-%d.db", i))
			var m0, m1 runtime.MemStats
			runtime.ReadMemStats(&m0)
			t0 = time.Now()
			o, err := Open(fresh, Options{Streams: map[string]Caps{"results": {}}, Logger: quiet, SalvageFrom: path})
			if err != nil {
				b.Fatal(err)
			}
			salvage += time.Since(t0)
			runtime.ReadMemStats(&m1)
			allocated += m1.TotalAlloc - m0.TotalAlloc
			salvaged++
			if got := o.SalvageReport().Restored["results"]; got != n {
				b.Fatalf("salvaged %d records; want %d", got, n)
			}
			o.Close()
			os.Remove(fresh)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(open.Milliseconds())/float64(b.N), "ms/open")
	b.ReportMetric(float64(base.Milliseconds())/float64(b.N), "ms/bbolt-read")
	b.ReportMetric(float64(base)/float64(open), "ratio")
	b.ReportMetric(float64(salvage.Milliseconds())/float64(salvaged), "ms/salvage")
	b.ReportMetric(float64(allocated)/float64(salvaged)/(1<<20), "MB-allocated/salvage")
}

// buildOutboxFile writes an outbox file holding n records of size bytes in one stream.
func buildOutboxFile(b *testing.B, path, stream string, n, size int) {
	b.Helper()
	db, err := bolt.Open(path, 0o600, boltOptions(time.Second))
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	val := make([]byte, tsLen+size)
	now := time.Now().UnixNano()
	var st streamState
	const perTx = 100_000
	for done := 0; done < n; done += perTx {
		err := db.Update(func(tx *bolt.Tx) error {
			meta, err := tx.CreateBucketIfNotExists(metaBucket)
			if err != nil {
				return err
			}
			if err := meta.Put(formatKey, []byte(formatVersion)); err != nil {
				return err
			}
			bk, err := tx.CreateBucketIfNotExists(streamBucket(stream))
			if err != nil {
				return err
			}
			bk.FillPercent = 1.0
			for range min(perTx, n-done) {
				seq, err := bk.NextSequence()
				if err != nil {
					return err
				}
				binary.BigEndian.PutUint64(val, uint64(now))
				if err := bk.Put(seqKey(seq), val); err != nil {
					return err
				}
				st.count++
				st.bytes += int64(size)
				st.appended++
			}
			return meta.Put(streamBucket(stream), st.encode())
		})
		if err != nil {
			b.Fatal(err)
		}
	}
}
