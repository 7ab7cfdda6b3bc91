// Package link is the agent's MQTT side and the only importer of
// github.com/eclipse/paho.mqtt.golang. It owns:
//
//   - the fleet connection (Link): one persistent MQTT session per device that drains the
//     agent's durable queues (results, events) to <prefix>/<device>/<stream> with QoS 1,
//     acknowledges records in the queue only after the broker acknowledged the message
//     holding them, keeps the retained status <prefix>/<device>/status (with a last will),
//     and publishes metrics with QoS 0;
//   - pushed bundles: chunks arriving on <prefix>/<device>/bundle/chunk go to whoever
//     claimed that bundle (ReceiveChunks), and need requests go out (Need); see chunks.go;
//   - the client the mqtt sensor kind reads an existing sensor bus with (DialSubscriber).
//
// It imports the standard library, paho and hal/sensor only; never another agent stage
// (outbox, pipeline, preprocess, infer, postprocess, drift). The queues it drains are the
// Queue interface declared here, which agent/outbox implements.
//
// Delivery is at least once, with duplicates bounded by Config.InFlight×BatchMax records per
// stream and reconnect; consumers de-duplicate on (device, seq). The link does not use paho's
// automatic reconnect: on reconnect paho re-sends its stored publishes and completes their
// original tokens without error before the broker acknowledged the re-send, so a token could
// report a message the broker never took. Instead every connection attempt builds a fresh
// client with an empty in-memory store; when a connection ends, whatever it had in flight
// counts as not acknowledged and is read from the queue again.
package link

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"
)

// Queue is a durable stream of JSON-object records; agent/outbox implements it.
type Queue interface {
	// Read calls fn in seq order for up to max records with seq > after, within maxBytes
	// (always at least one); it waits until at least one exists or ctx ends (then it
	// returns 0, ctx.Err()). data is valid only during fn.
	Read(ctx context.Context, after uint64, max, maxBytes int, fn func(seq uint64, data []byte)) (int, error)
	// Ack deletes every record with seq <= through.
	Ack(ctx context.Context, through uint64) error
}

// Stream is one queue sent to <prefix>/<device>/<Name>.
type Stream struct {
	Name   string // "results", "events": a topic level and the envelope's array key
	Schema string // envelope schema, e.g. "edge-agent/results/v1"
	Queue  Queue
	// Epoch, when not 0, goes into every record after its seq: the queue's numbering started
	// again with no record of the numbers before, and (device, epoch, seq) is unique.
	Epoch uint64
}

// Options are the link's collaborators.
type Options struct {
	Logger  *slog.Logger
	Streams []Stream
	// Status returns extra top-level fields for the retained online status (a JSON object;
	// may be nil). It is called from the link's goroutines when the status is published.
	Status func() json.RawMessage
	// Commands receives every message on the command topics (the device's, its groups',
	// the broadcast one), including those the broker kept for the persistent session while
	// the device was offline. It runs on paho's goroutine and must not block. A link with
	// Commands also subscribes to the chunks of pushed bundles (ReceiveChunks).
	Commands func(topic string, payload []byte)
	Now      func() time.Time // default time.Now
}

// Link states in Stats.
const (
	StateOfflineMode = "offline-mode" // no broker configured; the queues buffer
	StateConnecting  = "connecting"   // dialling, or checking that the broker takes our writes
	StateOnline      = "online"
	StateBackoff     = "backoff" // waiting before the next attempt
	StateStopped     = "stopped" // Run has returned
)

