package outbox

// Sequence leases: the last sequence number of each stream lives in the outbox file, and also
// in a small file beside it, PATH.seq.json, which holds each stream's last sequence when it
// was written; the stream may give out seqLease more before it is written again (renewed
// when half of that is used, so a crash cannot outrun it). An outbox that is new, or older
// than the lease file (the old one damaged, moved aside or deleted), starts its streams
// above the lease, so a sequence number is never given out twice: consumers that
// de-duplicate on (device, seq) would drop the new records as repeats. They see a gap
// instead, which says what it is. One small fsync'd write per seqLease/2 records.

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"

	bolt "go.etcd.io/bbolt"

	"github.com/edge-agent/edge-agent/internal/durable"
)

// Epochs: when an outbox is new and there is no lease file either (the whole state folder
// was lost, or this is the device's first start), nothing says which numbers were given out
// before, so the outbox starts a new epoch: a random number the link puts into every record
// beside its seq, so that (device, epoch, seq) stays unique. It is kept in the outbox file
// and in the lease file, and a replacement outbox takes it from the lease (or, salvaging, from
// the damaged file).

// seqLease is how many sequence numbers a lease reserves ahead.
const seqLease = 1 << 16

const seqLeaseSchema = "edge-agent/outbox-seq/v1"

type leaseFile struct {
	Schema  string            `json:"schema"`
	Streams map[string]uint64 `json:"streams"` // the last sequence given out when written
	// Epoch is the outbox's numbering epoch (0: the first, written as absent).
	Epoch uint64 `json:"epoch,omitempty"`
	// Acked is, per stream, a sequence at or below which every record had been acknowledged
	// or dropped when the file was written: a salvage does not send those again.
	Acked map[string]uint64 `json:"acked,omitempty"`
}

func leasePath(path string) string { return path + ".seq.json" }

func readLeaseFile(path string) (leaseFile, error) {
	f := leaseFile{Streams: map[string]uint64{}}
	b, err := os.ReadFile(leasePath(path))
	if errors.Is(err, os.ErrNotExist) {
		return f, nil
	}
	if err != nil {
		return f, err
	}
	if err := json.Unmarshal(b, &f); err != nil || f.Schema != seqLeaseSchema {
		return leaseFile{}, fmt.Errorf("%s is not a sequence lease file (%v)", leasePath(path), err)
	}
	return f, nil
}

// renewLeases records every stream's last sequence (a stream not declared now keeps its
// entry), and remembers them in o.leased.
func (o *Outbox) renewLeases() error {
	f := leaseFile{Schema: seqLeaseSchema, Epoch: o.epoch, Streams: make(map[string]uint64, len(o.leased)+len(o.list)), Acked: map[string]uint64{}}
	for name, v := range o.leased {
		f.Streams[name] = v
	}
	for _, s := range o.list {
		f.Streams[s.name] = max(s.st.last, o.leased[s.name])
		f.Acked[s.name] = s.st.last
		if s.st.count > 0 {
			f.Acked[s.name] = s.st.first - 1
		}
	}
	b, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return err
	}
	if err := durable.WriteFile(leasePath(o.path), b, 0o600); err != nil {
		return fmt.Errorf("outbox %s: write the sequence lease: %w", o.path, err)
	}
	o.leased = f.Streams
	return nil
}

// leaseDue reports whether a stream has used half of its lease (a commit gives out at most
// MaxBatch < seqLease/2 sequences, so renewing then keeps every stream inside its lease).
func (o *Outbox) leaseDue() bool {
	for _, s := range o.list {
		if s.st.last >= o.leased[s.name]+o.opt.lease/2 {
			return true
		}
	}
	return false
}

func emptyFile(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Size() == 0
}

// maxEpoch keeps epochs exact as JSON numbers in every consumer (JavaScript's 2^53).
const maxEpoch = 1<<53 - 1

// loadEpoch decides the epoch at Open (in load's transaction): the lease's, else the file's,
// else, for a new file without a lease, a new one.
func (o *Outbox) loadEpoch(meta *bolt.Bucket) error {
	var inFile uint64
	if v := meta.Get(epochKey); len(v) == 8 {
		inFile = binary.BigEndian.Uint64(v)
	} else if v != nil {
		return &notOutboxError{o.path, fmt.Sprintf("epoch is %d bytes, want 8", len(v))}
	}
	switch {
	case o.leaseKnown && o.lease.Epoch != 0:
		o.epoch = o.lease.Epoch
	case o.leaseKnown || !o.fresh:
		o.epoch = inFile
	default:
		var b [8]byte
		if _, err := rand.Read(b[:]); err != nil {
			return fmt.Errorf("a new numbering epoch: %w", err)
		}
		o.epoch = binary.BigEndian.Uint64(b[:])%maxEpoch + 1
		o.epochNew = true
		o.log.Warn("outbox: no record of the sequence numbers given out before (a new device, or its state folder was lost): a new epoch starts, sent in every record beside seq",
			"file", o.path, "epoch", o.epoch)
	}
	if o.epoch != inFile {
		o.epochChanged = true
		return o.putEpoch(meta)
	}
	return nil
}

func (o *Outbox) putEpoch(meta *bolt.Bucket) error {
	if o.epoch == 0 {
		return meta.Delete(epochKey)
	}
	return meta.Put(epochKey, binary.BigEndian.AppendUint64(nil, o.epoch))
}

// Epoch is the outbox's numbering epoch: (epoch, seq) is unique per device; 0 is the first.
func (o *Outbox) Epoch() uint64 { return o.epoch }
