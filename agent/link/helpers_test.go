package link_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/edge-agent/edge-agent/agent/link"
	"github.com/edge-agent/edge-agent/internal/testenv"
)

// memQueue is an in-memory link.Queue. It stands in for agent/outbox, which has its own
// tests; the agent-level tests run the link over the real one.
type memQueue struct {
	mu    sync.Mutex
	base  uint64 // seq of recs[0]
	recs  [][]byte
	last  uint64
	wake  chan struct{} // closed and replaced by every Append
	reads int
}

func newMemQueue() *memQueue { return &memQueue{base: 1, wake: make(chan struct{})} }

func (q *memQueue) Append(data string) uint64 {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.recs = append(q.recs, []byte(data))
	q.last++
	close(q.wake)
	q.wake = make(chan struct{})
	return q.last
}

func (q *memQueue) Read(ctx context.Context, after uint64, maxN, maxBytes int, fn func(uint64, []byte)) (int, error) {
	for {
		q.mu.Lock()
		q.reads++
		start := max(after+1, q.base)
		if start <= q.last {
			var out [][]byte
			size := 0
			for seq := start; seq <= q.last && len(out) < maxN; seq++ {
				d := q.recs[seq-q.base]
				if len(out) > 0 && size+len(d) > maxBytes {
					break
				}
				out = append(out, d)
				size += len(d)
			}
			q.mu.Unlock()
			for i, d := range out { // records are never changed once appended
				fn(start+uint64(i), d)
			}
			return len(out), nil
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

func (q *memQueue) Ack(_ context.Context, through uint64) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if through < q.base {
		return nil
	}
	n := min(through-q.base+1, uint64(len(q.recs)))
	q.recs = append([][]byte(nil), q.recs[n:]...)
	q.base += n
	return nil
}

func (q *memQueue) Len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.recs)
}

func (q *memQueue) Reads() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.reads
}

// logBuffer collects the link's log for assertions and failure messages.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

const resultsSchema = "edge-agent/results/v1"

// newLink builds a link with one "results" stream over q, logging into the returned buffer.
func newLink(t *testing.T, cfg link.Config, q link.Queue, opt ...func(*link.Options)) (*link.Link, *logBuffer) {
	t.Helper()
	logs := &logBuffer{}
	o := link.Options{
		Logger:  slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Streams: []link.Stream{{Name: "results", Schema: resultsSchema, Queue: q}},
	}
	for _, f := range opt {
		f(&o)
	}
	l, err := link.New(cfg, o)
	if err != nil {
		t.Fatalf("link.New: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("link log:\n%s", logs)
		}
	})
	return l, logs
}

// start runs l and returns stop, which cancels Run, requires it to return nil and checks
// that every goroutine it started has ended (the count is back to what it was before Run).
func start(t *testing.T, l *link.Link) (stop func()) {
	t.Helper()
	baseline := runtime.NumGoroutine()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- l.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			t.Helper()
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Run returned %v; want nil after cancel", err)
				}
			case <-time.After(20 * time.Second):
				buf := make([]byte, 1<<20)
				buf = buf[:runtime.Stack(buf, true)]
				t.Fatalf("Run did not return within 20s of cancel:\n%s", buf)
			}
			testenv.WaitGoroutines(t, baseline, 2*time.Second)
		})
	}
	t.Cleanup(stop)
	return stop
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t *testing.T, within time.Duration, cond func() bool, what func() string) {
	t.Helper()
	testenv.Eventually(t, within, 5*time.Millisecond, what, cond)
}

func waitOnline(t *testing.T, l *link.Link) {
	t.Helper()
	eventually(t, 15*time.Second, func() bool { return l.Stats().State == link.StateOnline },
		func() string { return fmt.Sprintf("link not online: %+v", l.Stats()) })
}

// envelope is a stream message as consumers see it.
type envelope struct {
	Schema   string            `json:"schema"`
	Device   string            `json:"device"`
	FirstSeq uint64            `json:"first_seq"`
	LastSeq  uint64            `json:"last_seq"`
	Count    int               `json:"count"`
	SentAt   time.Time         `json:"sent_at"`
	Results  []json.RawMessage `json:"results"`
}

type statusMsg struct {
	Schema  string    `json:"schema"`
	Device  string    `json:"device"`
	State   string    `json:"state"`
	Session string    `json:"session"`
	TS      time.Time `json:"ts"`
	Version string    `json:"agent_version"`
	raw     string
}

// observer is the fleet side in tests: a paho client with a persistent session (fixed
// client id, CleanSession false) subscribed with QoS 1, which records every (device, seq) it
// receives and counts duplicates. Duplicates in messages the broker marked DUP are the
// broker's own re-deliveries to us; the others are records the link sent again.
type observer struct {
	t      *testing.T
	client mqtt.Client

	mu         sync.Mutex
	seen       map[string]map[uint64]int
	order      map[string][]uint64
	msgs       []envelope
	raw        [][]byte
	linkDups   int
	brokerDups int
	status     []statusMsg
	metrics    [][]byte
	errs       []string
}

type observerOpts struct {
	url      string
	id       string
	tls      *tls.Config
	user     string
	password string
	topics   []string // default edge/+/results
}