// Stats is the link's state for the status page, metrics and health.
type Stats struct {
	State           string                 `json:"state"`
	Broker          string                 `json:"broker,omitempty"`
	Session         string                 `json:"session,omitempty"` // nonce of the current connection, as in the status message
	ConnectedSince  time.Time              `json:"connected_since,omitzero"`
	LastError       string                 `json:"last_error,omitempty"`
	LastErrorAt     time.Time              `json:"last_error_at,omitzero"`
	Connects        uint64                 `json:"connects"`         // connections that got online
	ConnectFailures uint64                 `json:"connect_failures"` // attempts that did not
	MetricsSent     uint64                 `json:"metrics_sent"`
	MetricsDropped  uint64                 `json:"metrics_dropped"` // offline, or the broker connection was behind
	Commands        uint64                 `json:"commands"`        // messages received on the command topics
	RepliesSent     uint64                 `json:"replies_sent"`
	RepliesDropped  uint64                 `json:"replies_dropped"` // the reply queue was full
	Push            PushStats              `json:"push"`            // chunks of pushed bundles and need requests
	Streams         map[string]StreamStats `json:"streams"`
}

// StreamStats counts one stream.
type StreamStats struct {
	Messages     uint64 `json:"messages"`      // messages the broker acknowledged
	Records      uint64 `json:"records"`       // records in them, re-sent ones included
	Resent       uint64 `json:"resent"`        // records sent again after a reconnect: an upper bound of duplicates
	Malformed    uint64 `json:"malformed"`     // stored records that were not JSON objects: skipped and acknowledged
	InFlight     int    `json:"in_flight"`     // messages awaiting PUBACK now
	AckedThrough uint64 `json:"acked_through"` // every record up to this seq is acknowledged (this run)
}

// Link is the fleet connection. Build it with New; Run owns the connection.
type Link struct {
	cfg     *resolved
	opt     Options
	log     *slog.Logger
	now     func() time.Time
	streams []*stream
	topics  struct{ status, metrics, reply, chunk, need string }
	running atomic.Bool
	// bg holds paho calls that can block (see call) and connection writers (see
	// queuedConn); Run waits for them before returning.
	bg sync.WaitGroup
	// metrics holds payloads for the connection to send; PublishMetrics drops when full so a
	// stalled connection never holds up the caller.
	metrics chan []byte
	// replies holds command replies for the connection to send (QoS 1); Reply drops and
	// counts when it is full.
	replies chan []byte
	// needs holds need requests of pushed bundles (QoS 1); Need drops and counts when full.
	needs chan []byte
	// statusNow asks the connection to publish the retained status now (RefreshStatus).
	statusNow chan struct{}
	cmdTopics []string

	mu              sync.Mutex // guards the fields below and the counters of every stream
	state           string
	session         string
	connectedSince  time.Time
	lastErr         string
	lastErrAt       time.Time
	connects        uint64
	connectFailures uint64
	metricsSent     uint64
	metricsDropped  uint64
	repliesSent     uint64
	repliesDropped  uint64
	commands        uint64
	push            PushStats
	inboxes         map[string]*ChunkInbox // bundle sha256 → its receiver
	subackWarned    bool
	failStreak      int      // attempts that failed since the link was last online
	connectLog      throttle // connect failures
}

// stream is one Stream and its counters (guarded by Link.mu).
type stream struct {
	Stream
	topic string

	messages, records, resent, malformed uint64
	inFlight                             int
	ackedThrough                         uint64 // the queue is acknowledged through here
	sentThrough                          uint64 // the highest seq ever handed to paho: resending below it counts as Resent
	malformedLog                         throttle
}

// validStreamName: 1-64 of a-z, 0-9, '_', '-', so a name is safe as a topic level and a
// JSON key without escaping.
func validStreamName(s string) bool {
	if len(s) == 0 || len(s) > 64 {
		return false
	}
	for _, r := range s {
		if !('a' <= r && r <= 'z' || '0' <= r && r <= '9' || r == '_' || r == '-') {
			return false
		}
	}
	return true
}

// metricsQueue bounds metrics waiting for the connection.
const metricsQueue = 4

// replyQueue bounds command replies waiting for the connection.
const replyQueue = 256

