//go:build cgo

package agent_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/edge-agent/edge-agent/agent"
	"github.com/edge-agent/edge-agent/agent/config"
	"github.com/edge-agent/edge-agent/agent/health"
	"github.com/edge-agent/edge-agent/agent/link"
	"github.com/edge-agent/edge-agent/agent/outbox"
	"github.com/edge-agent/edge-agent/agent/state"
	"github.com/edge-agent/edge-agent/internal/boltcheck"
	"github.com/edge-agent/edge-agent/internal/mqtttest"
	"github.com/edge-agent/edge-agent/internal/testenv"
)

func outboxStats(t testing.TB, r *running) outbox.Stats {
	t.Helper()
	st, ok := r.a.FleetStats()["outbox"].(outbox.Stats)
	if !ok {
		t.Fatalf("FleetStats has no outbox: %v", r.a.FleetStats())
	}
	return st
}

// Results, events and the retained status reach a real broker: the results the pipeline's
// sinks saw arrive with the same content and seq, a failing source becomes a health event,
// and the status turns offline when the agent stops.
func TestResultsEventsAndStatusReachTheBroker(t *testing.T) {
	broker := testenv.MosquittoWith(t, testenv.BrokerConfig{})
	sub := mqtttest.NewConsumer(t, broker.URL, "edge/+/results", "edge/+/events", "edge/+/status")
	r := start(t, fmt.Sprintf(`
device: fleet-1
mqtt: {broker: %s, batch_wait: 20ms, backoff_min: 50ms, backoff_max: 200ms}
sources:
  - {name: sweep, kind: synthetic, rate: 200, synthetic: {wave: sine, phase: true, offset: -3.14159}}
  - {name: broken, kind: command, command: {argv: ["false"], format: ndjson}}
models:
  - {name: sin, path: @TESTDATA@/sin_model.tflite, sources: [sweep, broken], output: {kind: regression, regression: {names: [y]}}}
`, broker.URL))
	mqtttest.WaitFor(t, 20*time.Second, "100 results at the broker", func() bool { return sub.Count("results", "fleet-1") >= 100 })
	mqtttest.WaitFor(t, 20*time.Second, "the failing source's health event", func() bool {
		for _, e := range sub.Records("events", "fleet-1") {
			if strings.Contains(string(e), `"type":"health.set"`) && strings.Contains(string(e), `"code":"source/broken"`) {
				return true
			}
		}
		return false
	})
	var status struct {
		State, Session string
		Models         []struct{ Name, Version string }
	}
	json.Unmarshal(sub.Status("fleet-1"), &status)
	if status.State != "online" || status.Session == "" || len(status.Models) != 1 || status.Models[0].Name != "sin" {
		t.Errorf("status %s; want online with a session and the sin model", sub.Status("fleet-1"))
	}
	r.stop()

	seen := r.sink.byModel("sin")
	if len(seen) < 100 {
		t.Fatalf("sink saw %d results", len(seen))
	}
	mqtttest.WaitFor(t, 10*time.Second, "every stored result at the broker", func() bool {
		return sub.Count("results", "fleet-1") >= len(seen)
	})
	for i, res := range seen {
		if i > 0 && res.Seq <= seen[i-1].Seq {
			t.Fatalf("seq %d after %d: the outbox numbers results in order", res.Seq, seen[i-1].Seq)
		}
		got, ok := sub.Record("results", "fleet-1", res.Seq)
		if !ok {
			t.Fatalf("result seq %d never arrived", res.Seq)
		}
		want, _ := json.Marshal(res)
		var a, b map[string]any
		json.Unmarshal(want, &a)
		json.Unmarshal(got, &b)
		if !reflect.DeepEqual(a, b) {
			t.Fatalf("seq %d: the sink saw %s\nthe broker got %s", res.Seq, want, got)
		}
	}
	events := sub.Records("events", "fleet-1")
	if len(events) == 0 || !strings.Contains(string(events[0]), `"type":"agent.started"`) {
		t.Errorf("first event %s; want agent.started", events[:min(1, len(events))])
	}
	mqtttest.WaitFor(t, 10*time.Second, "the offline status", func() bool {
		return strings.Contains(string(sub.Status("fleet-1")), `"state":"offline"`)
	})
	if d := sub.Duplicates("results", "fleet-1"); d != 0 {
		t.Errorf("%d duplicate results without any outage", d)
	}
}

