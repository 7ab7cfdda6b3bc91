//go:build cgo

package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/edge-agent/edge-agent/agent/command"
	"github.com/edge-agent/edge-agent/internal/mqtttest"
	"github.com/edge-agent/edge-agent/internal/simfleet"
	"github.com/edge-agent/edge-agent/internal/testenv"
)

// simSummary is the part of simulate's JSON summary the tests read.
type simSummary struct {
	Event      string        `json:"event"`
	Devices    int           `json:"devices"`
	AllOnlineS *float64      `json:"all_online_s"`
	Deploy     *deployReport `json:"deploy"`
	PeakRSSMB  *float64      `json:"peak_rss_mb"`
	Results    struct {
		OfferedPerSec  float64           `json:"offered_per_sec"`
		ReceivedPerSec float64           `json:"received_per_sec"`
		Received       uint64            `json:"received"`
		Sent           uint64            `json:"sent"`
		Without        int               `json:"devices_without_results"`
		PerDevice      map[string]uint64 `json:"per_device"`
	} `json:"results"`
}

// replyLog keeps every command reply a broker carries, as a fleet console would see them.
type replyLog struct {
	mu      sync.Mutex
	replies []command.Reply
}

func newReplyLog(t *testing.T, broker string) *replyLog {
	t.Helper()
	l := &replyLog{}
	c := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(broker).SetClientID("test-replies").SetCleanSession(true))
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("reply log connect: %v", tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(100) })
	tok := c.Subscribe("edge/+/cmd/reply", 1, func(_ mqtt.Client, m mqtt.Message) {
		var r command.Reply
		if err := json.Unmarshal(m.Payload(), &r); err != nil {
			t.Errorf("reply on %s is not JSON: %v", m.Topic(), err)
			return
		}
		l.mu.Lock()
		l.replies = append(l.replies, r)
		l.mu.Unlock()
	})
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("reply log subscribe: %v", tok.Error())
	}
	return l
}

// statuses returns each device's reply statuses for command id, in arrival order.
func (l *replyLog) statuses(id string) map[string][]string {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := map[string][]string{}
	for _, r := range l.replies {
		if r.ID == id {
			out[r.Device] = append(out[r.Device], r.Status)
		}
	}
	return out
}

