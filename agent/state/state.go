// Package state is the agent's small durable state store: a tiny bbolt file for the state
// the agent itself must keep across restarts: the command ids the agent has seen, so that a
// replayed command is refused (agent/command asks through a Remember func that agent.go wires
// to Store.Remember), and, in a file of its own (clock.go), the latest issued_at of the
// commands taken, so that a clock set back cannot reopen a replay.
//
// It is the second and last importer of go.etcd.io/bbolt (agent/outbox is the first, for
// results). Keep it small: large or high-rate data belongs in the outbox.
//
// Layout: bucket "cmd-ids" maps a command id to its 8-byte big-endian expiry (Unix ns);
// bucket "cmd-exp" indexes the same entries as expiry(8)+id → empty, so the soonest expiring
// id is the first key. Every Remember is one fsync'd write transaction that also deletes the
// ids that have expired.
//
// Imports: the standard library, bbolt, internal/boltcheck and internal/durable only. It must not import any
// other agent/* package, nor hal/* or models/*.
package state

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/edge-agent/edge-agent/internal/boltcheck"
	"github.com/edge-agent/edge-agent/internal/durable"
)

// ErrDamaged: the file is not a usable state file (damaged, or another program's file).
// Open's error names the file and says to move it aside.
var ErrDamaged = errors.New("state file is damaged")

const lockTimeout = 2 * time.Second

var (
	bucketIDs = []byte("cmd-ids")
	bucketExp = []byte("cmd-exp")
)

// Store is an open state file. Its methods are safe for concurrent use.
type Store struct {
	path string
	db   *bolt.DB

	mu  sync.Mutex // serialises Remember, which keeps n in step with the file
	ids int        // ids in cmd-ids
}

// Open opens the state file at path, creating it (mode 0600) and its directory (0700) if
// needed. Another process holding the file makes Open fail after 2 s; a file that is not a
// state file makes it fail with an error wrapping ErrDamaged that names the file.
func Open(path string) (*Store, error) { return open(path, lockTimeout) }

func open(path string, timeout time.Duration) (*Store, error) {
	if err := durable.MkdirAll(filepath.Dir(path)); err != nil {
		return nil, fmt.Errorf("state %s: create its directory: %w", path, err)
	}
	// bbolt trusts the file it maps: a truncated one faults (SIGBUS) when it reads past the
	// end. Check the meta pages and size first.
	if _, err := boltcheck.Preflight(path); err != nil {
		if errors.Is(err, boltcheck.ErrDamaged) {
			return nil, damaged(path, err.Error())
		}
		return nil, fmt.Errorf("state %s: %w", path, err)
	}
	db, err := openBolt(path, timeout)
	if err != nil {
		return nil, err
	}
	s := &Store{path: path, db: db}
	// Read every page once, faults and panics turned into errors (boltcheck.Guard).
	err = boltcheck.Guard(s.load)
	if errors.Is(err, boltcheck.ErrDamaged) {
		// bbolt may still hold its locks after a fault: abandon this handle (Close could wait
		// forever); the caller moves the file aside.
		return nil, damaged(path, err.Error())
	}
	if err != nil {
		db.Close()
		return nil, err
	}
	return s, nil
}

// openBolt opens path and turns bbolt's errors (and panics, which bbolt raises on some
// damaged files) into ones that say what to do.
func openBolt(path string, timeout time.Duration) (db *bolt.DB, err error) {
	var file *os.File
	opts := &bolt.Options{
		Timeout: timeout,
		OpenFile: func(name string, flag int, perm os.FileMode) (*os.File, error) {
			f, err := os.OpenFile(name, flag, perm)
			file = f
			return f, err
		},
	}
	defer func() {
		if r := recover(); r != nil {
			if file != nil {
				file.Close() // bbolt leaves it open and locked when it panics
			}
			db, err = nil, damaged(path, fmt.Sprint(r))
		}
	}()
	db, err = bolt.Open(path, 0o600, opts)
	switch {
	case err == nil:
		return db, nil
	case errors.Is(err, bolt.ErrTimeout):
		return nil, fmt.Errorf("state %s is locked by another process (is another edge-agent running?)", path)
	case errors.Is(err, os.ErrPermission), errors.Is(err, os.ErrNotExist):
		return nil, fmt.Errorf("open state %s: %w", path, err)
	default:
		return nil, damaged(path, err.Error())
	}
}

func damaged(path, why string) error {
	return fmt.Errorf("state %s is not a usable state file (%s): move it aside; the agent will create a new one (and forget which command ids it has seen): %w", path, why, ErrDamaged)
}