// A long outage reaches the outbox's cap: the agent keeps serving, drop-oldest evicts exactly
// the oldest results (counted, announced in an event), and after the broker returns every
// result that was not dropped arrives.
func TestLongOutageDropsExactlyTheOldest(t *testing.T) {
	broker := testenv.MosquittoWith(t, testenv.BrokerConfig{Persist: true})
	sub := mqtttest.NewConsumer(t, broker.URL, "edge/+/results", "edge/+/events")
	broker.Term() // down before the agent starts: nothing can be sent until it returns
	const frames = 3000
	r := start(t, fmt.Sprintf(`
device: fleet-2
mqtt: {broker: %s, batch_wait: 20ms, backoff_min: 50ms, backoff_max: 200ms}
outbox: {max_results: 500, policy: drop-oldest}
sources:
  - {name: sweep, kind: synthetic, rate: 3000, queue: 4000, synthetic: {wave: sine, phase: true, offset: -3.14159, count: %d}}
models:
  - {name: sin, path: @TESTDATA@/sin_model.tflite, sources: [sweep], queue: 10000, output: {kind: regression, regression: {names: [y]}}}
`, broker.URL, frames))
	// Both queues hold every frame, so none is lost before the model on a slow machine (the
	// source's queue drops its oldest when full, and those never reach the pipeline's
	// counters). A generous bound: under -race on a loaded 2-core machine 3000 inferences and
	// their commits can take well over 30 s; the wait ends as soon as they are done.
	mqtttest.WaitFor(t, 3*time.Minute, "every frame processed", func() bool {
		st, src := r.a.Pipeline().Stats(), r.a.SourceStats()
		return len(st) == 1 && len(src) == 1 && st[0].Results+st[0].Dropped+src[0].Queue.Dropped >= frames
	})
	if d := r.a.SourceStats()[0].Queue.Dropped; d != 0 {
		t.Fatalf("the source's queue dropped %d frames; the test needs every frame to reach the outbox", d)
	}
	st := outboxStats(t, r).Streams["results"]
	if st.Count != 500 || st.Dropped.Oldest != st.Appended-500 || st.Dropped.Newest != 0 {
		t.Fatalf("outbox during the outage: %+v; want 500 kept and the rest dropped as oldest", st)
	}
	if h, ok := r.a.Health().Get("outbox"); !ok || !strings.Contains(h.Message, "full") {
		t.Errorf("health condition outbox = %+v, %v; want a warning that it is full", h, ok)
	}
	dropped, appended := st.Dropped.Oldest, st.Appended

	broker.Start()
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("link %+v\noutbox %+v\nconsumer got %d results, %d events\nbroker log tail: %s", r.a.FleetStats()["mqtt"], outboxStats(t, r),
				sub.Count("results", "fleet-2"), sub.Count("events", "fleet-2"), tail(broker.Log(), 3000))
			for _, e := range sub.Records("events", "fleet-2") {
				t.Logf("event %s", e)
			}
		}
	})
	mqtttest.WaitFor(t, 2*time.Minute, "the kept results at the broker", func() bool {
		return sub.Count("results", "fleet-2") >= 500
	})
	recs := sub.Records("results", "fleet-2")
	for i, rec := range recs {
		var s struct{ Seq uint64 }
		json.Unmarshal(rec, &s)
		if want := dropped + uint64(i) + 1; s.Seq != want {
			t.Fatalf("received result %d has seq %d; want %d (exactly seqs %d..%d survive)", i, s.Seq, want, dropped+1, appended)
		}
	}
	if uint64(len(recs)) != appended-dropped {
		t.Fatalf("received %d results; want %d = %d appended - %d dropped", len(recs), appended-dropped, appended, dropped)
	}
	mqtttest.WaitFor(t, 10*time.Second, "an outbox.dropped event with the final total", func() bool {
		for _, e := range sub.Records("events", "fleet-2") {
			var ev struct {
				Type string
				Data struct {
					TotalOldest uint64 `json:"total_oldest"`
				}
			}
			json.Unmarshal(e, &ev)
			if ev.Type == "outbox.dropped" && ev.Data.TotalOldest == dropped {
				return true
			}
		}
		return false
	})
	mqtttest.WaitFor(t, 10*time.Second, "the outbox emptied and its health condition cleared", func() bool {
		_, warn := r.a.Health().Get("outbox")
		return outboxStats(t, r).Streams["results"].Count == 0 && !warn
	})
	t.Logf("outage: %d results appended, %d dropped (oldest), %d delivered", appended, dropped, len(recs))
}