// 50 simulated devices against a real Mosquitto, with a group deploy: every device comes
// online, accepts and finishes the deploy (seen by simulate and by an independent console),
// sends results that arrive from every device, and stops cleanly (offline status, no
// goroutine left behind).
func TestSimulate(t *testing.T) {
	// os/signal starts its watching goroutine at the first Notify, for the life of the
	// process: start it before counting goroutines.
	_, stop := interruptContext()
	stop()
	testenv.NoGoroutineLeaks(t)
	const n = 50
	broker := testenv.MosquittoWith(t, testenv.BrokerConfig{Extra: []string{"max_queued_messages 100000"}})
	// The test's own consumers: a fleet-side results and status consumer, and the replies.
	sub := mqtttest.NewConsumer(t, broker.URL, "edge/+/results", "edge/+/status")
	replies := newReplyLog(t, broker.URL)
	before := runtime.NumGoroutine()

	code, out, errOut := edgectl(t, "simulate", "--devices", strconv.Itoa(n), "--deploy", "--deploy-time", "400ms",
		"--results-per-sec", "5", "--duration", "7s", "--every", "1s", "--json", "--broker", broker.URL, "--config", os.DevNull)
	// Every device goroutine, link and console client has ended by the time it returns.
	testenv.WaitGoroutines(t, before, 5*time.Second)
	if code != 0 {
		t.Fatalf("exit %d; want 0\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	var sum simSummary
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &sum); err != nil || sum.Event != "summary" {
		t.Fatalf("last line is not the summary (%v):\n%s", err, out)
	}
	var events []string
	for _, e := range jsonLines(t, out) {
		events = append(events, fmt.Sprint(e["event"]))
	}
	joined := strings.Join(events, " ")
	if events[0] != "start" || !strings.Contains(joined, "online deploy_sent") || !strings.Contains(joined, "deploy_accepted") ||
		strings.Index(joined, "deploy_accepted") > strings.Index(joined, "deploy_done") || !strings.Contains(joined, "progress") {
		t.Errorf("events %v; want start, online, deploy_sent, then deploy_accepted before deploy_done, and progress lines", events)
	}

	if sum.Devices != n || sum.AllOnlineS == nil {
		t.Fatalf("summary: %d devices, all online after %v; want %d, all online\n%s", sum.Devices, sum.AllOnlineS, n, out)
	}
	d := sum.Deploy
	if d == nil || d.ID == "" || d.Accepted != n || d.Done != n || d.Failed != 0 || d.AcceptedAllS == nil || d.DoneAllS == nil || *d.AcceptedAllS > *d.DoneAllS {
		t.Fatalf("deploy summary %+v; want accepted and done by all %d, accepted no later than done\n%s", d, n, out)
	}
	// An independent console saw the same: accepted first, progress, done last, per device.
	for i := range n {
		dev := simfleet.DeviceID(i)
		mqtttest.WaitFor(t, 10*time.Second, dev+"'s final reply at the test's console", func() bool {
			st := replies.statuses(d.ID)[dev]
			return len(st) > 0 && st[len(st)-1] != command.StatusAccepted && st[len(st)-1] != command.StatusProgress
		})
		st := replies.statuses(d.ID)[dev]
		if len(st) < 3 || st[0] != command.StatusAccepted || st[len(st)-1] != command.StatusDone || !strings.Contains(strings.Join(st, " "), command.StatusProgress) {
			t.Errorf("%s replied %v to deploy %s; want accepted, progress, done", dev, st, d.ID)
		}
	}

	r := sum.Results
	if r.ReceivedPerSec <= 0 || r.OfferedPerSec != n*5 || r.Without != 0 || len(r.PerDevice) != n {
		t.Errorf("results: %.1f/s received of %.0f/s offered, %d devices without results, %d counted; want a positive rate from all %d",
			r.ReceivedPerSec, r.OfferedPerSec, r.Without, len(r.PerDevice), n)
	}
	var total uint64
	for i := range n {
		dev := simfleet.DeviceID(i)
		got := r.PerDevice[dev]
		total += got
		if got == 0 {
			t.Errorf("simulate counted no results from %s", dev)
		}
		// The independent consumer counts the same distinct records (by seq) per device.
		mqtttest.WaitFor(t, 10*time.Second, dev+"'s results at the test's consumer", func() bool { return uint64(sub.Count("results", dev)) >= got })
		if c := sub.Count("results", dev); got == 0 || uint64(c) != got {
			t.Errorf("%s: the test's consumer has %d distinct results, simulate counted %d; want the same, and more than 0", dev, c, got)
		}
	}
	if total != r.Received || r.Received != r.Sent {
		t.Errorf("per-device counts add up to %d, received %d, the links sent %d; want all equal", total, r.Received, r.Sent)
	}
	// Stopped cleanly: every link published its retained offline status.
	for i := range n {
		dev := simfleet.DeviceID(i)
		mqtttest.WaitFor(t, 10*time.Second, dev+" offline", func() bool {
			var st struct{ State string }
			json.Unmarshal(sub.Status(dev), &st)
			return st.State == "offline"
		})
	}
}

// Bad flags are usage errors (exit 2) that say what to fix, before anything connects.
func TestSimulateFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "--devices"},
		{[]string{"--devices", "0"}, "--devices"},
		{[]string{"--devices", "2", "--all"}, "--all"},
		{[]string{"--devices", "2", "--group", "a/b"}, "--group"},
		{[]string{"--devices", "2", "--results-per-sec", "-1"}, "--results-per-sec"},
		{[]string{"--devices", "2", "extra"}, "no arguments"},
	} {
		code, _, errOut := edgectl(t, append([]string{"simulate", "--broker", "tcp://127.0.0.1:1", "--config", os.DevNull}, tc.args...)...)
		if code != 2 || !strings.Contains(errOut, tc.want) {
			t.Errorf("simulate %v: exit %d, stderr %q; want 2 and a message naming %s", tc.args, code, firstLine(errOut), tc.want)
		}
	}
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return l
}

