package link_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edge-agent/edge-agent/agent/link"
	"github.com/edge-agent/edge-agent/internal/testenv"
)

// TestMain doubles as the "agent process" of TestLastWillOnCrash: with LINK_TEST_CHILD_BROKER
// set, the test binary runs a link until it is killed.
func TestMain(m *testing.M) {
	if url := os.Getenv("LINK_TEST_CHILD_BROKER"); url != "" {
		os.Exit(childLink(url, os.Getenv("LINK_TEST_CHILD_DEVICE")))
	}
	os.Exit(m.Run())
}

func childLink(url, device string) int {
	q := newMemQueue()
	l, err := link.New(link.Config{Broker: url, Device: device}, link.Options{
		Logger:  slog.New(slog.NewTextHandler(os.Stderr, nil)),
		Streams: []link.Stream{{Name: "results", Schema: resultsSchema, Queue: q}},
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	l.Run(context.Background()) // until SIGKILL
	return 1
}

// Records appended while connected arrive exactly once, in order, and the queue ends empty.
func TestSteadyFlowArrivesOnceInOrder(t *testing.T) {
	b := testenv.Mosquitto(t)
	obs := watch(t, observerOpts{url: b.URL, id: "fleet"})
	q := newMemQueue()
	l, _ := newLink(t, link.Config{Broker: b.URL, Device: "dev1", BatchWait: 20 * time.Millisecond}, q)
	stop := start(t, l)
	waitOnline(t, l)

	const n = 5000
	for i := 1; i <= n; i++ {
		q.Append(fmt.Sprintf(`{"device":"dev1","n":%d}`, i))
	}
	eventually(t, 30*time.Second, func() bool { return obs.distinct("dev1") == n },
		func() string {
			return fmt.Sprintf("%d of %d records arrived; missing %v", obs.distinct("dev1"), n, obs.missing("dev1", n))
		})
	eventually(t, 10*time.Second, func() bool {
		st := l.Stats().Streams["results"]
		return q.Len() == 0 && st.InFlight == 0 && st.AckedThrough == n
	}, func() string { return fmt.Sprintf("queue %d left, stats %+v", q.Len(), l.Stats().Streams["results"]) })
	stop()

	obs.mu.Lock()
	defer obs.mu.Unlock()
	if p := obs.errs; len(p) > 0 {
		t.Fatalf("bad messages: %v", p)
	}
	order := obs.order["dev1"]
	if len(order) != n {
		t.Fatalf("received %d records; want %d, each once (duplicates: %d)", len(order), n, obs.linkDups+obs.brokerDups)
	}
	for i, s := range order {
		if s != uint64(i+1) {
			t.Fatalf("record %d of the arrival order has seq %d; want %d", i, s, i+1)
		}
	}
	st := l.Stats().Streams["results"]
	if st.Records != n || st.Messages != uint64(len(obs.msgs)) || st.Resent != 0 || st.Malformed != 0 {
		t.Errorf("stats %+v; want %d records in %d messages, none resent or malformed", st, n, len(obs.msgs))
	}
}

// A producer appends continuously while the broker is stopped (SIGTERM) and started 20 times:
// every seq arrives at least once, and the records the link sent twice stay within
// InFlight×BatchMax per outage.
//
// The broker runs with persistence and is stopped gracefully, so what it acknowledged
// survives its restart. A broker without persistence (or killed with SIGKILL) loses what it
// had queued for subscribers: that loss is the broker's, not the link's. max_queued_messages
// is lifted for the same reason: Mosquitto silently drops QoS 1 messages beyond 1000 queued
// for a subscriber.
func TestOutageUnderLoadLosesNothing(t *testing.T) {
	b := testenv.MosquittoWith(t, testenv.BrokerConfig{Persist: true, Extra: []string{"max_queued_messages 0"}})
	obs := watch(t, observerOpts{url: b.URL, id: "fleet"})
	q := newMemQueue()
	cfg := link.Config{Broker: b.URL, Device: "dev1", BackoffMin: 20 * time.Millisecond, BackoffMax: 200 * time.Millisecond,
		ConnectTimeout: 2 * time.Second}
	l, _ := newLink(t, cfg, q)
	stop := start(t, l)
	waitOnline(t, l)

	// 2,000 records/s: 10 every 5 ms.
	ctx, cancel := context.WithCancel(context.Background())
	var producer sync.WaitGroup
	producer.Go(func() {
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for i := 0; ; {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				for range 10 {
					i++
					q.Append(fmt.Sprintf(`{"n":%d,"payload":"%s"}`, i, strings.Repeat("x", 40)))
				}
			}
		}
	})
	defer func() { cancel(); producer.Wait() }()

	const outages = 20
	for i := range outages {
		before := l.Stats()
		b.Term()
		time.Sleep(time.Duration(50+rand.IntN(250)) * time.Millisecond) // the outage
		b.Start()
		eventually(t, 20*time.Second, func() bool {
			st := l.Stats()
			return st.State == link.StateOnline && st.Connects > before.Connects && st.Streams["results"].AckedThrough > before.Streams["results"].AckedThrough
		}, func() string {
			return fmt.Sprintf("outage %d: link not back and sending: %+v\nbroker log:\n%s", i+1, l.Stats(), tail(b.Log(), 8000))
		})
	}
	cancel()
	producer.Wait()
	q.mu.Lock()
	n := q.last
	q.mu.Unlock()
	eventually(t, 30*time.Second, func() bool { return obs.distinct("dev1") == int(n) },
		func() string {
			return fmt.Sprintf("%d of %d records arrived; missing %v; stats %+v", obs.distinct("dev1"), n, obs.missing("dev1", n), l.Stats())
		})
	eventually(t, 10*time.Second, func() bool { return q.Len() == 0 },
		func() string { return fmt.Sprintf("queue keeps %d records", q.Len()) })
	st := l.Stats()
	stop()

	obs.mu.Lock()
	linkDups, brokerDups, errs := obs.linkDups, obs.brokerDups, obs.errs
	obs.mu.Unlock()
	if len(errs) > 0 {
		t.Fatalf("bad messages: %v", errs)
	}
	// Each reconnect may re-send what was in flight: InFlight messages of BatchMax records.
	// The broker itself re-delivers to the subscriber what it had in flight to it when it
	// stopped (Mosquitto's max_inflight_messages, 20 by default), flagged DUP.
	reconnects := int(st.Connects) - 1
	bound := reconnects * link.DefaultInFlight * link.DefaultBatchMax
	brokerBound := reconnects * 20 * link.DefaultBatchMax
	t.Logf("%d records through %d outages (%d reconnects, %d failed attempts): %d arrived twice because the link re-sent them (bound %d; Stats.Resent %d records were sent again), %d re-delivered by the broker itself (DUP)",
		n, outages, reconnects, st.ConnectFailures, linkDups, bound, st.Streams["results"].Resent, brokerDups)
	if reconnects < outages {
		t.Errorf("%d reconnects; want at least one per outage (%d)", reconnects, outages)
	}
	if linkDups > bound || linkDups > int(st.Streams["results"].Resent) {
		t.Errorf("%d records arrived twice because the link re-sent them; want at most %d (InFlight×BatchMax per reconnect) and at most Stats.Resent %d",
			linkDups, bound, st.Streams["results"].Resent)
	}
	if brokerDups > brokerBound {
		t.Errorf("%d records re-delivered by the broker; want at most %d", brokerDups, brokerBound)
	}
}

// Messages hold at most BatchMax records; with Gzip the payload is gzip and decodes to the
// same envelope.
func TestBatching(t *testing.T) {
	for _, gz := range []bool{false, true} {
		t.Run(fmt.Sprintf("gzip=%v", gz), func(t *testing.T) {
			b := testenv.Mosquitto(t)
			obs := watch(t, observerOpts{url: b.URL, id: "fleet"})
			q := newMemQueue()
			l, _ := newLink(t, link.Config{Broker: b.URL, Device: "dev1", BatchMax: 10, BatchWait: 50 * time.Millisecond, Gzip: gz}, q)
			stop := start(t, l)
			waitOnline(t, l)
			for i := 1; i <= 95; i++ {
				q.Append(fmt.Sprintf(`{"n":%d}`, i))
			}
			eventually(t, 10*time.Second, func() bool { return obs.distinct("dev1") == 95 },
				func() string { return fmt.Sprintf("%d of 95 arrived", obs.distinct("dev1")) })
			stop()

			obs.mu.Lock()
			defer obs.mu.Unlock()
			if len(obs.errs) > 0 {
				t.Fatalf("bad messages: %v", obs.errs)
			}
			total := 0
			for i, e := range obs.msgs {
				raw := obs.raw[i]
				if isGzip := bytes.HasPrefix(raw, []byte{0x1f, 0x8b}); isGzip != gz {
					t.Errorf("message %d starts with % x; gzip %v", i, raw[:2], gz)
				}
				if e.Schema != resultsSchema || e.Device != "dev1" || e.SentAt.IsZero() {
					t.Errorf("envelope %d: schema %q device %q sent_at %v; want %q, dev1, a time", i, e.Schema, e.Device, e.SentAt, resultsSchema)
				}
				if e.Count != len(e.Results) || e.Count < 1 || e.Count > 10 {
					t.Errorf("envelope %d: count %d with %d records; want 1..10, equal", i, e.Count, len(e.Results))
				}
				var first, last struct{ Seq uint64 }
				json.Unmarshal(e.Results[0], &first)
				json.Unmarshal(e.Results[len(e.Results)-1], &last)
				if e.FirstSeq != first.Seq || e.LastSeq != last.Seq {
					t.Errorf("envelope %d: first_seq %d last_seq %d; records run %d..%d", i, e.FirstSeq, e.LastSeq, first.Seq, last.Seq)
				}
				total += e.Count
			}
			if total != 95 || len(obs.msgs) < 10 {
				t.Errorf("%d records in %d messages; want 95 in at least 10", total, len(obs.msgs))
			}
			if gz {
				zr, err := gzip.NewReader(bytes.NewReader(obs.raw[0]))
				if err != nil {
					t.Fatal(err)
				}
				plain, _ := io.ReadAll(zr)
				if !bytes.HasPrefix(plain, []byte(`{"schema":"edge-agent/results/v1","device":"dev1","first_seq":1,`)) {
					t.Errorf("gunzipped payload starts %.80s", plain)
				}
			}
		})
	}
}

// Each record gets its seq as the first member; a stored record that is not a JSON object
// is skipped, counted and still acknowledged.
func TestRecordsGetSeqAndMalformedAreSkipped(t *testing.T) {
	b := testenv.Mosquitto(t)
	obs := watch(t, observerOpts{url: b.URL, id: "fleet"})
	q := newMemQueue()
	for _, r := range []string{`{}`, `[1,2]`, ` { "a" : 1 } `, `not json`, `{"b":{"c":[1]}}`} {
		q.Append(r)
	}
	l, logs := newLink(t, link.Config{Broker: b.URL, Device: "dev1"}, q)
	stop := start(t, l)
	eventually(t, 10*time.Second, func() bool { return q.Len() == 0 && obs.distinct("dev1") == 3 },
		func() string { return fmt.Sprintf("queue %d, received %d", q.Len(), obs.distinct("dev1")) })
	stop()
	obs.mu.Lock()
	defer obs.mu.Unlock()
	var got []string
	for _, e := range obs.msgs {
		for _, r := range e.Results {
			got = append(got, string(r))
		}
	}
	want := []string{`{"seq":1}`, `{"seq":3,"a" : 1 }`, `{"seq":5,"b":{"c":[1]}}`}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("records %v; want %v", got, want)
	}
	if st := l.Stats().Streams["results"]; st.Malformed != 2 || st.AckedThrough != 5 || st.Records != 3 {
		t.Errorf("stats %+v; want 2 malformed, acked through 5, 3 records", st)
	}
	if !strings.Contains(logs.String(), "not a JSON object") {
		t.Errorf("malformed record not logged:\n%s", logs)
	}
}