// load creates the buckets of a new file and checks an existing one.
func (s *Store) load() error {
	err := s.db.Update(func(tx *bolt.Tx) error {
		if err := tx.ForEach(func(name []byte, b *bolt.Bucket) error {
			if !bytes.Equal(name, bucketIDs) && !bytes.Equal(name, bucketExp) {
				return damaged(s.path, fmt.Sprintf("unknown bucket %q", name))
			}
			return boltcheck.Walk(b)
		}); err != nil {
			return err
		}
		ids, err := tx.CreateBucketIfNotExists(bucketIDs)
		if err != nil {
			return err
		}
		exp, err := tx.CreateBucketIfNotExists(bucketExp)
		if err != nil {
			return err
		}
		// Every id has exactly one index entry that agrees with it.
		n := 0
		if err := ids.ForEach(func(id, v []byte) error {
			n++
			if len(v) != 8 || exp.Get(expKey(v, id)) == nil {
				return damaged(s.path, fmt.Sprintf("command id %q has no valid expiry", id))
			}
			return nil
		}); err != nil {
			return err
		}
		if m := exp.Stats().KeyN; m != n {
			return damaged(s.path, fmt.Sprintf("%d command ids but %d index entries", n, m))
		}
		s.ids = n
		return nil
	})
	if err != nil && !errors.Is(err, ErrDamaged) {
		return fmt.Errorf("state %s: load: %w", s.path, err)
	}
	return err
}

// update runs fn in a write transaction with a fault or panic of a damaged page turned into
// an error wrapping ErrDamaged (the command is then refused, not the process stopped).
func (s *Store) update(fn func(*bolt.Tx) error) error {
	err := boltcheck.Guard(func() error { return s.db.Update(fn) })
	if errors.Is(err, boltcheck.ErrDamaged) {
		return damaged(s.path, err.Error())
	}
	return err
}

// Close closes the file.
func (s *Store) Close() error {
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("close state %s: %w", s.path, err)
	}
	return nil
}

// Remember records id until `until` and reports whether it was already remembered (and not
// expired at now). An id expires when now is after its until; a seen id keeps the later of
// its two untils. At most limit ids are kept: when a new id would make more, the ones
// expiring soonest are evicted first (never the id just recorded). The change is committed
// and fsync'd before Remember returns.
func (s *Store) Remember(id string, until, now time.Time, limit int) (seen bool, err error) {
	if id == "" {
		return false, errors.New("state: remember an empty command id: give every command an id")
	}
	if limit < 1 {
		return false, fmt.Errorf("state: remember command id %q: limit is %d; want at least 1", id, limit)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	key, newUntil := []byte(id), stamp(until)
	nowNs := binary.BigEndian.Uint64(stamp(now))
	n := s.ids
	err = s.update(func(tx *bolt.Tx) error {
		n = s.ids
		ids, exp := tx.Bucket(bucketIDs), tx.Bucket(bucketExp)
		// Forget the expired ids: their until is before now.
		cur := exp.Cursor()
		for k, _ := cur.First(); k != nil && binary.BigEndian.Uint64(k[:8]) < nowNs; k, _ = cur.First() {
			if err := forget(ids, exp, k); err != nil {
				return err
			}
			n--
		}
		if old := ids.Get(key); old != nil {
			seen = true
			if binary.BigEndian.Uint64(old) >= binary.BigEndian.Uint64(newUntil) {
				return nil
			}
			if err := exp.Delete(expKey(old, key)); err != nil {
				return err
			}
			n--
		}
		if err := ids.Put(key, newUntil); err != nil {
			return err
		}
		if err := exp.Put(expKey(newUntil, key), nil); err != nil {
			return err
		}
		n++
		// Evict the soonest expiring ids beyond the limit, skipping the one just recorded.
		for k, _ := cur.First(); n > limit && k != nil; {
			if bytes.Equal(k[8:], key) {
				k, _ = cur.Next()
				continue
			}
			k = bytes.Clone(k)
			if err := forget(ids, exp, k); err != nil {
				return err
			}
			n--
			k, _ = cur.Seek(k) // the deleted key's successor
		}
		return nil
	})
	if err != nil {
		return false, fmt.Errorf("state %s: remember command id %q: %w", s.path, id, err)
	}
	s.ids = n
	return seen, nil
}

// forget deletes the id whose index key is k from both buckets.
func forget(ids, exp *bolt.Bucket, k []byte) error {
	k = bytes.Clone(k) // bbolt's key memory is not ours after a delete
	if err := exp.Delete(k); err != nil {
		return err
	}
	return ids.Delete(k[8:])
}

// stamp is t as 8 big-endian bytes of Unix nanoseconds, times before 1970 as 0.
func stamp(t time.Time) []byte {
	ns := t.UnixNano()
	if ns < 0 || t.IsZero() {
		ns = 0
	}
	return binary.BigEndian.AppendUint64(nil, uint64(ns))
}

func expKey(until, id []byte) []byte {
	return append(append(make([]byte, 0, 8+len(id)), until...), id...)
}
