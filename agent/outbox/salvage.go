package outbox

// Salvage: when an outbox file is damaged the agent moves it aside and opens a new one with
// Options.SalvageFrom naming the old file. Open then reads it with boltcheck.Read (no bbolt,
// no mapping: damage means fewer records, never a fault) and stores every record it can read
// in the new file under its own sequence number and append time, so it is sent as if nothing
// had happened, and consumers that de-duplicate on (device, epoch, seq) drop any that were
// delivered before. Records of leaf pages the tree no longer reaches are taken too when
// Options.Recognise says which stream they belong to, except those at or below the
// acknowledged mark of the sequence lease (seqlease.go): those were delivered.

import (
	"bytes"
	"encoding/binary"
	"errors"

	bolt "go.etcd.io/bbolt"

	"github.com/edge-agent/edge-agent/internal/boltcheck"
)

// salvageBatch bounds the record bytes held in memory and written in one transaction.
const salvageBatch = 4 << 20

// Salvage says what Open recovered from Options.SalvageFrom.
type Salvage struct {
	From string `json:"from"`
	// Restored counts, per stream, the records stored in the new file.
	Restored map[string]int `json:"restored"`
	// Held is, per stream, what the damaged file's counters say it held; absent when they
	// could not be read.
	Held map[string]int `json:"held,omitempty"`
	// Skipped counts records read but not restored: not recognised (damaged), of a stream
	// not declared, larger than MaxRecord, or already acknowledged.
	Skipped int `json:"skipped"`
	// BadPages counts pages the file's tree names that could not be read.
	BadPages int `json:"bad_pages"`
	// Whole: everything the file's tree names was read.
	Whole bool `json:"whole"`
	// Err says why the salvage stopped early (the records restored until then stay).
	Err string `json:"error,omitempty"`
}

// Lost is what the damaged file held of stream and was not restored, when its counters
// could be read (known false otherwise).
func (s Salvage) Lost(stream string) (n int, known bool) {
	held, ok := s.Held[stream]
	if !ok {
		return 0, false
	}
	return max(0, held-s.Restored[stream]), true
}

type salvaged struct {
	s   *Stream
	seq uint64
	val []byte // timestamp + data, as stored
}

// salvage restores what path holds into o; it runs in Open, before the committer starts.
func (o *Outbox) salvage(path string) Salvage {
	rep := Salvage{From: path, Restored: map[string]int{}}
	// Delivered records (at or below the lease's acknowledged mark, as Open read the lease)
	// are not sent again when found outside the tree, where an acknowledgement cannot have
	// deleted them.
	gone := o.lease.Acked
	last := map[*Stream]uint64{} // the highest key restored per stream
	var (
		batch []salvaged
		size  int
		high  = map[*Stream]uint64{} // the highest sequence the damaged file names, per stream
		// The damaged file's epoch, when its meta bucket could be read.
		oldEpoch uint64
		metaRead bool
	)
	flush := func() error {
		err := o.restore(batch, last, &rep)
		batch, size = batch[:0], 0
		return err
	}
	take := func(s *Stream, k, v []byte, orphan bool) error {
		if s == nil || len(k) != 8 || len(v) < tsLen || len(v)-tsLen > o.opt.MaxRecord {
			rep.Skipped++
			return nil
		}
		data := v[tsLen:]
		seq := binary.BigEndian.Uint64(k)
		if o.opt.Recognise != nil && o.opt.Recognise(data) != s.name || orphan && seq <= gone[s.name] {
			rep.Skipped++
			return nil
		}
		high[s] = max(high[s], seq)
		batch = append(batch, salvaged{s: s, seq: seq, val: bytes.Clone(v)})
		if size += len(v); size >= salvageBatch {
			return flush()
		}
		return nil
	}
	stream := func(bkt []byte) *Stream {
		name, ok := bytes.CutPrefix(bkt, []byte(streamPrefix))
		if !ok {
			return nil
		}
		return o.streams[string(name)]
	}
	v := boltcheck.Visitor{
		Bucket: func(p [][]byte, seq uint64) error {
			if s := stream(p[0]); len(p) == 1 && s != nil {
				high[s] = max(high[s], seq)
			}
			return nil
		},
		Pair: func(p [][]byte, k, v []byte) error {
			if len(p) == 1 && bytes.Equal(p[0], metaBucket) {
				switch {
				case bytes.Equal(k, formatKey):
					metaRead = true
				case bytes.Equal(k, epochKey) && len(v) == 8:
					oldEpoch = binary.BigEndian.Uint64(v)
				}
				var st streamState
				if s := stream(k); s != nil && st.decode(v) == nil {
					if rep.Held == nil {
						rep.Held = map[string]int{}
					}
					rep.Held[s.name] = st.count
				}
				return nil
			}
			if len(p) != 1 {
				rep.Skipped++
				return nil
			}
			return take(stream(p[0]), k, v, false)
		},
	}
	if o.opt.Recognise != nil {
		v.Orphan = func(k, v []byte) error {
			if len(v) < tsLen {
				rep.Skipped++
				return nil
			}
			return take(o.streams[o.opt.Recognise(v[tsLen:])], k, v, true)
		}
	}
	r, err := boltcheck.Read(path, v)
	if err == nil {
		err = flush()
	}
	if err == nil && o.epochNew && metaRead && oldEpoch != o.epoch {
		// No lease said which epoch the damaged file numbered in, but its meta bucket does:
		// keep numbering in it (above its numbers), so the salvaged records keep their keys.
		err = o.setEpoch(oldEpoch)
	}
	if err == nil {
		err = o.raiseSequences(high)
	}
	rep.BadPages, rep.Whole = r.BadPages, r.Whole()
	if err != nil {
		rep.Err = err.Error()
		o.log.Error("outbox: salvage stopped early; the records restored so far are kept", "from", path, "err", err)
	}
	return rep
}

