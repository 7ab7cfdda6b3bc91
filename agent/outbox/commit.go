package outbox

import (
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"time"

	bolt "go.etcd.io/bbolt"
)

// run is the committer: the one goroutine that writes to the file. Open starts it; it stops
// when Close closes o.closing, after committing what was queued.
func (o *Outbox) run() {
	defer close(o.done)
	tick := time.NewTicker(o.opt.tick)
	defer tick.Stop()
	o.housekeep()
	var batch []*op
	for {
		select {
		case first := <-o.ops:
			batch = o.collect(append(batch[:0], first))
			o.commit(batch)
			clear(batch) // the ops and their data are garbage now
		case <-tick.C:
			o.housekeep()
		case <-o.release:
			o.releaseResident()
		case <-o.closing:
			o.stop()
			return
		}
	}
}

// collect adds to batch what is queued, up to MaxBatch, waiting up to MaxWait for more.
func (o *Outbox) collect(batch []*op) []*op {
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	grew := true
	for len(batch) < o.opt.MaxBatch {
		select {
		case op := <-o.ops:
			batch = append(batch, op)
			grew = true
			continue
		default:
		}
		if o.opt.MaxWait <= 0 {
			// Writers woken by the last commit's replies are about to send their next
			// op: yield to them while that brings more, so they share this commit
			// instead of trickling into several small ones. No timer, no idle wait.
			if !grew {
				return batch
			}
			grew = false
			runtime.Gosched()
			continue
		}
		if timer == nil {
			timer = time.NewTimer(o.opt.MaxWait)
		}
		select {
		case op := <-o.ops:
			batch = append(batch, op)
		case <-timer.C:
			return batch
		case <-o.closing:
			return batch
		}
	}
	return batch
}

// stop commits what is queued and tells parked appends the outbox is closed.
func (o *Outbox) stop() {
	for {
		batch := o.collectQueued()
		if len(batch) == 0 {
			break
		}
		o.commit(batch)
	}
	for _, s := range o.list {
		for _, op := range s.parked {
			if op.state.CompareAndSwap(opPending, opTaken) {
				op.reply <- result{err: fmt.Errorf("outbox append to %q: %w while waiting for room", s.name, ErrClosed)}
			}
		}
		s.parked = nil
	}
}

func (o *Outbox) collectQueued() []*op {
	var batch []*op
	for len(batch) < o.opt.MaxBatch {
		select {
		case op := <-o.ops:
			batch = append(batch, op)
		default:
			return batch
		}
	}
	return batch
}

// housekeep runs on a timer: it expires records of quiet streams, forgets parked appends
// whose callers gave up, considers compaction and releases the file's resident pages.
func (o *Outbox) housekeep() {
	now := o.opt.Now().UnixNano()
	expire := false
	for _, s := range o.list {
		s.parked = slices.DeleteFunc(s.parked, func(op *op) bool { return op.state.Load() == opCancelled })
		s.nparked.Store(int32(len(s.parked)))
		if s.expirable(&s.st, now) {
			expire = true
		}
	}
	if expire {
		o.commit(nil)
	}
	o.maybeCompact(false)
	o.releaseResident()
	o.checkSpace()
}

// commit applies batch (and expiry, and parked appends that now fit) in one transaction,
// then replies to every op it took.
func (o *Outbox) commit(batch []*op) {
	t := txn{o: o, now: o.opt.Now().UnixNano(), ws: make([]work, len(o.list))}
	var err error
	if o.db == nil { // compaction could not reopen the file
		err = o.fatal
		for _, op := range batch {
			if op.state.CompareAndSwap(opPending, opTaken) {
				t.taken = append(t.taken, op)
			}
		}
	} else {
		err = guard(func() error {
			return o.db.Update(func(tx *bolt.Tx) error {
				t.tx = tx
				return t.apply(batch)
			})
		})
	}
	for _, s := range o.list {
		s.nparked.Store(int32(len(s.parked)))
	}
	wrote := err == nil
	if errors.Is(err, errNoWrite) {
		err = nil
	}
	if err != nil {
		err = fmt.Errorf("outbox commit: %w", err)
		var acks []*op
		retry := isNoSpace(err) && !o.full.Load()
		if retry {
			o.enterFull(err)
		} else {
			o.noteFailure(err, len(t.taken))
		}
		for _, op := range t.taken {
			switch {
			case op.kind == opAck && retry:
				// Tried again at once, alone: the released reserve is for them.
				op.state.Store(opPending)
				acks = append(acks, op)
			case op.kind == opAppend:
				op.reply <- result{err: op.s.refuseAppend(err)}
			default:
				op.reply <- result{err: err}
			}
		}
		if len(acks) > 0 {
			o.commit(acks)
		}
		return
	}
	if wrote {
		o.commits.Add(1)
	}
	t.publish()
	if o.leaseDue() && time.Now().After(o.leaseRetry) {
		if err := o.renewLeases(); err != nil {
			o.leaseRetry = time.Now().Add(10 * time.Second) // a full disk: say so every 10 s, not every commit
			o.log.Error("outbox: the sequence lease was not renewed; a replaced outbox could repeat sequence numbers", "err", err)
		}
	}
	for _, op := range t.taken {
		op.reply <- op.res
	}
	if t.deleted {
		o.maybeCompact(false)
	}
}