// BenchmarkSimulate runs `edgectl simulate --devices SIM_DEVICES (default 1000) --deploy
// --duration SIM_DURATION (default 20s)`, the real binary in its own process, against a
// dedicated Mosquitto, and reads its summary: the time to connect every device, the deploy's
// accepted-by-all and done-by-all times, the results rate held, the peak RSS of edgectl and of
// Mosquitto. The baseline, in the same run on a fresh broker of the same configuration: as
// many raw paho clients connecting (persistent sessions, one subscription each) and each
// answering one publish to their group, without link or router.
func BenchmarkSimulate(b *testing.B) {
	n := 1000
	if v, err := strconv.Atoi(os.Getenv("SIM_DEVICES")); err == nil && v > 0 {
		n = v
	}
	dur := "20s"
	if v := os.Getenv("SIM_DURATION"); v != "" {
		dur = v
	}
	if limit, ok := simfleet.OpenFileLimit(); ok && limit < uint64(n)+100 {
		b.Fatalf("open-file limit %d is too low for %d devices and their broker: raise it (ulimit -n %d)", limit, n, 2*n+100)
	}
	// One connection per device, a deep queue so the counting console never loses a message,
	// and no logging: Mosquitto logging every packet would be what is measured.
	conf := testenv.BrokerConfig{Extra: []string{"max_connections -1", "max_queued_messages 100000", "log_dest none"}}

	bin := filepath.Join(b.TempDir(), "edgectl")
	build := exec.Command("go", "build", "-o", bin, "./cmd/edgectl")
	build.Dir = testenv.Root(b)
	if out, err := build.CombinedOutput(); err != nil {
		b.Fatalf("go build ./cmd/edgectl: %v\n%s", err, out)
	}

	known := childPIDs("mosquitto")
	broker := testenv.MosquittoWith(b, conf)
	mosq := 0
	for pid := range childPIDs("mosquitto") {
		if !known[pid] {
			mosq = pid
		}
	}
	if mosq == 0 {
		b.Fatal("cannot find the Mosquitto process just started (its RSS is one of the figures)")
	}
	var stdout, stderr bytes.Buffer
	sim := exec.Command(bin, "simulate", "--broker", broker.URL, "--config", os.DevNull, "--devices", strconv.Itoa(n),
		"--deploy", "--duration", dur, "--json")
	sim.Stdout, sim.Stderr = &stdout, &stderr
	if err := sim.Run(); err != nil {
		b.Fatalf("edgectl simulate: %v\nstdout tail: %s\nstderr: %s", err, tail(stdout.String(), 2000), tail(stderr.String(), 4000))
	}
	mosqRSS := statusKB(mosq, "VmHWM") / 1024
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	var sum simSummary
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &sum); err != nil || sum.Event != "summary" {
		b.Fatalf("no summary from edgectl simulate (%v): %s", err, tail(stdout.String(), 2000))
	}
	d := sum.Deploy
	if sum.AllOnlineS == nil || d == nil || d.AcceptedAllS == nil || d.DoneAllS == nil || sum.PeakRSSMB == nil {
		b.Fatalf("simulate did not finish: %s", lines[len(lines)-1])
	}
	broker.Stop()

	rawConnect, rawAnswer := rawFleet(b, testenv.MosquittoWith(b, conf).URL, n)
	rawRSS := statusKB(os.Getpid(), "VmHWM") / 1024

	b.ReportMetric(float64(n), "devices")
	b.ReportMetric(*sum.AllOnlineS, "connect-s")
	b.ReportMetric(rawConnect.Seconds(), "raw-connect-s")
	b.ReportMetric(*sum.AllOnlineS/rawConnect.Seconds(), "connect-ratio")
	b.ReportMetric(*d.AcceptedAllS, "ack-s")
	b.ReportMetric(rawAnswer.Seconds(), "raw-answer-s")
	b.ReportMetric(*d.AcceptedAllS/rawAnswer.Seconds(), "ack-ratio")
	b.ReportMetric(*d.DoneAllS, "done-s")
	b.ReportMetric(sum.Results.OfferedPerSec, "offered/s")
	b.ReportMetric(sum.Results.ReceivedPerSec, "received/s")
	b.ReportMetric(sum.Results.ReceivedPerSec/sum.Results.OfferedPerSec, "held")
	b.ReportMetric(*sum.PeakRSSMB, "sim-rss-MB")
	b.ReportMetric(mosqRSS, "mosquitto-rss-MB")
	b.ReportMetric(rawRSS, "raw-rss-MB")
}