// restore stores a batch of salvaged records with their own keys in one transaction, then
// enforces the caps as an append would (drop-oldest evicts, counted). last is the highest key
// restored so far per stream: keys above it come in order and fill their pages.
func (o *Outbox) restore(batch []salvaged, last map[*Stream]uint64, rep *Salvage) error {
	if len(batch) == 0 {
		return nil
	}
	t := txn{o: o, now: o.opt.Now().UnixNano(), ws: make([]work, len(o.list))}
	restored := map[string]int{}
	err := guard(func() error {
		return o.db.Update(func(tx *bolt.Tx) error {
			t.tx = tx
			clear(restored)
			for _, r := range batch {
				w, err := t.work(r.s)
				if err != nil {
					return err
				}
				key := seqKey(r.seq)
				if w.b.Get(key) != nil {
					continue // found twice (in the tree and on an older page)
				}
				// The tree's records come in key order (pages filled, as appends fill them);
				// records found outside it may go anywhere (pages left half empty).
				w.b.FillPercent = 1.0
				if r.seq <= last[r.s] {
					w.b.FillPercent = 0.5
				}
				last[r.s] = max(last[r.s], r.seq)
				if err := w.b.Put(key, r.val); err != nil {
					return err
				}
				st, ts := &w.st, int64(binary.BigEndian.Uint64(r.val))
				st.count++
				st.bytes += int64(len(r.val) - tsLen)
				st.appended++
				if st.first == 0 || r.seq < st.first {
					st.first, st.oldest = r.seq, ts
				}
				w.dirty, w.added, t.wrote = true, true, true
				restored[r.s.name]++
			}
			for i, s := range o.list {
				if w := &t.ws[i]; w.loaded && s.over(&w.st) {
					if err := t.dropHead(w, func(uint64, int64) bool { return s.over(&w.st) }, &w.st.dropped.Oldest); err != nil {
						return err
					}
				}
			}
			return t.persist()
		})
	})
	if errors.Is(err, errNoWrite) {
		return nil // every record of the batch was restored already
	}
	if err != nil {
		return err
	}
	for name, n := range restored {
		rep.Restored[name] += n
	}
	t.publish()
	return nil
}

// raiseSequences starts each stream above the highest sequence the damaged file names: a
// meta page older than the file's last transaction can name less than was given out, so
// the lease's margin goes on top.
func (o *Outbox) raiseSequences(high map[*Stream]uint64) error {
	var raise []*Stream
	for s, seq := range high {
		if seq >= s.st.last {
			raise = append(raise, s)
		}
	}
	if len(raise) == 0 {
		return nil
	}
	return guard(func() error {
		return o.db.Update(func(tx *bolt.Tx) error {
			for _, s := range raise {
				next := high[s] + o.opt.lease
				if err := tx.Bucket(s.bkt).SetSequence(next); err != nil {
					return err
				}
				s.st.last, s.pub.last = next, next
			}
			return nil
		})
	})
}

func (o *Outbox) setEpoch(epoch uint64) error {
	prev := o.epoch
	o.epoch = epoch
	err := guard(func() error {
		return o.db.Update(func(tx *bolt.Tx) error { return o.putEpoch(tx.Bucket(metaBucket)) })
	})
	if err != nil {
		o.epoch = prev
		return err
	}
	o.log.Info("outbox: numbering continues in the damaged file's epoch", "file", o.path, "epoch", epoch)
	return nil
}

// SalvageReport returns what Open salvaged from Options.SalvageFrom (nil without one).
func (o *Outbox) SalvageReport() *Salvage { return o.salvaged }