// txn is one write transaction of the committer.
type txn struct {
	o       *Outbox
	tx      *bolt.Tx
	now     int64 // unix nano: the timestamp of every record stored in it
	ws      []work
	taken   []*op // ops applied or refused in it: they get a reply after the commit
	wrote   bool
	deleted bool
}

// work is a stream's state inside a transaction; it replaces the stream's after a commit.
type work struct {
	loaded bool
	st     streamState
	b      *bolt.Bucket
	dirty  bool // counters changed: persist them
	added  bool // records stored: wake readers
}

func (t *txn) work(s *Stream) (*work, error) {
	w := &t.ws[s.idx]
	if !w.loaded {
		w.b = t.tx.Bucket(s.bkt)
		if w.b == nil {
			return nil, fmt.Errorf("stream %q has no bucket", s.name)
		}
		// Keys only grow, so pages never take inserts in the middle: fill them up.
		w.b.FillPercent = 1.0
		w.st = s.st
		w.loaded = true
	}
	return w, nil
}

func (t *txn) apply(batch []*op) error {
	for _, op := range batch {
		var err error
		switch op.kind {
		case opAppend:
			err = t.append(op)
		case opAck:
			err = t.ack(op)
		}
		if err != nil {
			return err
		}
	}
	for _, s := range t.o.list {
		st := &s.st
		if w := &t.ws[s.idx]; w.loaded {
			st = &w.st
		}
		if s.expirable(st, t.now) {
			if err := t.expire(s); err != nil {
				return err
			}
		}
		if len(s.parked) > 0 {
			if err := t.unpark(s); err != nil {
				return err
			}
		}
	}
	return t.persist()
}

// persist writes the counters of the streams the transaction changed (errNoWrite when it
// changed nothing).
func (t *txn) persist() error {
	if !t.wrote {
		return errNoWrite
	}
	meta := t.tx.Bucket(metaBucket)
	for i := range t.ws {
		if w := &t.ws[i]; w.dirty {
			if err := meta.Put(t.o.list[i].bkt, w.st.encode()); err != nil {
				return err
			}
		}
	}
	return nil
}

// publish makes a committed transaction's stream states the streams' own, and wakes
// readers of those it added records to.
func (t *txn) publish() {
	for i := range t.ws {
		if w := &t.ws[i]; w.loaded {
			s := t.o.list[i]
			s.st = w.st
			s.publish(w.added)
		}
	}
}

func (t *txn) append(op *op) error {
	s := op.s
	w, err := t.work(s)
	if err != nil {
		return err
	}
	n := int64(len(op.val) - tsLen)
	if t.o.full.Load() {
		// A full disk: refused at once, counted, no commit tried (space.go).
		if op.state.CompareAndSwap(opPending, opTaken) {
			t.taken = append(t.taken, op)
			op.res.err = s.refuseAppend(fmt.Errorf("%w: appends are refused until space returns", ErrNoSpace))
		}
		return nil
	}
	if s.caps.Policy == Block && (len(s.parked) > 0 || !s.fits(&w.st, n)) {
		// Parked appends stay pending, so their callers may still give up.
		s.parked = append(s.parked, op)
		return nil
	}
	if !op.state.CompareAndSwap(opPending, opTaken) {
		return nil // the caller gave up
	}
	t.taken = append(t.taken, op)
	if s.caps.Policy == DropNewest && !s.fits(&w.st, n) {
		w.st.dropped.Newest++
		w.dirty, t.wrote = true, true
		op.res.err = fmt.Errorf("outbox append to %q: %w: it holds %d records, %d bytes (caps %d, %d; policy %s)",
			s.name, ErrFull, w.st.count, w.st.bytes, s.caps.MaxCount, s.caps.MaxBytes, s.caps.Policy)
		return nil
	}
	return t.store(s, w, op)
}

