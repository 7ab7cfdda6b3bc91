package link

import (
	"context"
	"log/slog"
	"sync"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// batch is one message ready to publish, or an empty one that only acknowledges records
// that could not be sent (not JSON objects).
type batch struct {
	payload     []byte // nil: nothing to publish
	first, last uint64 // seq of the first and last record in the message
	through     uint64 // every record up to here is covered: Ack(through) when acknowledged
	seqs        []uint64
}

// inflight is a batch handed to paho, awaiting PUBACK.
type inflight struct {
	batch
	tok      mqtt.Token // nil for an empty batch
	done     <-chan struct{}
	deadline time.Time
}

// closed is ready at once, for batches that publish nothing.
func closed() <-chan struct{} {
	c := make(chan struct{})
	close(c)
	return c
}

// send publishes one stream for one connection. Up to InFlight messages are out at once;
// PUBACKs come in order (Mosquitto acknowledges in order), so it waits on the oldest and
// acknowledges the queue through its last record. It returns nil when sctx ends or, once
// stopping is closed, when nothing is in flight any more; an error ends the connection.
// Whatever is in flight when it returns is read from the queue again by the next connection.
func (l *Link) send(sctx context.Context, stopping <-chan struct{}, s *session, st *stream) error {
	l.mu.Lock()
	after := st.ackedThrough
	l.mu.Unlock()
	// The reader prepares the next message while the oldest awaits its PUBACK.
	rctx, rcancel := context.WithCancel(sctx)
	batches := make(chan batch)
	readErr := make(chan error, 1)
	go func() { readErr <- l.read(rctx, st, after, batches) }()

	var window []*inflight
	// pending is the message paho's Publish is taking; its token arrives on pendingTok.
	var pending *inflight
	var pendingTok <-chan mqtt.Token
	// Acknowledging the queue is a disk commit: it runs beside the sender, coalesced, so
	// PUBACKs do not wait for fsyncs one by one.
	ak := startAcker(sctx, st.Queue, l.log.With("stream", st.Name))
	timer := time.NewTimer(time.Hour)
	defer func() {
		timer.Stop()
		rcancel()
		<-readErr
		ak.stop()
		l.settle(sctx, st, window)
	}()
	draining := false
	for {
		if draining && len(window) == 0 && pending == nil {
			return nil
		}
		var in <-chan batch
		if !draining && pending == nil && len(window) < l.cfg.InFlight {
			in = batches
		}
		var head <-chan struct{}
		var expired <-chan time.Time
		if len(window) > 0 {
			head = window[0].done
			if window[0].tok != nil { // an empty batch is done already
				timer.Reset(max(time.Until(window[0].deadline), 0))
				expired = timer.C
			}
		}
		select {
		case <-sctx.Done():
			return nil
		case <-stopping:
			draining, stopping = true, nil
		case err := <-readErr:
			readErr <- err // for the deferred wait
			if sctx.Err() != nil {
				return nil
			}
			return newError("queue", err, "read the %s queue: %v", st.Name, err)
		case b := <-in:
			m := l.publish(st, b)
			if b.payload == nil {
				window = append(window, m)
				continue
			}
			pending = m
			pendingTok = l.call(func() mqtt.Token { return s.client.Publish(st.topic, 1, false, b.payload) })
		case tok := <-pendingTok:
			pending.tok, pending.done = tok, tok.Done()
			pending.deadline = time.Now().Add(l.cfg.AckTimeout)
			window = append(window, pending)
			pending, pendingTok = nil, nil
		case <-head:
			m := window[0]
			if m.tok != nil {
				if err := m.tok.Error(); err != nil {
					return newError("publish", err, "publish %s seq %d..%d: %v", st.Name, m.first, m.last, err)
				}
			}
			ak.ack(m.through)
			l.acked(st, m)
			window = window[1:]
			// AckTimeout measures a lack of progress: the next message's clock starts no
			// earlier than now, whatever it waited behind on a slow uplink.
			if len(window) > 0 {
				if d := time.Now().Add(l.cfg.AckTimeout); d.After(window[0].deadline) {
					window[0].deadline = d
				}
			}
		case <-expired:
			m := window[0]
			return newError("ack-timeout", nil, "no PUBACK for %s seq %d..%d for %v (mqtt.ack_timeout): the connection is broken", st.Name, m.first, m.last, l.cfg.AckTimeout)
		}
	}
}

// publish counts b as sent, and the records in it that were sent before a reconnect as
// resent. A batch without records is done at once: it only acknowledges skipped records.
func (l *Link) publish(st *stream, b batch) *inflight {
	m := &inflight{batch: b, done: closed()}
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, seq := range b.seqs {
		if seq <= st.sentThrough {
			st.resent++
		}
	}
	st.sentThrough = max(st.sentThrough, b.through)
	if b.payload != nil {
		st.inFlight++
	}
	return m
}

// acked counts a message the broker acknowledged and the queue deleted.
func (l *Link) acked(st *stream, m *inflight) {
	l.mu.Lock()
	defer l.mu.Unlock()
	st.ackedThrough = max(st.ackedThrough, m.through)
	if m.tok != nil {
		st.messages++
		st.records += uint64(len(m.seqs))
		st.inFlight--
	}
}

// settle runs when a connection ends: messages at the head of the window whose PUBACK did
// arrive are acknowledged in the queue (a fresh client never completes a token without a
// PUBACK: there is no resume), the rest count as not acknowledged and are read again.
func (l *Link) settle(sctx context.Context, st *stream, window []*inflight) {
	// sctx may be over; the queue is local and quick, so acknowledging is still worth it.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(sctx), time.Second)
	defer cancel()
	for _, m := range window {
		if !isClosed(m.done) || (m.tok != nil && m.tok.Error() != nil) {
			break
		}
		if err := st.Queue.Ack(ctx, m.through); err != nil {
			break
		}
		l.acked(st, m)
	}
	l.mu.Lock()
	st.inFlight = 0
	l.mu.Unlock()
}

// acker acknowledges the queue on its own goroutine, always through the highest seq it was
// given: several PUBACKs that arrive during one commit share the next. A failed
// acknowledgement (a full or failing disk) is retried every ackRetry and never ends the
// connection: the records stay queued, so at worst they are sent again after a reconnect.
type acker struct {
	q       Queue
	log     *slog.Logger
	mu      sync.Mutex
	through uint64 // highest seq to acknowledge; 0 when nothing is pending
	wake    chan struct{}
	quit    chan struct{}
	done    chan struct{}
	failed  uint64    // acknowledgements failed since the last log line
	logged  time.Time // when the last failure was logged
}

const ackRetry = time.Second

func startAcker(ctx context.Context, q Queue, log *slog.Logger) *acker {
	a := &acker{q: q, log: log, wake: make(chan struct{}, 1), quit: make(chan struct{}), done: make(chan struct{})}
	go a.run(context.WithoutCancel(ctx))
	return a
}

func (a *acker) ack(through uint64) {
	a.mu.Lock()
	a.through = max(a.through, through)
	a.mu.Unlock()
	select {
	case a.wake <- struct{}{}:
	default:
	}
}

func (a *acker) run(ctx context.Context) {
	defer close(a.done)
	for {
		select {
		case <-a.wake:
		case <-a.quit:
		}
		a.mu.Lock()
		through := a.through
		a.through = 0
		a.mu.Unlock()
		if through > 0 {
			// The queue is local; a bounded wait keeps a stuck disk from holding up shutdown.
			actx, cancel := context.WithTimeout(ctx, 5*time.Second)
			err := a.q.Ack(actx, through)
			cancel()
			if err != nil {
				if !a.retry(through, err) {
					return
				}
				continue
			}
		}
		select {
		case <-a.quit:
			if len(a.wake) == 0 {
				return
			}
		default:
		}
	}
}

// retry keeps through pending after a failed acknowledgement and waits ackRetry; false when
// the acker is stopping (what is pending stays queued for the next connection).
func (a *acker) retry(through uint64, err error) bool {
	a.mu.Lock()
	a.through = max(a.through, through)
	a.mu.Unlock()
	if a.failed++; time.Since(a.logged) >= 10*time.Second {
		a.log.Warn("mqtt: acknowledging sent records in the outbox failed; retrying every second (they may be sent again after a reconnect)",
			"through", through, "failures", a.failed, "err", err)
		a.failed, a.logged = 0, time.Now()
	}
	t := time.NewTimer(ackRetry)
	defer t.Stop()
	select {
	case <-t.C:
	case <-a.quit:
		return false
	}
	select {
	case a.wake <- struct{}{}:
	default:
	}
	return true
}

// stop acknowledges what is pending and waits for the goroutine.
func (a *acker) stop() {
	close(a.quit)
	<-a.done
}

func isClosed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// read turns queued records into batches for send, starting after seq after, until ctx
// ends. A full batch (BatchMax records or BatchBytes) goes at once; a short one waits up to
// BatchWait for more.
func (l *Link) read(ctx context.Context, st *stream, after uint64, out chan<- batch) error {
	c := l.cfg
	env := newEnvelope(st.Schema, c.Device, st.Name, c.Gzip)
	var pend []record
	pendBytes := 0
	cursor := after
	add := func(seq uint64, data []byte) {
		cursor = seq
		r := record{seq: seq, size: len(data)}
		if d, ok := spliceSeq(seq, st.Epoch, data); ok {
			r.data = d
		}
		pend = append(pend, r)
		pendBytes += r.size
	}
	full := func() bool { return len(pend) >= c.BatchMax || pendBytes >= c.BatchBytes }
	for {
		if len(pend) == 0 {
			if _, err := st.Queue.Read(ctx, cursor, c.BatchMax, c.BatchBytes, add); err != nil {
				return err
			}
		}
		if !full() && c.BatchWait > 0 {
			wctx, cancel := context.WithTimeout(ctx, c.BatchWait)
			for !full() {
				if _, err := st.Queue.Read(wctx, cursor, c.BatchMax-len(pend), max(c.BatchBytes-pendBytes, 1), add); err != nil {
					break
				}
			}
			cancel()
			if err := ctx.Err(); err != nil {
				return err
			}
		}
		// Take up to BatchMax records within BatchBytes (at least one); the rest waits for
		// the next message.
		n, size := 0, 0
		for n < len(pend) && n < c.BatchMax && (n == 0 || size+pend[n].size <= c.BatchBytes) {
			size += pend[n].size
			n++
		}
		b := l.batch(st, env, pend[:n])
		pend = append(pend[:0], pend[n:]...)
		pendBytes -= size
		select {
		case out <- b:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// batch builds the message for recs, leaving out records that are not JSON objects (they
// are counted, logged and acknowledged with the rest).
func (l *Link) batch(st *stream, env *envelope, recs []record) batch {
	b := batch{through: recs[len(recs)-1].seq}
	good := make([]record, 0, len(recs))
	for _, r := range recs {
		if r.data == nil {
			l.malformed(st, r.seq)
			continue
		}
		good = append(good, r)
		b.seqs = append(b.seqs, r.seq)
	}
	if len(good) > 0 {
		b.first, b.last = good[0].seq, good[len(good)-1].seq
		b.payload = env.build(good, l.now())
	}
	return b
}

func (l *Link) malformed(st *stream, seq uint64) {
	l.mu.Lock()
	st.malformed++
	log, repeated := st.malformedLog.allow("malformed", l.now())
	l.mu.Unlock()
	if log {
		l.log.Warn("mqtt: a queued record is not a JSON object; it is skipped and acknowledged", "stream", st.Name, "seq", seq,
			"repeated", repeated)
	}
}