// The retained status says online with this connection's nonce to a late subscriber; after
// a clean stop it says offline; metrics go out with QoS 0 while online.
func TestStatusRetainedOnlineThenOffline(t *testing.T) {
	b := testenv.Mosquitto(t)
	obs := watch(t, observerOpts{url: b.URL, id: "fleet", topics: []string{"edge/+/metrics"}})
	q := newMemQueue()
	l, _ := newLink(t, link.Config{Broker: b.URL, Device: "dev1"}, q, func(o *link.Options) {
		o.Status = func() json.RawMessage { return json.RawMessage(`{"agent_version":"1.2.3","state":"not-the-link's"}`) }
	})
	stop := start(t, l)
	waitOnline(t, l)
	nonce := l.Stats().Session
	if len(nonce) != 32 {
		t.Fatalf("session nonce %q; want 32 hex digits", nonce)
	}
	s := retained(t, b.URL, "edge/dev1/status")
	if s.Schema != "edge-agent/status/v1" || s.Device != "dev1" || s.State != "online" || s.Session != nonce || s.Version != "1.2.3" || s.TS.IsZero() {
		t.Errorf("retained status %s; want online, session %s, agent_version from Options.Status", s.raw, nonce)
	}

	if !l.PublishMetrics([]byte(`{"cpu":0.5}`)) {
		t.Errorf("PublishMetrics while online returned false")
	}
	eventually(t, 10*time.Second, func() bool {
		obs.mu.Lock()
		defer obs.mu.Unlock()
		return len(obs.metrics) == 1 && string(obs.metrics[0]) == `{"cpu":0.5}`
	}, func() string { return "metrics did not arrive" })

	stop()
	s = retained(t, b.URL, "edge/dev1/status")
	if s.State != "offline" || s.Session != nonce {
		t.Errorf("retained status after stop %s; want offline, session %s", s.raw, nonce)
	}
	if l.PublishMetrics([]byte(`{}`)) {
		t.Errorf("PublishMetrics after stop returned true")
	}
	if st := l.Stats(); st.MetricsSent != 1 || st.MetricsDropped != 1 || st.State != link.StateStopped {
		t.Errorf("stats %+v; want 1 metrics sent, 1 dropped, state stopped", st)
	}
}

