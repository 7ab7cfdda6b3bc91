package boltcheck

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	bolt "go.etcd.io/bbolt"
)

// nestedFile writes buckets as an outbox has them: a small one (inline in its parent), a
// large one over many pages with overflow values, and a nested one; it returns every pair as
// bbolt reads it ("bucket/path\x00key" → value) and every bucket's sequence.
func nestedFile(t *testing.T) (path string, pairs map[string]string, seqs map[string]uint64) {
	t.Helper()
	path = filepath.Join(t.TempDir(), "n.db")
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	// Many transactions with deletes, as an outbox writes (appends, then acks of the oldest):
	// pages are freed and reused, and the newest root is anywhere in the file.
	err = db.Update(func(tx *bolt.Tx) error {
		small, _ := tx.CreateBucket([]byte("meta"))
		small.Put([]byte("format"), []byte("1"))
		big, _ := tx.CreateBucket([]byte("stream:results"))
		inner, _ := big.CreateBucket([]byte("inner"))
		inner.SetSequence(42)
		return inner.Put([]byte("k"), []byte("v"))
	})
	for i := 0; err == nil && i < 3000; i += 100 {
		err = db.Update(func(tx *bolt.Tx) error {
			big := tx.Bucket([]byte("stream:results"))
			for j := i; j < i+100; j++ {
				seq, _ := big.NextSequence()
				v := strings.Repeat("r", 100+j%50)
				if j%500 == 0 {
					v = strings.Repeat("o", 9000) // over two pages
				}
				big.Put(fmt.Appendf(nil, "%08d", seq), []byte(v))
			}
			for j := max(0, i-1000); j < i-900; j++ { // acks keep about 1,000 records
				big.Delete(fmt.Appendf(nil, "%08d", j+1))
			}
			return nil
		})
	}
	if err != nil {
		t.Fatal(err)
	}
	pairs, seqs = map[string]string{}, map[string]uint64{}
	var walk func(name string, b *bolt.Bucket) error
	walk = func(name string, b *bolt.Bucket) error {
		seqs[name] = b.Sequence()
		return b.ForEach(func(k, v []byte) error {
			if v == nil {
				return walk(name+"/"+string(k), b.Bucket(k))
			}
			pairs[name+"\x00"+string(k)] = string(v)
			return nil
		})
	}
	err = db.View(func(tx *bolt.Tx) error {
		return tx.ForEach(func(name []byte, b *bolt.Bucket) error { return walk(string(name), b) })
	})
	if err != nil {
		t.Fatal(err)
	}
	db.Close()
	return path, pairs, seqs
}

// written is the value nestedFile wrote for key k of stream:results ("" when it wrote none).
func written(k string) string {
	var seq int
	if _, err := fmt.Sscanf(k, "%08d", &seq); err != nil || seq < 1 || seq > 3000 {
		return ""
	}
	if j := seq - 1; j%500 != 0 {
		return strings.Repeat("r", 100+j%50)
	}
	return strings.Repeat("o", 9000)
}

func readPairs(t *testing.T, path string) (map[string]string, map[string]uint64, ReadReport, error) {
	pairs, seqs := map[string]string{}, map[string]uint64{}
	name := func(p [][]byte) string { return string(bytes.Join(p, []byte("/"))) }
	rep, err := Read(path, Visitor{
		Bucket: func(p [][]byte, seq uint64) error { seqs[name(p)] = seq; return nil },
		Pair: func(p [][]byte, k, v []byte) error {
			pairs[name(p)+"\x00"+string(k)] = string(v)
			return nil
		},
		Orphan: func(k, v []byte) error {
			pairs["orphan\x00"+string(k)] = string(v)
			return nil
		},
	})
	return pairs, seqs, rep, err
}

