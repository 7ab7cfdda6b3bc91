package state

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/edge-agent/edge-agent/internal/testenv"
)

func openT(t testing.TB, path string) *Store {
	t.Helper()
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

var t0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

func at(d time.Duration) time.Time { return t0.Add(d) }

func remember(t testing.TB, s *Store, id string, until, now time.Time, limit int) bool {
	t.Helper()
	seen, err := s.Remember(id, until, now, limit)
	if err != nil {
		t.Fatalf("Remember(%q): %v", id, err)
	}
	return seen
}

func TestSeenAndExpiry(t *testing.T) {
	testenv.NoGoroutineLeaks(t)
	dir := filepath.Join(t.TempDir(), "a", "b") // Open creates missing directories
	path := filepath.Join(dir, "state.db")
	s := openT(t, path)
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("file mode: got %v (%v); want 0600", fi.Mode().Perm(), err)
	}

	for _, step := range []struct {
		id         string
		until, now time.Duration
		want       bool
	}{
		{"a", time.Hour, 0, false},
		{"a", time.Hour, time.Minute, true},
		{"b", time.Hour, time.Minute, false},
		{"a", time.Hour, time.Hour, true},                    // until == now: still remembered
		{"a", 2 * time.Hour, time.Hour + time.Second, false}, // expired, so new again
		{"a", time.Hour, 90 * time.Minute, true},             // keeps the later until (2h)
		{"a", 3 * time.Hour, 2*time.Hour + time.Second, false},
		{"b", 3 * time.Hour, 2*time.Hour + time.Second, false}, // b expired at 1h
	} {
		if got := remember(t, s, step.id, at(step.until), at(step.now), 100); got != step.want {
			t.Errorf("Remember(%q, until %v, now %v): got seen %v; want %v", step.id, step.until, step.now, got, step.want)
		}
	}
	if s.ids != 2 {
		t.Errorf("ids kept: got %d; want 2", s.ids)
	}
}

func TestLimitEvictsSoonestExpiring(t *testing.T) {
	testenv.NoGoroutineLeaks(t)
	s := openT(t, filepath.Join(t.TempDir(), "state.db"))
	// Remembered in an order unlike their expiry.
	for _, x := range []struct {
		id    string
		until time.Duration
	}{{"c", 3 * time.Hour}, {"a", time.Hour}, {"d", 4 * time.Hour}, {"b", 2 * time.Hour}} {
		remember(t, s, x.id, at(x.until), t0, 4)
	}
	// Two more over a limit of 4: a and b (soonest) go, the newest stays even though it
	// expires soonest of all.
	remember(t, s, "e", at(5*time.Hour), t0, 4)
	remember(t, s, "f", at(time.Minute), t0, 4)
	got := map[string]bool{}
	for _, id := range []string{"a", "b", "c", "d", "e", "f"} {
		got[id] = ids(t, s)[id]
	}
	want := map[string]bool{"a": false, "b": false, "c": true, "d": true, "e": true, "f": true}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("kept after eviction: got %v; want %v", got, want)
	}
	// A smaller limit evicts down to it at the next Remember.
	remember(t, s, "g", at(6*time.Hour), t0, 2)
	if got, want := fmt.Sprint(ids(t, s)), "map[e:true g:true]"; got != want {
		t.Errorf("kept after limit 2: got %v; want %v", got, want)
	}
	if s.ids != 2 {
		t.Errorf("ids count: got %d; want 2", s.ids)
	}
}