// An agent process killed without a clean disconnect: the broker publishes the last will,
// offline with the session of the connection that died.
func TestLastWillOnCrash(t *testing.T) {
	b := testenv.Mosquitto(t)
	obs := watch(t, observerOpts{url: b.URL, id: "fleet", topics: []string{"edge/+/status"}})
	var out bytes.Buffer
	child := exec.Command(os.Args[0], "-test.run=^$")
	child.Env = append(os.Environ(), "LINK_TEST_CHILD_BROKER="+b.URL, "LINK_TEST_CHILD_DEVICE=crashy")
	child.Stdout, child.Stderr = &out, &out
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	defer child.Process.Kill()
	var nonce string
	eventually(t, 30*time.Second, func() bool {
		for _, s := range obs.statuses() {
			if s.Device == "crashy" && s.State == "online" {
				nonce = s.Session
				return true
			}
		}
		return false
	}, func() string {
		return fmt.Sprintf("child never online; statuses %v; its output:\n%s", obs.statuses(), out.String())
	})

	child.Process.Kill()
	child.Wait()
	eventually(t, 15*time.Second, func() bool {
		for _, s := range obs.statuses() {
			if s.Device == "crashy" && s.State == "offline" && s.Session == nonce {
				return true
			}
		}
		return false
	}, func() string { return fmt.Sprintf("no last will for session %s; statuses %v", nonce, obs.statuses()) })
	if s := retained(t, b.URL, "edge/crashy/status"); s.State != "offline" || s.Session != nonce {
		t.Errorf("retained status after the crash %s; want offline, session %s", s.raw, nonce)
	}
}