func TestReadAgreesWithBbolt(t *testing.T) {
	path, want, wantSeqs := nestedFile(t)
	got, seqs, rep, err := readPairs(t, path)
	if err != nil || !rep.Whole() {
		t.Fatalf("Read: %+v, %v; want the whole file", rep, err)
	}
	if len(got)-rep.Orphans != len(want) || rep.Pairs != len(want) {
		t.Errorf("Read found %d pairs (report %d); bbolt reads %d", len(got)-rep.Orphans, rep.Pairs, len(want))
	}
	for k, v := range got {
		if o, ok := strings.CutPrefix(k, "orphan\x00"); ok && written(o) != v {
			t.Errorf("orphan %q: %d bytes that were never written under that key", o, len(v))
		}
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%q: Read gives %d bytes, bbolt %d", k, len(got[k]), len(v))
			break
		}
	}
	if fmt.Sprint(seqs) != fmt.Sprint(wantSeqs) {
		t.Errorf("bucket sequences %v; bbolt says %v", seqs, wantSeqs)
	}
}

// Damage gives fewer pairs, never a wrong one or a crash; without meta pages the root is
// found by a scan.
func TestReadDamagedFiles(t *testing.T) {
	path, want, wantSeqs := nestedFile(t)
	good, _ := os.ReadFile(path)
	m, _ := Preflight(path)
	ps, need := int(m.PageSize), int(m.Pages)*int(m.PageSize)
	cp := func() []byte { return append([]byte(nil), good...) }
	noMeta := cp()
	clear(noMeta[:2*ps])
	halfPages := cp()
	r := rand.New(rand.NewPCG(1, 2))
	for p := 4; p < need/ps; p += 2 {
		for i := p * ps; i < (p+1)*ps; i++ {
			halfPages[i] = byte(r.IntN(256))
		}
	}
	random := make([]byte, 256<<10)
	for i := range random {
		random[i] = byte(r.IntN(256))
	}
	cases := []struct {
		name    string
		data    []byte
		atLeast int // pairs that must come back
		whole   bool
	}{
		{"truncated in the middle", good[:need/2], len(want) / 4, false},
		{"both meta pages zeroed", noMeta, len(want), false},
		{"every other data page random", halfPages, len(want) / 4, false},
		{"random bytes", random, 0, false},
		{"zero length", nil, 0, false},
	}
	for _, c := range cases {
		p := filepath.Join(t.TempDir(), "d.db")
		os.WriteFile(p, c.data, 0o600)
		got, seqs, rep, err := readPairs(t, p)
		if c.atLeast == 0 {
			if err != nil || len(got) != 0 {
				t.Errorf("%s: %d pairs, %v; want none and no error", c.name, len(got), err)
			}
			if _, err := Read(p, Visitor{}); !errors.Is(err, ErrDamaged) {
				t.Errorf("%s without Orphan: %v; want ErrDamaged (no tree)", c.name, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", c.name, err)
			continue
		}
		// bbolt keeps no checksum of data pages: a value over several pages whose later pages
		// were overwritten reads back wrong (the outbox's owner checks each record it salvages).
		// Every other pair must be one that was written.
		wrong, live := 0, 0
		for k, v := range got {
			o, orphan := strings.CutPrefix(k, "orphan\x00")
			if !orphan {
				_, o, _ = strings.Cut(k, "\x00")
			}
			if w := written(o); w != v && !(k == "meta\x00format" && v == "1") && !strings.Contains(k, "inner") {
				if len(w) <= ps-pageHeader-elemLen || c.name != "every other data page random" {
					wrong++
				}
				continue
			}
			if !orphan || want["stream:results\x00"+o] == v {
				live++ // orphans still in the tree bbolt reads; the others were deleted since
			}
		}
		if wrong > 0 || live < c.atLeast || rep.Whole() != c.whole {
			t.Errorf("%s: %d pairs (%d wrong, %d live) of %d, report %+v; want at least %d live, none wrong", c.name, len(got), wrong, live, len(want), rep, c.atLeast)
		}
		if c.name == "both meta pages zeroed" && seqs["stream:results"] != wantSeqs["stream:results"] {
			t.Errorf("%s: sequence %d; want %d", c.name, seqs["stream:results"], wantSeqs["stream:results"])
		}
		t.Logf("%s: %d of %d live pairs read (%d through the tree, %d orphans), %d bad pages", c.name, live, len(want), rep.Pairs, rep.Orphans, rep.BadPages)
	}
}
