package sensor

import (
	"context"
	"sync"
)

// DefaultQueue is the queue bound used when Spec.Queue is 0.
const DefaultQueue = 8

// QueueStats is a snapshot of a Queue. Pushed = popped + Dropped + Depth.
type QueueStats struct {
	Depth    int    // frames waiting now
	Capacity int    // bound
	Pushed   uint64 // frames offered
	Dropped  uint64 // frames lost: oldest dropped by a full queue, or pushed after Close
}

// Queue is a bounded FIFO of frames between one source and the pipeline. Push never blocks:
// a full queue drops its oldest frame, because for live sensors the newest reading is the
// useful one. Safe for concurrent use; it starts no goroutines.
type Queue struct {
	// ready holds at most one token meaning "a frame may be waiting"; Push sends without
	// blocking and Pop re-arms it when frames remain, so a waiter is never stranded.
	ready chan struct{}
	done  chan struct{} // closed by Close

	mu              sync.Mutex
	buf             []Frame // ring
	head, n         int
	closed          bool
	pushed, dropped uint64
}

// NewQueue returns an empty queue holding at most capacity frames (at least 1).
func NewQueue(capacity int) *Queue {
	if capacity < 1 {
		capacity = 1
	}
	return &Queue{
		ready: make(chan struct{}, 1),
		done:  make(chan struct{}),
		buf:   make([]Frame, capacity),
	}
}

// Push adds f, dropping the oldest frame if the queue is full. After Close it drops f.
func (q *Queue) Push(f Frame) {
	q.mu.Lock()
	q.pushed++
	if q.closed {
		q.dropped++
		q.mu.Unlock()
		return
	}
	if q.n == len(q.buf) {
		q.buf[q.head] = Frame{} // release the image/tensor memory now
		q.head = (q.head + 1) % len(q.buf)
		q.n--
		q.dropped++
	}
	q.buf[(q.head+q.n)%len(q.buf)] = f
	q.n++
	q.mu.Unlock()
	q.signal()
}

func (q *Queue) signal() {
	select {
	case q.ready <- struct{}{}:
	default:
	}
}

// TryPop returns the oldest frame without waiting; false if the queue is empty.
func (q *Queue) TryPop() (Frame, bool) {
	q.mu.Lock()
	if q.n == 0 {
		q.mu.Unlock()
		return Frame{}, false
	}
	f := q.buf[q.head]
	q.buf[q.head] = Frame{}
	q.head = (q.head + 1) % len(q.buf)
	q.n--
	more := q.n > 0
	q.mu.Unlock()
	if more {
		q.signal()
	}
	return f, true
}

// Pop returns the oldest frame, waiting for one. It returns false when ctx is done, or when
// the queue is closed and empty. A frame already waiting is returned even if ctx is done.
func (q *Queue) Pop(ctx context.Context) (Frame, bool) {
	for {
		if f, ok := q.TryPop(); ok {
			return f, true
		}
		select {
		case <-q.ready:
		case <-q.done:
			return q.TryPop() // drain what is left, then report the end
		case <-ctx.Done():
			return Frame{}, false
		}
	}
}

// Close marks the end of the stream: frames already queued can still be popped, then Pop
// returns false. Closing twice is harmless.
func (q *Queue) Close() {
	q.mu.Lock()
	defer q.mu.Unlock()
	if !q.closed {
		q.closed = true
		close(q.done)
	}
}

// Done is closed when the queue is closed.
func (q *Queue) Done() <-chan struct{} { return q.done }

// Stats returns a snapshot of the counters.
func (q *Queue) Stats() QueueStats {
	q.mu.Lock()
	defer q.mu.Unlock()
	return QueueStats{Depth: q.n, Capacity: len(q.buf), Pushed: q.pushed, Dropped: q.dropped}
}