// New validates cfg and the streams; it does not connect.
func New(cfg Config, opt Options) (*Link, error) {
	r, err := cfg.resolve()
	if err != nil {
		return nil, fmt.Errorf("mqtt config: %w", err)
	}
	l := &Link{cfg: r, opt: opt, log: opt.Logger, now: opt.Now, metrics: make(chan []byte, metricsQueue),
		replies: make(chan []byte, replyQueue), needs: make(chan []byte, needQueue), statusNow: make(chan struct{}, 1),
		inboxes: map[string]*ChunkInbox{}}
	if l.log == nil {
		l.log = slog.New(slog.DiscardHandler)
	}
	if l.now == nil {
		l.now = time.Now
	}
	l.topics.status = l.Topic("status")
	l.topics.metrics = l.Topic("metrics")
	l.topics.reply = l.Topic("cmd/reply")
	l.topics.chunk = l.Topic(ChunkTopic)
	l.topics.need = l.Topic(NeedTopic)
	if opt.Commands != nil {
		l.cmdTopics = append(l.cmdTopics, l.Topic("cmd"), r.Prefix+"/all/cmd")
		for _, g := range r.Groups {
			l.cmdTopics = append(l.cmdTopics, r.Prefix+"/group/"+g+"/cmd")
		}
	}
	seen := map[string]bool{}
	for _, s := range opt.Streams {
		switch {
		case !validStreamName(s.Name):
			return nil, fmt.Errorf("link stream %q: the name must be 1-64 of a-z, 0-9, '_', '-' (it is a topic level and a JSON key)", s.Name)
		case s.Name == "status" || s.Name == "metrics" || s.Name == "cmd" || s.Name == "bundle":
			return nil, fmt.Errorf("link stream %q: the name is a topic the link uses itself", s.Name)
		case seen[s.Name]:
			return nil, fmt.Errorf("link stream %q is declared twice", s.Name)
		case s.Schema == "":
			return nil, fmt.Errorf("link stream %q has no schema", s.Name)
		case s.Queue == nil:
			return nil, fmt.Errorf("link stream %q has no queue", s.Name)
		}
		seen[s.Name] = true
		l.streams = append(l.streams, &stream{Stream: s, topic: l.Topic(s.Name)})
	}
	l.state = StateConnecting
	if r.url == nil {
		l.state = StateOfflineMode
	}
	return l, nil
}

// Topic returns <prefix>/<device>/<suffix>.
func (l *Link) Topic(suffix string) string {
	return l.cfg.Prefix + "/" + l.cfg.Device + "/" + suffix
}

