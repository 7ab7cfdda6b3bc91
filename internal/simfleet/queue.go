package simfleet

import (
	"context"
	"sync"
)

// Queue is a bounded in-memory link.Queue: a simulated device's stand-in for the outbox. It
// keeps at most its cap of records; appending to a full queue drops the oldest record and
// counts it, as the outbox's drop-oldest policy does. Nothing survives the process, which is
// the point of a simulation: the link, not the disk, is what is measured.
type Queue struct {
	mu       sync.Mutex
	recs     []queued // in seq order, consecutive: recs[i].seq == recs[0].seq+i
	next     uint64   // seq of the next Append
	max      int
	bytes    int
	appended uint64
	dropped  uint64
	acked    uint64        // every seq up to here was acknowledged
	wake     chan struct{} // closed and replaced by every Append, to wake a waiting Read
}

type queued struct {
	seq  uint64
	data []byte
}

// QueueStats are a queue's counters.
type QueueStats struct {
	Count        int    `json:"count"`
	Bytes        int    `json:"bytes"`
	Appended     uint64 `json:"appended"`
	Dropped      uint64 `json:"dropped"` // the oldest records dropped at the cap
	AckedThrough uint64 `json:"acked_through"`
}

// NewQueue returns an empty queue that keeps at most limit records (at least 1).
func NewQueue(limit int) *Queue {
	return &Queue{next: 1, max: max(limit, 1), wake: make(chan struct{})}
}

// Append stores data (a JSON object, kept as given: do not change it afterwards) and returns
// its seq.
func (q *Queue) Append(data []byte) uint64 {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.recs) == q.max {
		q.bytes -= len(q.recs[0].data)
		q.recs[0] = queued{} // let the record be collected
		q.recs = q.recs[1:]
		q.dropped++
	}
	seq := q.next
	q.next++
	q.recs = append(q.recs, queued{seq: seq, data: data})
	q.bytes += len(data)
	q.appended++
	close(q.wake)
	q.wake = make(chan struct{})
	return seq
}

// Read implements link.Queue: up to max records with seq > after within maxBytes (always at
// least one), waiting until one exists or ctx ends.
func (q *Queue) Read(ctx context.Context, after uint64, max, maxBytes int, fn func(seq uint64, data []byte)) (int, error) {
	for {
		q.mu.Lock()
		i := 0
		if len(q.recs) > 0 && after >= q.recs[0].seq {
			i = int(after - q.recs[0].seq + 1)
		}
		if i < len(q.recs) {
			n, size := 0, 0
			for ; i < len(q.recs) && n < max && (n == 0 || size+len(q.recs[i].data) <= maxBytes); i++ {
				fn(q.recs[i].seq, q.recs[i].data)
				size += len(q.recs[i].data)
				n++
			}
			q.mu.Unlock()
			return n, nil
		}
		wake := q.wake
		q.mu.Unlock()
		select {
		case <-wake:
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
}

// Ack implements link.Queue: it deletes every record with seq <= through.
func (q *Queue) Ack(_ context.Context, through uint64) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	n := 0
	for n < len(q.recs) && q.recs[n].seq <= through {
		q.bytes -= len(q.recs[n].data)
		q.recs[n] = queued{}
		n++
	}
	q.recs = q.recs[n:]
	q.acked = max(q.acked, through)
	return nil
}

// Stats returns the counters.
func (q *Queue) Stats() QueueStats {
	q.mu.Lock()
	defer q.mu.Unlock()
	return QueueStats{Count: len(q.recs), Bytes: q.bytes, Appended: q.appended, Dropped: q.dropped, AckedThrough: q.acked}
}