// ids lists the remembered ids, checking that the index agrees.
func ids(t testing.TB, s *Store) map[string]bool {
	t.Helper()
	m := map[string]bool{}
	err := s.db.View(func(tx *bolt.Tx) error {
		exp := tx.Bucket(bucketExp)
		if err := tx.Bucket(bucketIDs).ForEach(func(k, v []byte) error {
			if exp.Get(expKey(v, k)) == nil {
				return fmt.Errorf("id %q has no index entry", k)
			}
			m[string(k)] = true
			return nil
		}); err != nil {
			return err
		}
		if n := exp.Stats().KeyN; n != len(m) {
			return fmt.Errorf("index has %d entries; want %d", n, len(m))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestSurvivesReopen(t *testing.T) {
	testenv.NoGoroutineLeaks(t)
	path := filepath.Join(t.TempDir(), "state.db")
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	remember(t, s, "cmd-1", at(time.Hour), t0, 10)
	remember(t, s, "cmd-2", at(time.Minute), t0, 10)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openT(t, path)
	if s.ids != 2 {
		t.Errorf("ids after reopen: got %d; want 2", s.ids)
	}
	if !remember(t, s, "cmd-1", at(time.Hour), at(30*time.Minute), 10) {
		t.Error("cmd-1 after reopen: got unseen; want seen")
	}
	if remember(t, s, "cmd-2", at(time.Hour), at(30*time.Minute), 10) {
		t.Error("cmd-2 after reopen and its expiry: got seen; want unseen")
	}
}

func TestRememberErrors(t *testing.T) {
	testenv.NoGoroutineLeaks(t)
	s := openT(t, filepath.Join(t.TempDir(), "state.db"))
	if _, err := s.Remember("", at(time.Hour), t0, 10); err == nil {
		t.Error("Remember of an empty id: got nil error")
	}
	if _, err := s.Remember("x", at(time.Hour), t0, 0); err == nil || !strings.Contains(err.Error(), "limit") {
		t.Errorf("Remember with limit 0: got %v; want an error about the limit", err)
	}
	s.Close()
	if _, err := s.Remember("x", at(time.Hour), t0, 10); err == nil || !strings.Contains(err.Error(), "x") {
		t.Errorf("Remember after Close: got %v; want an error naming the id", err)
	}
}

func TestLocked(t *testing.T) {
	testenv.NoGoroutineLeaks(t)
	path := filepath.Join(t.TempDir(), "state.db")
	openT(t, path)
	_, err := open(path, 50*time.Millisecond)
	if want := fmt.Sprintf("state %s is locked by another process (is another edge-agent running?)", path); err == nil || err.Error() != want {
		t.Errorf("Open of a locked file: got %v; want %q", err, want)
	}
}

func TestDamagedFile(t *testing.T) {
	testenv.NoGoroutineLeaks(t)
	dir := t.TempDir()
	valid := filepath.Join(dir, "valid.db")
	s, err := Open(valid)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 50 {
		remember(t, s, fmt.Sprint("id-", i), at(time.Hour), t0, 100)
	}
	s.Close()
	validBytes, err := os.ReadFile(valid)
	if err != nil {
		t.Fatal(err)
	}
	foreign := filepath.Join(dir, "foreign.db")
	db, err := bolt.Open(foreign, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bolt.Tx) error { _, err := tx.CreateBucket([]byte("results")); return err }); err != nil {
		t.Fatal(err)
	}
	db.Close()
	// An id without its index entry.
	torn := filepath.Join(dir, "torn.db")
	if err := os.WriteFile(torn, validBytes, 0o600); err != nil {
		t.Fatal(err)
	}
	db, err = bolt.Open(torn, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketIDs).Put([]byte("stray"), stamp(t0)) }); err != nil {
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
		{"torn.db", nil},
	} {
		path := filepath.Join(dir, tc.name)
		if tc.data != nil {
			if err := os.WriteFile(path, tc.data, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		s, err := Open(path)
		if err == nil {
			s.Close()
			t.Errorf("%s: Open succeeded; want an error", tc.name)
			continue
		}
		if msg := err.Error(); !strings.Contains(msg, path) || !strings.Contains(msg, "move it aside") || !errors.Is(err, ErrDamaged) {
			t.Errorf("%s: got %q; want ErrDamaged with the file's name and what to do", tc.name, msg)
		}
		// The file is not left locked: it can be moved aside and a new store opened.
		if err := os.Rename(path, path+".damaged"); err != nil {
			t.Fatal(err)
		}
		s = openT(t, path)
		s.Close()
	}
}

// The damage matrix of the fault-injection audit: a state file truncated anywhere (10,000
// bytes faulted with SIGBUS on every start before), with random bytes over its data pages, or
// with a meta page zeroed, never faults or panics the process. Open either reads it whole or
// refuses it with ErrDamaged, and a new store opens in its place.
func TestDamageMatrixNeverCrashes(t *testing.T) {
	dir := t.TempDir()
	valid := filepath.Join(dir, "valid.db")
	s := openT(t, valid)
	for i := range 3000 {
		remember(t, s, fmt.Sprintf("command-id-%06d", i), at(time.Hour), t0, 10000)
	}
	s.Close()
	cases := testenv.DamagedCopies(t, valid, 10_000) // 10,000 bytes faulted with SIGBUS before
	refused, salvaged := 0, 0
	for name, data := range cases {
		path := filepath.Join(t.TempDir(), "state.db")
		os.WriteFile(path, data, 0o600)
		s, err := Open(path)
		switch {
		case err == nil:
			s.Close()
			if strings.HasPrefix(name, "truncated") {
				t.Errorf("%s: opened; a truncated file must be refused", name)
			}
		case errors.Is(err, ErrDamaged):
			refused++
			if err := os.Rename(path, path+".damaged"); err != nil {
				t.Fatal(err)
			}
			s, rec, err := Salvage(path, path+".damaged")
			if err != nil {
				t.Fatalf("%s: Salvage: %v", name, err)
			}
			// Each kept id is in the store, with its index entry (Open's check, below).
			kept := 0
			for i := range 3000 {
				s.db.View(func(tx *bolt.Tx) error {
					if v := tx.Bucket(bucketIDs).Get(fmt.Appendf(nil, "command-id-%06d", i)); v != nil {
						kept++
					}
					return nil
				})
			}
			if kept != rec.IDs || rec.Whole && kept != 3000 {
				t.Errorf("%s: %d ids seen again, report %+v", name, kept, rec)
			}
			salvaged += kept
			s.Close()
			s = openT(t, path) // Open checks every id has its index entry
			t.Logf("%s: %d of 3000 ids kept (whole %v, %d bad pages)", name, kept, rec.Whole, rec.BadPages)
			s.Close()
		default:
			t.Errorf("%s: %v; want ErrDamaged or a whole store", name, err)
		}
	}
	if salvaged < refused*3000/2 {
		t.Errorf("%d ids kept over %d damaged files; want at least half of what they held", salvaged, refused)
	}
	t.Logf("%d damage patterns, %d refused as damaged and salvaged, the rest read whole; no crash", len(cases), refused)
}
