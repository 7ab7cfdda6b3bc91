package boltcheck

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// realFile writes a bbolt file with n records across several pages and returns its path.
func realFile(t *testing.T, n int) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "x.db")
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucket([]byte("records"))
		if err != nil {
			return err
		}
		for i := range n {
			if err := b.Put(fmt.Appendf(nil, "%08d", i), []byte(strings.Repeat("v", 200))); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestPreflightReadsARealFile(t *testing.T) {
	path := realFile(t, 2000)
	m, err := Preflight(path)
	if err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(path)
	if m.PageSize != uint32(os.Getpagesize()) || m.TxID < 2 || m.Pages < 100 || int64(m.Pages)*int64(m.PageSize) > fi.Size() {
		t.Errorf("meta %+v for a %d-byte file of 2000 records of 200 bytes", m, fi.Size())
	}
	for _, p := range []string{filepath.Join(t.TempDir(), "missing.db"), empty(t)} {
		if _, err := Preflight(p); err != nil {
			t.Errorf("%s: %v; a missing or empty file is a new one", p, err)
		}
	}
}

func empty(t *testing.T) string {
	p := filepath.Join(t.TempDir(), "empty.db")
	os.WriteFile(p, nil, 0o600)
	return p
}

// The damage matrix: each is refused with ErrDamaged before bbolt maps the file, except one
// zeroed meta page, which bbolt survives by reading the other (and so does Preflight).
func TestPreflightDamageMatrix(t *testing.T) {
	src := realFile(t, 2000)
	good, _ := os.ReadFile(src)
	m, _ := Preflight(src)
	ps, need := int(m.PageSize), int(m.Pages)*int(m.PageSize)
	zero := func(b []byte, from, n int) []byte {
		c := append([]byte(nil), b...)
		clear(c[from : from+n])
		return c
	}
	random := make([]byte, 64<<10)
	for i := range random {
		random[i] = byte(rand.IntN(256))
	}
	cases := map[string]struct {
		data []byte
		ok   bool
	}{
		"truncated to 100 bytes":   {good[:100], false},
		"truncated to one page":    {good[:ps], false},
		"truncated to two pages":   {good[:2*ps], false},
		"truncated in the middle":  {good[:need/2], false},
		"truncated one byte short": {good[:need-1], false},
		"both meta pages zeroed":   {zero(zero(good, 0, ps), ps, ps), false},
		"random bytes":             {random, false},
		"first meta page zeroed":   {zero(good, 0, ps), true},
		"second meta page zeroed":  {zero(good, ps, ps), true},
		"a meta checksum byte off": {append(append(append([]byte(nil), good[:pageHeader+sumAt]...), good[pageHeader+sumAt]^1), good[pageHeader+sumAt+1:]...), true},
		"whole":                    {good, true},
	}
	for name, c := range cases {
		p := filepath.Join(t.TempDir(), "d.db")
		os.WriteFile(p, c.data, 0o600)
		_, err := Preflight(p)
		if c.ok && err != nil {
			t.Errorf("%s: %v; want accepted", name, err)
		}
		if !c.ok && !errors.Is(err, ErrDamaged) {
			t.Errorf("%s: %v; want ErrDamaged", name, err)
		}
		if c.ok { // what Preflight passes, bbolt opens and reads without a fault
			if err := Guard(func() error { return readAll(p) }); err != nil {
				t.Errorf("%s: passed the preflight, then: %v", name, err)
			}
		}
	}
}

func readAll(path string) error {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		return err
	}
	defer db.Close()
	return db.View(func(tx *bolt.Tx) error {
		return tx.ForEach(func(_ []byte, b *bolt.Bucket) error { return b.ForEach(func(k, v []byte) error { return nil }) })
	})
}

// A file truncated under an open database faults (SIGBUS) on the next read of a page past
// the new end; Guard turns that into an error instead of a crash.
func TestGuardTurnsAFaultIntoAnError(t *testing.T) {
	path := realFile(t, 5000)
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	// No Close: bbolt keeps its locks after a fault inside a transaction, so Close would wait
	// forever; a faulted database is abandoned (the agent moves the file aside and opens a
	// new one).
	if err := os.Truncate(path, 0); err != nil {
		t.Fatal(err)
	}
	err = Guard(func() error {
		return db.View(func(tx *bolt.Tx) error {
			n := 0
			return tx.Bucket([]byte("records")).ForEach(func(k, v []byte) error { n += len(v); return nil })
		})
	})
	if !errors.Is(err, ErrDamaged) {
		t.Fatalf("reading a truncated mapping: %v; want ErrDamaged", err)
	}
	if err := Guard(func() error { panic("page 7: unexpected flags") }); !errors.Is(err, ErrDamaged) || !strings.Contains(err.Error(), "page 7") {
		t.Errorf("a panic: %v; want ErrDamaged with its message", err)
	}
}

func TestMoveAside(t *testing.T) {
	path := realFile(t, 10)
	at := time.Date(2026, 12, 3, 23, 5, 0, 0, time.UTC)
	moved, err := MoveAside(path, at)
	if err != nil || moved != path+".damaged-20261203T230500Z" {
		t.Fatalf("MoveAside = %q, %v", moved, err)
	}
	os.WriteFile(path, []byte("again"), 0o600)
	again, err := MoveAside(path, at)
	if err != nil || again == moved {
		t.Errorf("a second move in the same second: %q, %v; want another name", again, err)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("the file is still in place: %v", err)
	}
}