// The broker is stopped under load and restarted 20 times, with the real outbox and link:
// every result the pipeline's sinks saw arrives, and duplicates stay within what the
// in-flight window allows per outage.
func TestBrokerOutagesUnderLoad(t *testing.T) {
	broker := testenv.MosquittoWith(t, testenv.BrokerConfig{Persist: true, Extra: []string{"max_queued_messages 0"}})
	sub := mqtttest.NewConsumer(t, broker.URL, "edge/+/results")
	const inFlight, batchMax, outages = 4, 20, 20
	r := start(t, fmt.Sprintf(`
device: fleet-3
mqtt: {broker: %s, batch_wait: 10ms, batch_max: %d, in_flight: %d, backoff_min: 50ms, backoff_max: 200ms}
sources:
  - {name: sweep, kind: synthetic, rate: 1000, synthetic: {wave: sine, phase: true, offset: -3.14159}}
models:
  - {name: sin, path: @TESTDATA@/sin_model.tflite, sources: [sweep], output: {kind: regression, regression: {names: [y]}}}
`, broker.URL, batchMax, inFlight))
	for i := range outages {
		before := sub.Count("results", "fleet-3")
		mqtttest.WaitFor(t, 20*time.Second, fmt.Sprintf("results flowing before outage %d", i+1), func() bool {
			return sub.Count("results", "fleet-3") > before+50
		})
		broker.Term()
		time.Sleep(time.Duration(50+i*13%250) * time.Millisecond) // the outage, 50–300 ms
		broker.Start()
	}
	mqtttest.WaitFor(t, 20*time.Second, "the link back online after the last outage", func() bool {
		st, _ := r.a.FleetStats()["mqtt"].(link.Stats)
		return st.State == link.StateOnline
	})
	r.stop() // the link sends what is left while it is online
	left := outboxStats(t, r).Streams["results"].Count
	seen := r.sink.byModel("sin")
	seqs := make([]uint64, len(seen))
	for i, res := range seen {
		seqs[i] = res.Seq
	}
	deadline := time.Now().Add(testenv.Patience(30 * time.Second))
	for sub.Missing("results", "fleet-3", seqs) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d stored results never arrived (%d were still in the outbox at stop)", sub.Missing("results", "fleet-3", seqs), len(seqs), left)
		}
		time.Sleep(20 * time.Millisecond)
	}
	dups := sub.Duplicates("results", "fleet-3")
	if limit := outages * inFlight * batchMax; dups > limit {
		t.Errorf("%d duplicates over %d outages; the in-flight window allows at most %d", dups, outages, limit)
	}
	t.Logf("%d outages: %d results stored, all delivered; %d sent twice by the agent (bound %d), %d redelivered by the broker",
		outages, len(seen), dups, outages*inFlight*batchMax, sub.Redelivered("results", "fleet-3"))
}

// A damaged outbox file does not keep the agent from serving: it is moved aside, a new one
// is started, and a health condition says where the old one went.
func TestDamagedOutboxIsMovedAside(t *testing.T) {
	state := t.TempDir()
	if err := os.WriteFile(filepath.Join(state, "outbox.db"), bytes.Repeat([]byte("not a database "), 4096), 0o600); err != nil {
		t.Fatal(err)
	}
	r := start(t, `
device: fleet-4
state_dir: `+state+`
sources:
  - {name: sweep, kind: synthetic, rate: 200, synthetic: {wave: sine, phase: true, offset: -3.14159}}
models:
  - {name: sin, path: @TESTDATA@/sin_model.tflite, sources: [sweep], output: {kind: regression, regression: {names: [y]}}}
`)
	waitFor(t, "results stored in the new outbox", func() bool { return len(r.sink.byModel("sin")) >= 10 })
	c, ok := r.a.Health().Get("outbox-damaged")
	moved, _ := filepath.Glob(filepath.Join(state, "outbox.db.damaged-*"))
	if !ok || len(moved) != 1 || !strings.Contains(c.Message, moved[0]) {
		t.Fatalf("condition %+v (%v), moved files %v; want one moved file named in the condition", c, ok, moved)
	}
	if b, _ := os.ReadFile(moved[0]); !bytes.HasPrefix(b, []byte("not a database")) {
		t.Errorf("the moved file does not hold the damaged content")
	}
}