// rawFleet connects n raw paho clients at once, each with a persistent session subscribed to
// one group topic and answering what arrives there with one publish; it returns the time until
// all were connected and subscribed, and from one publish to the group until every answer
// reached a console.
func rawFleet(b *testing.B, broker string, n int) (connect, answer time.Duration) {
	var answered atomic.Int64
	all := make(chan struct{})
	console := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(broker).SetClientID("raw-console").SetCleanSession(true))
	if tok := console.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		b.Fatalf("raw console connect: %v", tok.Error())
	}
	defer console.Disconnect(100)
	sub := console.Subscribe("raw/+/cmd/reply", 1, func(mqtt.Client, mqtt.Message) {
		if answered.Add(1) == int64(n) {
			close(all)
		}
	})
	if !sub.WaitTimeout(10*time.Second) || sub.Error() != nil {
		b.Fatalf("raw console subscribe: %v", sub.Error())
	}
	clients := make([]mqtt.Client, n)
	var wg sync.WaitGroup
	var failed atomic.Int64
	start := time.Now()
	for i := range n {
		wg.Go(func() {
			id := fmt.Sprintf("raw-%d", i+1)
			c := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(broker).SetClientID(id).SetCleanSession(false).
				SetAutoReconnect(false).SetProtocolVersion(4).SetConnectTimeout(30 * time.Second).
				SetDefaultPublishHandler(func(c mqtt.Client, m mqtt.Message) { c.Publish("raw/"+id+"/cmd/reply", 1, false, m.Payload()) }))
			if tok := c.Connect(); !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
				failed.Add(1)
				return
			}
			clients[i] = c
			if tok := c.Subscribe("raw/group/g/cmd", 1, nil); !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
				failed.Add(1)
			}
		})
	}
	wg.Wait()
	connect = time.Since(start)
	defer func() {
		var dw sync.WaitGroup
		for _, c := range clients {
			if c != nil {
				dw.Go(func() { c.Disconnect(100) })
			}
		}
		dw.Wait()
	}()
	if f := failed.Load(); f > 0 {
		b.Fatalf("%d of %d raw clients could not connect and subscribe", f, n)
	}
	sent := time.Now()
	payload := bytes.Repeat([]byte("x"), 256) // about a deploy command's size
	if tok := console.Publish("raw/group/g/cmd", 1, false, payload); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		b.Fatalf("raw publish: %v", tok.Error())
	}
	select {
	case <-all:
	case <-time.After(2 * time.Minute):
		b.Fatalf("only %d of %d raw clients answered within 2 minutes", answered.Load(), n)
	}
	return connect, time.Since(sent)
}

// childPIDs returns the pids of this process's children whose command name is name.
func childPIDs(name string) map[int]bool {
	out := map[int]bool{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces, so split after its closing paren.
		s := string(b)
		lp, rp := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
		if lp < 0 || rp < lp {
			continue
		}
		f := strings.Fields(s[rp+1:])
		if len(f) < 2 {
			continue
		}
		if ppid, _ := strconv.Atoi(f[1]); ppid == os.Getpid() && s[lp+1:rp] == name {
			out[pid] = true
		}
	}
	return out
}

// statusKB reads a kB field (VmHWM, VmRSS) of /proc/<pid>/status; 0 when absent.
func statusKB(pid int, field string) float64 {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for l := range strings.SplitSeq(string(b), "\n") {
		if rest, ok := strings.CutPrefix(l, field+":"); ok {
			if f := strings.Fields(rest); len(f) > 0 {
				v, _ := strconv.ParseFloat(f[0], 64)
				return v
			}
		}
	}
	return 0
}

func tail(s string, n int) string {
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}