// store puts a taken append into the bucket; drop-oldest then evicts to get under the caps.
func (t *txn) store(s *Stream, w *work, op *op) error {
	seq, err := w.b.NextSequence()
	if err != nil {
		return err
	}
	binary.BigEndian.PutUint64(op.val, uint64(t.now))
	if err := w.b.Put(seqKey(seq), op.val); err != nil {
		return err
	}
	st := &w.st
	st.count++
	st.bytes += int64(len(op.val) - tsLen)
	st.last = seq
	st.appended++
	if st.count == 1 {
		st.first, st.oldest = seq, t.now
	}
	w.dirty, w.added, t.wrote = true, true, true
	op.res.seq = seq
	if s.caps.Policy == DropOldest && s.over(st) {
		// The new record alone is within the caps (Append checked), so it stays.
		return t.dropHead(w, func(uint64, int64) bool { return s.over(st) }, &st.dropped.Oldest)
	}
	return nil
}

func (t *txn) ack(op *op) error {
	if !op.state.CompareAndSwap(opPending, opTaken) {
		return nil
	}
	t.taken = append(t.taken, op)
	w, err := t.work(op.s)
	if err != nil {
		return err
	}
	if w.st.count == 0 || w.st.first > op.through {
		return nil
	}
	return t.dropHead(w, func(seq uint64, _ int64) bool { return seq <= op.through }, &w.st.acked)
}

func (t *txn) expire(s *Stream) error {
	w, err := t.work(s)
	if err != nil {
		return err
	}
	cutoff := t.now - int64(s.caps.MaxAge)
	return t.dropHead(w, func(_ uint64, ts int64) bool { return ts < cutoff }, &w.st.dropped.Age)
}

// unpark stores parked appends of a Block stream, oldest first, while they fit.
func (t *txn) unpark(s *Stream) error {
	w, err := t.work(s)
	if err != nil {
		return err
	}
	i := 0
	defer func() { s.parked = slices.Delete(s.parked, 0, i) }()
	for ; i < len(s.parked); i++ {
		op := s.parked[i]
		if op.state.Load() == opCancelled {
			continue
		}
		if !s.fits(&w.st, int64(len(op.val)-tsLen)) {
			break
		}
		if !op.state.CompareAndSwap(opPending, opTaken) {
			continue
		}
		t.taken = append(t.taken, op)
		if err := t.store(s, w, op); err != nil {
			i++
			return err
		}
	}
	return nil
}

// dropHead deletes the oldest records while drop says so, counting them in *counter.
//
// It finds them first and deletes them after: bbolt leaves emptied nodes in the tree until
// the commit, so a cursor that deleted and went back to First would step over every node
// emptied so far in this transaction, quadratic in a large Ack. Seeking to the known first
// record skips them.
func (t *txn) dropHead(w *work, drop func(seq uint64, ts int64) bool, counter *uint64) error {
	c := w.b.Cursor()
	var k, v []byte
	if w.st.first != 0 {
		k, v = c.Seek(seqKey(w.st.first))
	} else {
		k, v = c.First()
	}
	var dead []uint64
	for ; k != nil; k, v = c.Next() {
		seq, ts := binary.BigEndian.Uint64(k), int64(binary.BigEndian.Uint64(v))
		if !drop(seq, ts) {
			break
		}
		dead = append(dead, seq)
		w.st.count--
		w.st.bytes -= int64(len(v) - tsLen)
		*counter++
	}
	if k != nil {
		w.st.first, w.st.oldest = binary.BigEndian.Uint64(k), int64(binary.BigEndian.Uint64(v))
	} else {
		// Empty: the counters must say so too.
		w.st.first, w.st.oldest, w.st.count, w.st.bytes = 0, 0, 0, 0
	}
	for _, seq := range dead {
		if err := w.b.Delete(seqKey(seq)); err != nil {
			return err
		}
	}
	if len(dead) > 0 {
		w.dirty, t.wrote, t.deleted = true, true, true
	}
	return nil
}

func (s *Stream) fits(st *streamState, n int64) bool {
	return st.count+1 <= s.caps.MaxCount && st.bytes+n <= s.caps.MaxBytes
}

func (s *Stream) over(st *streamState) bool {
	return st.count > s.caps.MaxCount || st.bytes > s.caps.MaxBytes
}

// expirable: the oldest record is older than MaxAge (one comparison, no read).
func (s *Stream) expirable(st *streamState, now int64) bool {
	return s.caps.MaxAge > 0 && st.count > 0 && now-st.oldest > int64(s.caps.MaxAge)
}
