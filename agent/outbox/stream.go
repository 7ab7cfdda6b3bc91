package outbox

import (
	"context"
	"encoding/binary"
	"fmt"
	"sync"
	"sync/atomic"

	bolt "go.etcd.io/bbolt"
)

// Stream is one named, numbered sequence of records in an Outbox.
type Stream struct {
	o    *Outbox
	name string
	idx  int    // in o.list, for the committer's per-transaction state
	bkt  []byte // bucket name, also the key of its counters in meta
	caps Caps
	// slots bounds the appends a Block stream keeps parked while it is full.
	slots chan struct{}

	// Committer-owned.
	st     streamState
	parked []*op // Block: appends waiting for room, oldest first
	// For tests: len(parked) after the last commit, and Reads waiting for a record.
	nparked, waiting atomic.Int32
	// Appends not stored, by cause (space.go).
	noSpace, failed atomic.Uint64

	mu   sync.Mutex
	pub  streamState   // st as of the last commit
	wake chan struct{} // closed and replaced when a commit adds records
}

// Name returns the stream's name.
func (s *Stream) Name() string { return s.name }

// Append stores data as the stream's next record and returns its sequence number once the
// record is committed to disk (fsync'd). data may be reused when Append returns.
//
// At the stream's caps, drop-oldest evicts the oldest records (counted), drop-newest returns
// ErrFull (counted) and block waits until acks make room or ctx ends. A ctx error means the
// record was not stored.
func (s *Stream) Append(ctx context.Context, data []byte) (uint64, error) {
	if len(data) > s.o.opt.MaxRecord || int64(len(data)) > s.caps.MaxBytes {
		return 0, fmt.Errorf("outbox append to %q: %w: %d bytes, the limit is %d (MaxRecord) and %d (the stream's MaxBytes)",
			s.name, ErrTooLarge, len(data), s.o.opt.MaxRecord, s.caps.MaxBytes)
	}
	if s.o.closed.Load() {
		return 0, ErrClosed
	}
	if s.slots != nil {
		select {
		case s.slots <- struct{}{}:
			defer func() { <-s.slots }()
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-s.o.closing:
			return 0, ErrClosed
		}
	}
	// The committer writes the timestamp into the first 8 bytes when it stores the record.
	val := make([]byte, tsLen+len(data))
	copy(val[tsLen:], data)
	op := &op{kind: opAppend, s: s, val: val, reply: make(chan result, 1)}
	return s.o.send(ctx, op)
}

// Ack deletes every record with seq <= through: the broker has them. It is committed like
// an Append before it returns.
func (s *Stream) Ack(ctx context.Context, through uint64) error {
	if s.o.closed.Load() {
		return ErrClosed
	}
	op := &op{kind: opAck, s: s, through: through, reply: make(chan result, 1)}
	_, err := s.o.send(ctx, op)
	return err
}

// Read calls fn, in seq order, for up to max records with seq > after whose data adds up to
// at most maxBytes, but always for at least one record if any exists, however large; max or
// maxBytes <= 0 means no limit of that kind. data is valid only during fn (it points into
// the mapped file), and fn should be quick: it runs inside a read transaction, which holds
// up compaction and Close.
//
// When no record with seq > after exists, Read waits until one is committed or ctx ends
// (then it returns 0, ctx.Err()). It returns the number of records passed to fn.
//
// fn must not call the Outbox: a compaction waiting for this read would wait for it.
func (s *Stream) Read(ctx context.Context, after uint64, max, maxBytes int, fn func(seq uint64, data []byte)) (int, error) {
	for {
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		// Records are deleted only from the front, so one with seq > after exists exactly
		// when the stream is not empty and its newest seq is > after. Taking wake under the
		// same lock as the state means a commit after this check closes this channel (or
		// a later one, after closing this one): no wakeup is missed.
		s.mu.Lock()
		has := s.pub.count > 0 && s.pub.last > after
		wake := s.wake
		s.mu.Unlock()
		if has {
			n, err := s.read(after, max, maxBytes, fn)
			if err != nil || n > 0 {
				return n, err
			}
			continue // acked or dropped meanwhile: look again
		}
		s.waiting.Add(1)
		select {
		case <-wake:
			s.waiting.Add(-1)
		case <-ctx.Done():
			s.waiting.Add(-1)
			return 0, ctx.Err()
		case <-s.o.closing:
			s.waiting.Add(-1)
			return 0, ErrClosed
		}
	}
}

func (s *Stream) read(after uint64, max, maxBytes int, fn func(uint64, []byte)) (int, error) {
	n, total := 0, 0
	err := s.o.view(func(tx *bolt.Tx) error {
		b := tx.Bucket(s.bkt)
		if b == nil {
			return fmt.Errorf("outbox %s: stream %q has no bucket", s.o.path, s.name)
		}
		c := b.Cursor()
		for k, v := c.Seek(seqKey(after + 1)); k != nil; k, v = c.Next() {
			if max > 0 && n >= max {
				break
			}
			data := v[tsLen:]
			if maxBytes > 0 && n > 0 && total+len(data) > maxBytes {
				break
			}
			total += len(data)
			fn(binary.BigEndian.Uint64(k), data)
			n++
		}
		return nil
	})
	if err != nil {
		return n, fmt.Errorf("outbox read %q: %w", s.name, err)
	}
	s.o.readBytes(total)
	return n, nil
}

// Stats returns the stream's counters as of the last commit.
func (s *Stream) Stats() StreamStats {
	s.mu.Lock()
	st := s.pub
	s.mu.Unlock()
	return StreamStats{
		Count:    st.count,
		Bytes:    st.bytes,
		OldestTS: tsTime(st.oldest),
		LastSeq:  st.last,
		Appended: st.appended,
		Acked:    st.acked,
		Dropped:  st.dropped,
		Refused:  Refused{NoSpace: s.noSpace.Load(), Failed: s.failed.Load()},
		Caps:     s.caps,
	}
}

// publish makes the committed state visible to Read and Stats, waking readers if records
// were added.
func (s *Stream) publish(added bool) {
	s.mu.Lock()
	s.pub = s.st
	if added {
		close(s.wake)
		s.wake = make(chan struct{})
	}
	s.mu.Unlock()
}