func watch(t *testing.T, o observerOpts) *observer {
	t.Helper()
	ob := &observer{t: t, seen: map[string]map[uint64]int{}, order: map[string][]uint64{}}
	if len(o.topics) == 0 {
		o.topics = []string{"edge/+/results"}
	}
	filters := map[string]byte{}
	for _, tp := range o.topics {
		filters[tp] = 1
	}
	opts := mqtt.NewClientOptions().AddBroker(o.url).SetClientID(o.id).
		SetUsername(o.user).SetPassword(o.password).SetTLSConfig(o.tls).
		SetCleanSession(false).SetAutoReconnect(true).SetConnectRetry(true).
		SetConnectRetryInterval(50 * time.Millisecond).SetMaxReconnectInterval(100 * time.Millisecond).
		SetProtocolVersion(4).
		SetDefaultPublishHandler(ob.handle).
		SetOnConnectHandler(func(c mqtt.Client) {
			// Subscribing again on every connect is harmless with a persistent session and
			// covers a broker that lost it.
			c.SubscribeMultiple(filters, nil)
		})
	ob.client = mqtt.NewClient(opts)
	if tok := ob.client.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("observer connect to %s: %v", o.url, tok.Error())
	}
	// Wait for the first SUBACK so nothing published next is missed.
	sub := ob.client.SubscribeMultiple(filters, nil)
	if !sub.WaitTimeout(10*time.Second) || sub.Error() != nil {
		t.Fatalf("observer subscribe: %v", sub.Error())
	}
	t.Cleanup(func() { ob.client.Disconnect(100) })
	return ob
}

func (o *observer) handle(_ mqtt.Client, m mqtt.Message) {
	o.mu.Lock()
	defer o.mu.Unlock()
	switch {
	case strings.HasSuffix(m.Topic(), "/status"):
		var s statusMsg
		if err := json.Unmarshal(m.Payload(), &s); err != nil {
			o.errs = append(o.errs, fmt.Sprintf("status %q: %v", m.Payload(), err))
			return
		}
		s.raw = string(m.Payload())
		o.status = append(o.status, s)
		return
	case strings.HasSuffix(m.Topic(), "/metrics"):
		o.metrics = append(o.metrics, append([]byte(nil), m.Payload()...))
		return
	}
	raw := append([]byte(nil), m.Payload()...)
	data := raw
	if bytes.HasPrefix(data, []byte{0x1f, 0x8b}) {
		zr, err := gzip.NewReader(bytes.NewReader(data))
		if err == nil {
			data, err = io.ReadAll(zr)
		}
		if err != nil {
			o.errs = append(o.errs, fmt.Sprintf("gunzip: %v", err))
			return
		}
	}
	var e envelope
	if err := json.Unmarshal(data, &e); err != nil {
		o.errs = append(o.errs, fmt.Sprintf("envelope %q: %v", data, err))
		return
	}
	o.msgs = append(o.msgs, e)
	o.raw = append(o.raw, raw)
	if o.seen[e.Device] == nil {
		o.seen[e.Device] = map[uint64]int{}
	}
	for _, r := range e.Results {
		if !bytes.HasPrefix(r, []byte(`{"seq":`)) {
			o.errs = append(o.errs, fmt.Sprintf("record without seq first: %s", r))
			continue
		}
		var rec struct{ Seq uint64 }
		if err := json.Unmarshal(r, &rec); err != nil {
			o.errs = append(o.errs, fmt.Sprintf("record %s: %v", r, err))
			continue
		}
		if o.seen[e.Device][rec.Seq] > 0 {
			if m.Duplicate() {
				o.brokerDups++
			} else {
				o.linkDups++
			}
		}
		o.seen[e.Device][rec.Seq]++
		o.order[e.Device] = append(o.order[e.Device], rec.Seq)
	}
}

// distinct is how many different seqs of device arrived.
func (o *observer) distinct(device string) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.seen[device])
}

// missing lists up to 10 seqs of 1..n that did not arrive.
func (o *observer) missing(device string, n uint64) []uint64 {
	o.mu.Lock()
	defer o.mu.Unlock()
	var out []uint64
	for s := uint64(1); s <= n && len(out) < 10; s++ {
		if o.seen[device][s] == 0 {
			out = append(out, s)
		}
	}
	return out
}

func (o *observer) problems() []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]string(nil), o.errs...)
}

func (o *observer) statuses() []statusMsg {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]statusMsg(nil), o.status...)
}

// retained connects a fresh clean-session client, as a late subscriber would, and returns
// the retained message on topic.
func retained(t *testing.T, url, topic string) statusMsg {
	t.Helper()
	got := make(chan []byte, 1)
	c := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(url).SetClientID(fmt.Sprintf("late-%d", time.Now().UnixNano())).SetProtocolVersion(4))
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("late subscriber connect: %v", tok.Error())
	}
	defer c.Disconnect(100)
	c.Subscribe(topic, 1, func(_ mqtt.Client, m mqtt.Message) {
		if m.Retained() {
			select {
			case got <- append([]byte(nil), m.Payload()...):
			default:
			}
		}
	})
	select {
	case p := <-got:
		var s statusMsg
		if err := json.Unmarshal(p, &s); err != nil {
			t.Fatalf("retained status %q: %v", p, err)
		}
		s.raw = string(p)
		return s
	case <-time.After(10 * time.Second):
		t.Fatalf("no retained message on %s within 10s", topic)
		return statusMsg{}
	}
}

func tlsClientConfig(t *testing.T, caFile, certFile, keyFile string) *tls.Config {
	t.Helper()
	cfg := &tls.Config{}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			t.Fatal(err)
		}
		cfg.RootCAs = x509.NewCertPool()
		if !cfg.RootCAs.AppendCertsFromPEM(pem) {
			t.Fatalf("%s holds no certificate", caFile)
		}
	}
	if certFile != "" {
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg
}