// Run keeps the connection until ctx ends, then publishes the retained offline status,
// disconnects and returns nil. Every goroutine the link starts has ended when it returns.
// Without a broker (offline mode) it only waits for ctx.
func (l *Link) Run(ctx context.Context) error {
	if !l.running.CompareAndSwap(false, true) {
		return errors.New("link: Run is already running; one Run owns the connection")
	}
	defer l.running.Store(false)
	if l.cfg.url == nil {
		l.setState(StateOfflineMode)
		<-ctx.Done()
		return nil
	}
	defer l.setState(StateStopped)
	defer l.bg.Wait()
	n := 0 // attempts since the last connection that lasted
	for {
		l.setState(StateConnecting)
		online, err := l.connect(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if err == nil { // not expected: only a stop ends a connection without an error
			err = errors.New("connection ended")
		}
		if online > time.Minute {
			n = 0
		}
		wait := l.backoff(n)
		n++
		l.failed(err, online, wait)
		l.setState(StateBackoff)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
}

// backoff is the delay before attempt n+1: full jitter over min(max, min·2ⁿ), never below
// BackoffMin/2 so a broker that refuses at once is not hammered.
func (l *Link) backoff(n int) time.Duration {
	ceil := l.cfg.BackoffMax
	if n < 40 {
		ceil = min(ceil, l.cfg.BackoffMin<<n)
	}
	if ceil <= 0 { // overflow
		ceil = l.cfg.BackoffMax
	}
	return max(rand.N(ceil+1), l.cfg.BackoffMin/2)
}

// failed records why a connection attempt or a connection ended and logs it; identical
// connect failures are logged once a minute with a count, so an outage does not flood the
// journal.
func (l *Link) failed(err error, online time.Duration, wait time.Duration) {
	now := l.now()
	msg := err.Error()
	l.mu.Lock()
	l.lastErr, l.lastErrAt = msg, now
	var log bool
	var repeated int
	if online == 0 {
		l.connectFailures++
		l.failStreak++
		log, repeated = l.connectLog.allow(kindOf(err), now)
	}
	l.mu.Unlock()
	switch {
	case online > 0:
		l.log.Warn("mqtt connection lost; reconnecting", "broker", l.cfg.url.String(), "online_for", online.Round(time.Millisecond),
			"err", msg, "retry_in", wait.Round(time.Millisecond))
	case log:
		attrs := []any{"broker", l.cfg.url.String(), "err", msg, "retry_in", wait.Round(time.Millisecond)}
		if repeated > 0 {
			attrs = append(attrs, "repeated", repeated, "repeated_over", logEvery)
		}
		l.log.Warn("mqtt connect failed", attrs...)
	}
}

// logEvery is how often one kind of repeated failure is logged.
const logEvery = time.Minute

// throttle holds back repeats of one kind of log line for logEvery.
type throttle struct {
	kind       string
	at         time.Time
	suppressed int
}

// allow reports whether a line of this kind may be logged now and, if so, how many lines of
// the same kind were held back since the last one.
func (t *throttle) allow(kind string, now time.Time) (bool, int) {
	if kind == t.kind && !t.at.IsZero() && now.Sub(t.at) < logEvery {
		t.suppressed++
		return false, 0
	}
	n := 0
	if kind == t.kind {
		n = t.suppressed
	}
	*t = throttle{kind: kind, at: now}
	return true, n
}

func (l *Link) setState(s string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.state = s
	if s != StateOnline {
		l.connectedSince = time.Time{}
		l.session = ""
	}
}

// PublishMetrics hands payload to the connection for <prefix>/<device>/metrics (QoS 0, not
// retained). It returns false, and counts a drop, when the link is not online or the
// connection has not taken the previous payloads yet; it never waits for the network.
func (l *Link) PublishMetrics(payload []byte) bool {
	l.mu.Lock()
	online := l.state == StateOnline
	l.mu.Unlock()
	if online {
		select {
		case l.metrics <- append([]byte(nil), payload...):
			return true
		default:
		}
	}
	l.mu.Lock()
	l.metricsDropped++
	l.mu.Unlock()
	return false
}

// RefreshStatus publishes the retained status soon (after a model version changed, say),
// instead of at the next StatusEvery. It never blocks.
func (l *Link) RefreshStatus() {
	select {
	case l.statusNow <- struct{}{}:
	default:
	}
}

// Reply queues a command reply for <prefix>/<device>/cmd/reply (QoS 1). Replies wait, in a
// bounded queue, for a connection; false (counted) when the queue is full.
func (l *Link) Reply(payload []byte) bool {
	select {
	case l.replies <- append([]byte(nil), payload...):
		return true
	default:
		l.mu.Lock()
		l.repliesDropped++
		l.mu.Unlock()
		return false
	}
}

// Stats returns a snapshot.
func (l *Link) Stats() Stats {
	l.mu.Lock()
	defer l.mu.Unlock()
	st := Stats{
		State: l.state, Session: l.session, ConnectedSince: l.connectedSince,
		LastError: l.lastErr, LastErrorAt: l.lastErrAt,
		Connects: l.connects, ConnectFailures: l.connectFailures,
		MetricsSent: l.metricsSent, MetricsDropped: l.metricsDropped,
		Commands: l.commands, RepliesSent: l.repliesSent, RepliesDropped: l.repliesDropped, Push: l.push,
		Streams: make(map[string]StreamStats, len(l.streams)),
	}
	if l.cfg.url != nil {
		st.Broker = l.cfg.url.String()
	}
	for _, s := range l.streams {
		st.Streams[s.Name] = StreamStats{Messages: s.messages, Records: s.records, Resent: s.resent,
			Malformed: s.malformed, InFlight: s.inFlight, AckedThrough: s.ackedThrough}
	}
	return st
}