// Without a broker the link only waits; the queue is neither read nor acknowledged.
func TestOfflineMode(t *testing.T) {
	q := newMemQueue()
	q.Append(`{"n":1}`)
	l, _ := newLink(t, link.Config{Device: "dev1"}, q)
	baseline := runtime.NumGoroutine()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- l.Run(ctx) }()
	if st := l.Stats().State; st != link.StateOfflineMode {
		t.Errorf("state %q; want %q", st, link.StateOfflineMode)
	}
	// Run must still be waiting a while later (a slow machine only makes this easier).
	select {
	case err := <-done:
		t.Fatalf("Run returned %v before ctx ended", err)
	case <-time.After(200 * time.Millisecond):
	}
	if l.PublishMetrics([]byte(`{}`)) {
		t.Errorf("PublishMetrics in offline mode returned true")
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run returned %v; want nil", err)
	}
	if q.Len() != 1 || q.Reads() != 0 {
		t.Errorf("queue has %d records after %d reads; want 1 untouched", q.Len(), q.Reads())
	}
	testenv.WaitGoroutines(t, baseline, 2*time.Second)
}

// A second Run while one runs is refused instead of fighting over the client id.
func TestRunTwiceIsRefused(t *testing.T) {
	url := fmt.Sprintf("tcp://127.0.0.1:%d", testenv.FreePort(t)) // nothing listens: Run keeps retrying
	l, _ := newLink(t, link.Config{Broker: url, Device: "dev1", BackoffMin: 10 * time.Millisecond, BackoffMax: 20 * time.Millisecond}, newMemQueue())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- l.Run(ctx) }()
	eventually(t, 5*time.Second, func() bool { return l.Stats().ConnectFailures > 0 }, func() string { return "Run never tried to connect" })
	if err := l.Run(ctx); err == nil || !strings.Contains(err.Error(), "already running") {
		t.Errorf("second Run returned %v; want an error saying it is already running", err)
	}
	cancel()
	<-done
}

