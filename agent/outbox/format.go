package outbox

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/edge-agent/edge-agent/internal/boltcheck"
)

// File layout (format 1):
//
//	bucket "meta":           "format" → "1"; "stream:<name>" → streamState counters
//	bucket "stream:<name>":  8-byte big-endian seq → 8-byte big-endian unix-nano append time + data
//
// The bucket's own sequence (NextSequence) numbers records, so the last sequence given out
// survives deletes, restarts and compaction (which copies bucket sequences). The counters
// in meta are written in the same transaction as the records they count, so Open needs
// no scan.
const (
	formatVersion = "1"
	streamPrefix  = "stream:"
	tsLen         = 8
)

var (
	metaBucket = []byte("meta")
	formatKey  = []byte("format")
	epochKey   = []byte("epoch")                        // 8 bytes big-endian; absent for epoch 0 (seqlease.go)
	errNoWrite = errors.New("outbox: nothing to write") // rolls back a transaction that changed nothing
)

func streamBucket(name string) []byte { return []byte(streamPrefix + name) }

func seqKey(seq uint64) []byte {
	k := make([]byte, 8)
	binary.BigEndian.PutUint64(k, seq)
	return k
}

// streamState is a stream's accounting. The committer owns the live copy; readers see the
// copy published after each commit.
type streamState struct {
	count    int
	bytes    int64
	first    uint64 // seq of the oldest record; 0 when empty
	last     uint64 // last seq given out (the bucket sequence)
	oldest   int64  // unix-nano append time of the oldest record; 0 when empty
	appended uint64
	acked    uint64
	dropped  Dropped
}

// The persisted counters, in this order, 8 bytes each. Decoding ignores extra trailing
// fields so that a later format can add some.
const stateFields = 7

func (st *streamState) encode() []byte {
	b := make([]byte, 8*stateFields)
	for i, v := range []uint64{uint64(st.count), uint64(st.bytes), st.appended, st.acked, st.dropped.Oldest, st.dropped.Newest, st.dropped.Age} {
		binary.BigEndian.PutUint64(b[8*i:], v)
	}
	return b
}

func (st *streamState) decode(b []byte) error {
	if len(b) < 8*stateFields {
		return fmt.Errorf("stream counters are %d bytes, want at least %d", len(b), 8*stateFields)
	}
	u := func(i int) uint64 { return binary.BigEndian.Uint64(b[8*i:]) }
	st.count, st.bytes = int(u(0)), int64(u(1))
	st.appended, st.acked = u(2), u(3)
	st.dropped = Dropped{Oldest: u(4), Newest: u(5), Age: u(6)}
	return nil
}

// readHead sets first and oldest from the bucket's first record.
func (st *streamState) readHead(c *bolt.Cursor) {
	k, v := c.First()
	if k == nil || len(k) != 8 || len(v) < tsLen {
		st.first, st.oldest = 0, 0
		return
	}
	st.first = binary.BigEndian.Uint64(k)
	st.oldest = int64(binary.BigEndian.Uint64(v))
}

// load checks the file's format, creates what is missing and reads each stream's state.
func (o *Outbox) load() error {
	notOurs := func(why string) error { return &notOutboxError{o.path, why} }
	err := o.db.Update(func(tx *bolt.Tx) error {
		// Read every page once, here where a damaged one is an error at open (Open runs load
		// under boltcheck.Guard), not a fault in the middle of serving.
		if err := tx.ForEach(func(_ []byte, b *bolt.Bucket) error { return boltcheck.Walk(b) }); err != nil {
			return err
		}
		wrote := false
		meta := tx.Bucket(metaBucket)
		if meta == nil {
			// A new file is empty; a bbolt file of someone else's has buckets.
			if k, _ := tx.Cursor().First(); k != nil {
				return notOurs(fmt.Sprintf("it has a bucket %q but no %q bucket", k, metaBucket))
			}
			var err error
			if meta, err = tx.CreateBucket(metaBucket); err != nil {
				return err
			}
			if err := meta.Put(formatKey, []byte(formatVersion)); err != nil {
				return err
			}
			wrote = true
		} else if f := meta.Get(formatKey); !bytes.Equal(f, []byte(formatVersion)) {
			return notOurs(fmt.Sprintf("format %q, this agent reads format %s", f, formatVersion))
		}
		if err := o.loadEpoch(meta); err != nil {
			return err
		} else if o.epochChanged {
			wrote = true
		}
		for _, s := range o.list {
			b := tx.Bucket(s.bkt)
			if b == nil {
				var err error
				if b, err = tx.CreateBucket(s.bkt); err != nil {
					return err
				}
				wrote = true
			}
			var st streamState
			if v := meta.Get(s.bkt); v != nil {
				if err := st.decode(v); err != nil {
					return notOurs(fmt.Sprintf("stream %q: %v", s.name, err))
				}
			} else if k, _ := b.Cursor().First(); k != nil {
				// Records without counters: count them once and persist the result.
				err := b.ForEach(func(k, v []byte) error {
					st.count++
					st.bytes += int64(len(v) - tsLen)
					return nil
				})
				if err != nil {
					return err
				}
				if err := meta.Put(s.bkt, st.encode()); err != nil {
					return err
				}
				wrote = true
			}
			st.last = b.Sequence()
			if given, ok := o.leased[s.name]; ok && (o.fresh || st.last < given) {
				// A new outbox, or one older than the lease: start above every sequence the
				// stream may have given out.
				next := given + o.opt.lease
				o.log.Warn("outbox: the stream starts above its sequence lease (the outbox file is newer or older than the one that gave them out)",
					"file", o.path, "stream", s.name, "last_in_file", st.last, "lease", given, "next_seq", next+1)
				if err := b.SetSequence(next); err != nil {
					return err
				}
				st.last, wrote = next, true
			}
			st.readHead(b.Cursor())
			if st.first == 0 && st.count != 0 {
				return notOurs(fmt.Sprintf("stream %q: counters say %d records, the bucket has none", s.name, st.count))
			}
			s.st = st
			s.pub = st
		}
		// Streams no longer declared keep their records (a later config may declare them
		// again); say so, since nothing serves them meanwhile.
		err := tx.ForEach(func(name []byte, _ *bolt.Bucket) error {
			n, ok := bytes.CutPrefix(name, []byte(streamPrefix))
			if ok && o.streams[string(n)] == nil {
				o.log.Warn("outbox: stream in the file is not declared; its records are kept but not sent", "file", o.path, "stream", string(n))
			}
			return nil
		})
		if err == nil && !wrote {
			err = errNoWrite
		}
		return err
	})
	switch {
	case err == nil, errors.Is(err, errNoWrite):
		return nil
	case errors.As(err, new(*notOutboxError)):
		return err
	default:
		return fmt.Errorf("outbox %s: load: %w", o.path, err)
	}
}

// notOutboxError: the file is a bbolt file, but not an outbox this agent can read.
type notOutboxError struct{ path, why string }

func (e *notOutboxError) Error() string {
	return fmt.Sprintf("outbox %s is not an outbox file (%s): move it aside; the agent will create a new one", e.path, e.why)
}

func (e *notOutboxError) Unwrap() error { return ErrDamaged }

func tsTime(ns int64) time.Time {
	if ns == 0 {
		return time.Time{}
	}
	return time.Unix(0, ns)
}