// Settings the link checks (URL scheme, TLS files) fail agent.New with the YAML field named.
func TestBadMQTTSettingsNameTheField(t *testing.T) {
	for _, c := range []struct{ mqtt, want string }{
		{"{broker: ftp://b:21}", "mqtt.broker"},
		{"{broker: ssl://b:8883, ca_file: /nonexistent/ca.pem}", "mqtt.ca_file"},
		{"{broker: ssl://b:8883, cert_file: /nonexistent/c.pem}", "mqtt.key_file"},
		{"{broker: tcp://b:1883, password_file: /nonexistent/pw}", "mqtt.password_file"},
	} {
		cfg, err := config.Parse([]byte("state_dir: "+t.TempDir()+"\nmqtt: "+c.mqtt), "")
		if err != nil {
			t.Fatalf("%s: config: %v", c.mqtt, err)
		}
		a, err := agent.New(cfg, agent.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		if err == nil {
			a.Close()
			t.Errorf("%s: agent.New succeeded; want an error naming %s", c.mqtt, c.want)
		} else if !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v; want it to name %s", c.mqtt, err, c.want)
		}
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// The audit's crash loops: an outbox truncated to 200,000 bytes and a state.db truncated to
// 10,000 bytes faulted or panicked on every start. Now the agent starts and serves, both files
// are moved aside with health conditions naming them, the results still readable in the
// damaged outbox reach the fleet with their own sequence numbers and content, new ones are
// numbered above everything the damaged file gave out, and a command issued before the
// state store was recovered is refused (its id may be among those lost).
func TestTruncatedOutboxAndStateDoNotStopTheAgent(t *testing.T) {
	broker := testenv.MosquittoWith(t, testenv.BrokerConfig{})
	con := newConsole(t, broker.URL)
	sub := mqtttest.NewConsumer(t, broker.URL, "edge/fleet-5/results", "edge/fleet-5/events")
	state := t.TempDir()
	head := `
device: fleet-5
state_dir: ` + state + `
` + con.keys() + `
mqtt: {broker: ` + broker.URL + `, backoff_min: 50ms, backoff_max: 200ms}
`
	yml := head + `
sources:
  - {name: sweep, kind: synthetic, rate: 500, synthetic: {wave: sine, phase: true, offset: -3.14159}}
models:
  - {name: sin, path: @TESTDATA@/sin_model.tflite, sources: [sweep], output: {kind: regression, regression: {names: [y]}}}
`
	lastSeq := func(r *running) uint64 {
		return r.a.FleetStats()["outbox"].(outbox.Stats).Streams["results"].LastSeq
	}
	// A command, so that the state store holds an id; then, with no broker to reach, 2,000
	// results that nobody has received.
	online := func(r *running) {
		mqtttest.WaitFor(t, 20*time.Second, "the agent online", func() bool {
			return strings.Contains(fmt.Sprint(r.a.FleetStats()["mqtt"]), "online")
		})
	}
	r := start(t, head)
	online(r)
	con.send("edge/fleet-5/cmd", con.cmd("p1", "ping", ""))
	con.final("p1")
	r.stop()
	r = start(t, strings.Replace(yml, broker.URL, "tcp://127.0.0.1:1", 1)) // nothing listens there
	waitFor(t, "2,000 results in the outbox", func() bool { return lastSeq(r) >= 2000 })
	r.stop()
	before := lastSeq(r)
	stored := storedResults(t, filepath.Join(state, "outbox.db"))
	for file, size := range map[string]int64{"outbox.db": 200_000, "state.db": 10_000} {
		p := filepath.Join(state, file)
		m, err := boltcheck.Preflight(p)
		if err != nil {
			t.Fatal(err)
		}
		// bbolt grows a file ahead of its pages: cut below the pages it uses, or nothing is lost.
		size = min(size, int64(m.Pages)*int64(m.PageSize)/2)
		if err := os.Truncate(p, size); err != nil {
			t.Fatal(err)
		}
	}
	early := con.cmd("p0", "ping", "") // issued before the recovery
	var old func() int

	r = start(t, yml)
	waitFor(t, "results stored in the new outbox", func() bool { return lastSeq(r) > before+10 })
	for code, file := range map[string]string{"outbox-damaged": "outbox.db", "state-damaged": "state.db"} {
		c, ok := r.a.Health().Get(code)
		moved, _ := filepath.Glob(filepath.Join(state, file+".damaged-*"))
		if !ok || len(moved) != 1 || !strings.Contains(c.Message, moved[0]) {
			t.Errorf("%s: condition %+v (%v), moved files %v; want one moved file named in the condition", code, c, ok, moved)
		}
	}
	var salvaged int
	waitFor(t, "the outbox.damaged event", func() bool {
		for _, e := range sub.Records("events", "fleet-5") {
			var ev struct {
				Type string
				Data struct {
					Salvage outbox.Salvage
				}
			}
			if json.Unmarshal(e, &ev) == nil && ev.Type == "outbox.damaged" {
				salvaged = ev.Data.Salvage.Restored["results"]
				return true
			}
		}
		return false
	})
	if salvaged == 0 || salvaged >= len(stored) {
		t.Errorf("%d results salvaged of the %d the outbox held before it was cut in half", salvaged, len(stored))
	}
	old = func() (n int) {
		for seq := range before {
			if _, ok := sub.Record("results", "fleet-5", seq+1); ok {
				n++
			}
		}
		return n
	}
	waitFor(t, fmt.Sprintf("the %d salvaged results at the fleet", salvaged), func() bool { return old() >= salvaged })
	for seq := range before {
		got, ok := sub.Record("results", "fleet-5", seq+1)
		if !ok {
			continue
		}
		var a, b map[string]any
		json.Unmarshal(got, &a)
		json.Unmarshal(stored[seq+1], &b)
		delete(a, "seq")
		delete(a, "epoch")
		if !reflect.DeepEqual(a, b) {
			t.Errorf("result %d reached the fleet as %s; the outbox had stored %s", seq+1, got, stored[seq+1])
			break
		}
	}
	if n := old(); n != salvaged || sub.Duplicates("results", "fleet-5") != 0 {
		t.Errorf("%d results at or below %d reached the fleet, %d salvaged; %d sent twice", n, before, salvaged, sub.Duplicates("results", "fleet-5"))
	}
	online(r)
	if es := sub.Epochs("results", "fleet-5"); len(es) != 1 || es[0] == 0 {
		t.Errorf("epochs %v; want the one the device's first start began (the lease kept it)", es)
	}
	con.send("edge/fleet-5/cmd", early)
	if rs := con.final("p0"); rs[len(rs)-1]["status"] != "failed" || !strings.Contains(fmt.Sprint(rs[len(rs)-1]["reason"]), "lost the command ids") {
		t.Errorf("a command issued before the state store was recovered: %v; want it refused", rs)
	}
	con.send("edge/fleet-5/cmd", con.cmd("p2", "ping", ""))
	if rs := con.final("p2"); rs[len(rs)-1]["status"] != "done" {
		t.Errorf("commands after the state store was replaced: %v", rs)
	}
}

// storedResults reads every result an outbox file holds, by sequence number (through bbolt,
// as the agent does, not through the salvage's reader).
func storedResults(t *testing.T, path string) map[uint64][]byte {
	t.Helper()
	o, err := outbox.Open(path, outbox.Options{Streams: map[string]outbox.Caps{"results": {}}, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	out := map[uint64][]byte{}
	_, err = o.Stream("results").Read(t.Context(), 0, 1<<20, 1<<30, func(seq uint64, d []byte) { out[seq] = bytes.Clone(d) })
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// A full disk (state_dir on a real 16 MiB tmpfs, filled by another file) is a visible, counted
// drop: results that cannot be stored are refused and counted (metrics, status), readiness
// says why, the log does not flood, acknowledgements keep committing so the connection stays
// up, and once space returns an event reports the count and every result that was stored
// (and so reached the other sinks) reaches a persistent consumer.
func TestFullDiskIsACountedVisibleDrop(t *testing.T) {
	broker := testenv.MosquittoWith(t, testenv.BrokerConfig{})
	sub := mqtttest.NewConsumer(t, broker.URL, "edge/fleet-6/results", "edge/fleet-6/events")
	state := testenv.SmallDisk(t, 16<<20)
	addr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	r := start(t, `
device: fleet-6
state_dir: `+state+`
status: {listen: "`+addr+`"}
mqtt: {broker: `+broker.URL+`, backoff_min: 50ms, backoff_max: 200ms, ack_timeout: 2s}
sources:
  - {name: sweep, kind: synthetic, rate: 1000, synthetic: {wave: sine, phase: true, offset: -3.14159}}
models:
  - {name: sin, path: @TESTDATA@/sin_model.tflite, sources: [sweep], output: {kind: regression, regression: {names: [y]}}}
`)
	url := "http://" + addr
	ob := func() outbox.Stats { return outboxStats(t, r) }
	mqtttest.WaitFor(t, 20*time.Second, "the agent online", func() bool {
		return strings.Contains(fmt.Sprint(r.a.FleetStats()["mqtt"]), "online")
	})
	broker.Pause() // nothing is delivered: the outbox grows until the disk is full
	release := testenv.Fill(t, state, 256<<10)
	waitFor(t, "the disk full", func() bool { return ob().DiskFull })
	waitFor(t, "2,000 results refused", func() bool { return ob().Streams["results"].Refused.NoSpace >= 2000 })
	if code, body := httpGet(t, url+"/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(string(body), "disk holding the outbox is full") {
		t.Errorf("/readyz on a full disk: %d %s; want 503 saying why", code, body)
	}
	if c, ok := r.a.Health().Get("disk-full"); !ok || c.Severity != health.Error {
		t.Errorf("health condition disk-full: %+v, %v", c, ok)
	}
	_, metrics := httpGet(t, url+"/metrics")
	if !regexp.MustCompile(`edge_agent_outbox_refused_total\{cause="no_space",stream="results"\} [1-9]`).Match(metrics) ||
		!strings.Contains(string(metrics), "edge_agent_outbox_disk_full 1") {
		t.Errorf("metrics on a full disk lack the refused count or the disk-full gauge:\n%s", grepLines(string(metrics), "outbox"))
	}
	logs := r.logs.String()
	if n := strings.Count(logs, "level=ERROR") + strings.Count(logs, "level=WARN"); n > 10 {
		t.Errorf("%d ERROR and WARN lines while %d results were refused; want a few (one per cause per interval):\n%s",
			n, ob().Streams["results"].Refused.NoSpace, tail(logs, 3000))
	}

	// The broker comes back while the disk is still full: the backlog is delivered, and its
	// acknowledgements commit (the reserve is theirs) without breaking the connection.
	connects := func() uint64 { return r.a.FleetStats()["mqtt"].(link.Stats).Connects }
	online := func() bool { return strings.Contains(fmt.Sprint(r.a.FleetStats()["mqtt"]), "online") }
	broker.Resume()
	waitFor(t, "the backlog delivered and acknowledged on the full disk", func() bool { return online() && ob().Streams["results"].Count == 0 })
	if !ob().DiskFull {
		t.Fatal("the disk is no longer full before its space was released; the test proves nothing")
	}
	reconnected := connects()

	release()
	waitFor(t, "space back", func() bool { return !ob().DiskFull })
	var refused float64
	waitFor(t, "the outbox.disk_full event", func() bool {
		for _, e := range sub.Records("events", "fleet-6") {
			var ev struct {
				Type string
				Data struct{ Refused map[string]float64 }
			}
			if json.Unmarshal(e, &ev) == nil && ev.Type == "outbox.disk_full" {
				refused = ev.Data.Refused["results"]
				return true
			}
		}
		return false
	})
	if total := ob().Streams["results"].Refused.NoSpace; refused < 2000 || refused > float64(total) {
		t.Errorf("the event reports %v results refused; %d were counted", refused, total)
	}
	if code, _ := httpGet(t, url+"/readyz"); code != http.StatusOK {
		t.Errorf("/readyz after space returned: %d", code)
	}
	stored := r.sink.byModel("sin")
	seqs := make([]uint64, len(stored))
	for i, res := range stored {
		seqs[i] = res.Seq
	}
	waitFor(t, fmt.Sprintf("the %d stored results at the consumer", len(seqs)), func() bool { return sub.Missing("results", "fleet-6", seqs) == 0 })
	if n := connects(); n != reconnected {
		t.Errorf("%d connections by the end; %d when the backlog had drained on the full disk: acknowledgements broke the connection", n, reconnected)
	}
	t.Logf("%d results stored and delivered, %v refused on the full disk; %d ERROR and %d WARN log lines while full", len(seqs), refused,
		strings.Count(logs, "level=ERROR"), strings.Count(logs, "level=WARN"))
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// The damage matrix at the agent: for each pattern of testenv.DamagedCopies, the outbox and the
// state store damaged the same way, the agent starts and serves within seconds, a damaged file
// is moved aside and named in a health condition, the salvaged results keep their numbers and
// every new one is numbered above what the damaged outbox gave out.
func TestDamageMatrixAgentServes(t *testing.T) {
	yml := func(state string) string {
		return `
device: fleet-7
state_dir: ` + state + `
mqtt: {broker: "tcp://127.0.0.1:1"} # nothing listens: the state store opens, results stay
sources:
  - {name: sweep, kind: synthetic, rate: 1000, synthetic: {wave: sine, phase: true, offset: -3.14159}}
models:
  - {name: sin, path: @TESTDATA@/sin_model.tflite, sources: [sweep], output: {kind: regression, regression: {names: [y]}}}
`
	}
	valid := t.TempDir()
	r := start(t, yml(valid))
	waitFor(t, "3,000 results in the outbox", func() bool { return outboxStats(t, r).Streams["results"].LastSeq >= 3000 })
	r.stop()
	before := outboxStats(t, r).Streams["results"].LastSeq
	// A state store holding enough command ids to damage (one page of ids is not a matrix).
	ids, err := state.Open(filepath.Join(valid, "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	for i := range 1000 {
		if _, err := ids.Remember(fmt.Sprintf("command-%06d", i), time.Now().Add(time.Hour), time.Now(), 10000); err != nil {
			t.Fatal(err)
		}
	}
	ids.Close()
	lease, _ := os.ReadFile(filepath.Join(valid, "outbox.db.seq.json"))
	outboxCases := testenv.DamagedCopies(t, filepath.Join(valid, "outbox.db"))
	stateCases := testenv.DamagedCopies(t, filepath.Join(valid, "state.db"))
	for name, ob := range outboxCases {
		st, ok := stateCases[name]
		if !ok {
			continue // a cut that is past the end of the smaller file
		}
		state := t.TempDir()
		os.WriteFile(filepath.Join(state, "outbox.db"), ob, 0o600)
		os.WriteFile(filepath.Join(state, "state.db"), st, 0o600)
		os.WriteFile(filepath.Join(state, "outbox.db.seq.json"), lease, 0o600)
		r := start(t, yml(state))
		waitFor(t, name+": results stored", func() bool { return len(r.sink.byModel("sin")) >= 10 })
		for _, res := range r.sink.byModel("sin") {
			if res.Seq <= before {
				t.Fatalf("%s: a new result numbered %d; the damaged outbox had given out up to %d", name, res.Seq, before)
			}
		}
		moved, _ := filepath.Glob(filepath.Join(state, "outbox.db.damaged-*"))
		c, cond := r.a.Health().Get("outbox-damaged")
		if len(moved) != 0 && (!cond || !strings.Contains(c.Message, moved[0])) {
			t.Errorf("%s: outbox moved to %v, condition %+v", name, moved, c)
		}
		t.Logf("%s: serving; outbox moved aside %v %s", name, len(moved) == 1, c.Message)
		r.stop()
	}
}