// tail is the end of a long log.
func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "…" + s[len(s)-n:]
}

// A broker that stops answering (frozen, or a network that drops everything) without closing
// the connection: the missing PUBACKs end the connection after AckTimeout, attempts time out
// while it is frozen, and once it answers again everything arrives.
func TestStalledBrokerIsDroppedAndNothingIsLost(t *testing.T) {
	b := testenv.Mosquitto(t)
	obs := watch(t, observerOpts{url: b.URL, id: "fleet"})
	q := newMemQueue()
	l, logs := newLink(t, link.Config{Broker: b.URL, Device: "dev1", AckTimeout: 500 * time.Millisecond, ConnectTimeout: 500 * time.Millisecond,
		BackoffMin: 50 * time.Millisecond, BackoffMax: 200 * time.Millisecond, BatchWait: -1}, q)
	stop := start(t, l)
	waitOnline(t, l)
	q.Append(`{"n":1}`)
	eventually(t, 10*time.Second, func() bool { return obs.distinct("dev1") == 1 }, func() string { return "first record did not arrive" })

	b.Pause()
	for i := 2; i <= 50; i++ {
		q.Append(fmt.Sprintf(`{"n":%d}`, i))
	}
	eventually(t, 10*time.Second, func() bool { return strings.Contains(l.Stats().LastError, "mqtt.ack_timeout") },
		func() string { return fmt.Sprintf("no ack timeout: %+v", l.Stats()) })
	eventually(t, 10*time.Second, func() bool { return strings.Contains(l.Stats().LastError, "mqtt.connect_timeout") },
		func() string { return fmt.Sprintf("attempts do not time out: %+v", l.Stats()) })
	b.Resume()

	eventually(t, 20*time.Second, func() bool { return obs.distinct("dev1") == 50 && q.Len() == 0 },
		func() string {
			return fmt.Sprintf("%d of 50 arrived, queue %d, missing %v; %+v", obs.distinct("dev1"), q.Len(), obs.missing("dev1", 50), l.Stats())
		})
	stop()
	if !strings.Contains(logs.String(), "mqtt.ack_timeout") {
		t.Errorf("the log does not name mqtt.ack_timeout:\n%s", logs)
	}
}

// An outage does not flood the journal: the same failure is logged once a minute, then with
// the number of repeats held back.
func TestRepeatedFailuresAreLoggedOncePerMinute(t *testing.T) {
	var mu sync.Mutex
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	url := fmt.Sprintf("tcp://127.0.0.1:%d", testenv.FreePort(t)) // nothing listens
	l, logs := newLink(t, link.Config{Broker: url, Device: "dev1", BackoffMin: 2 * time.Millisecond, BackoffMax: 4 * time.Millisecond},
		newMemQueue(), func(o *link.Options) { o.Now = clock })
	stop := start(t, l)
	lines := func() int { return strings.Count(logs.String(), `msg="mqtt connect failed"`) }
	eventually(t, 10*time.Second, func() bool { return l.Stats().ConnectFailures >= 20 }, func() string { return "fewer than 20 attempts" })
	if n := lines(); n != 1 {
		t.Fatalf("%d log lines for 20 identical failures within a minute; want 1:\n%s", n, logs)
	}
	mu.Lock()
	now = now.Add(61 * time.Second)
	mu.Unlock()
	eventually(t, 10*time.Second, func() bool { return lines() == 2 }, func() string { return fmt.Sprintf("no second line a minute later:\n%s", logs) })
	stop()
	if !strings.Contains(logs.String(), "repeated=") {
		t.Errorf("the second line does not count the repeats:\n%s", logs)
	}
}
