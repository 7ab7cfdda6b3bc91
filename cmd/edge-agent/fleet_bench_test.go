//go:build cgo

package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/edge-agent/edge-agent/agent/outbox"
	"github.com/edge-agent/edge-agent/agent/result"
	"github.com/edge-agent/edge-agent/internal/testenv"
)

// counter counts results arriving on a topic without keeping them (1,000,000 would not fit
// the point of the benchmark).
type counter struct {
	n    atomic.Int64
	msgs atomic.Int64
}

func (c *counter) subscribe(b *testing.B, broker, topic string) mqtt.Client {
	handler := func(_ mqtt.Client, m mqtt.Message) {
		var env struct{ Count int64 }
		json.Unmarshal(m.Payload(), &env)
		c.n.Add(env.Count)
		c.msgs.Add(1)
	}
	opts := mqtt.NewClientOptions().AddBroker(broker).SetClientID("bench-counter-" + topic).SetCleanSession(true)
	cl := mqtt.NewClient(opts)
	if tok := cl.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		b.Fatalf("counter connect: %v", tok.Error())
	}
	// Subscribed before anything is published: the count starts complete.
	if tok := cl.Subscribe(topic, 1, handler); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		b.Fatalf("counter subscribe: %v", tok.Error())
	}
	return cl
}

func (c *counter) waitFor(b *testing.B, n int64, limit time.Duration, diag func() string) time.Duration {
	start := time.Now()
	for c.n.Load() < n {
		if time.Since(start) > limit {
			b.Fatalf("only %d of %d results arrived within %s; %s", c.n.Load(), n, limit, diag())
		}
		time.Sleep(5 * time.Millisecond)
	}
	return time.Since(start)
}

func procKB(pid int, field string) float64 {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, field+":") {
			v, _ := strconv.ParseFloat(strings.Fields(l)[1], 64)
			return v
		}
	}
	return 0
}

// BenchmarkBacklogDrain fills an outbox with BACKLOG (default 1,000,000) real result records,
// starts the real edge-agent binary on it while the broker is down (RSS with the backlog
// buffered), starts the broker and times the drain to a local Mosquitto at QoS 1 in messages
// of 100. The baseline, in the same run, is a raw paho loop publishing the same envelopes at
// QoS 1 with the same in-flight window (8).
func BenchmarkBacklogDrain(b *testing.B) {
	n := 1_000_000
	if v, err := strconv.Atoi(os.Getenv("BACKLOG")); err == nil && v > 0 {
		n = v
	}
	const batch, window = 100, 8
	bin := buildAgent(b)
	dir := b.TempDir()
	db := filepath.Join(dir, "outbox.db")
	rec := func(i int) []byte {
		r := result.Result{Schema: result.Schema, Device: "bench", Model: "mnist", Version: "1", TS: time.Unix(1764000000, int64(i)*1000).UTC(),
			LatencyUS: 57, Source: "digits", FrameSeq: uint64(i + 1),
			Classes: []result.Class{{Index: 7, Label: "7", Score: 0.9921875}, {Index: 3, Label: "3", Score: 0.00390625}, {Index: 9, Label: "9", Score: 0.00390625}}}
		d, _ := json.Marshal(r)
		return d
	}
	fillStart := time.Now()
	ob, err := outbox.Open(db, outbox.Options{Streams: map[string]outbox.Caps{"results": {MaxCount: n, MaxBytes: 1 << 40}, "events": {}}})
	if err != nil {
		b.Fatal(err)
	}
	st := ob.Stream("results")
	var wg sync.WaitGroup
	var next atomic.Int64
	for range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := int(next.Add(1)) - 1; i < n; i = int(next.Add(1)) - 1 {
				if _, err := st.Append(context.Background(), rec(i)); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	fill := time.Since(fillStart)
	stats := ob.Stats()
	ob.Close()

	// Phase 1: offline mode (no broker configured) with the backlog buffered.
	conf := func(mqttLine string) string {
		cfg := filepath.Join(dir, "config.yaml")
		os.WriteFile(cfg, []byte(fmt.Sprintf("device: bench\nstate_dir: %s\nstdout: false\nlog: {level: warn}\n"+
			"outbox: {path: %s, max_results: %d, max_bytes: 1GiB}\n%s", dir, db, n, mqttLine)), 0o644)
		return cfg
	}
	cmd := exec.Command(bin, "run", "--config", conf(""))
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	time.Sleep(3 * time.Second)
	rssBuffered := procKB(cmd.Process.Pid, "VmRSS")
	cmd.Process.Signal(os.Interrupt)
	cmd.Wait()

	// Phase 2: the same agent with a broker drains the backlog.
	// Mosquitto drops QoS 1 messages beyond 1000 queued for a subscriber by default; the
	// counting subscriber must see every one.
	broker := testenv.MosquittoWith(b, testenv.BrokerConfig{Extra: []string{"max_queued_messages 0", "max_inflight_messages 100"}})
	var agentCount counter
	cl := agentCount.subscribe(b, broker.URL, "edge/+/results")
	defer cl.Disconnect(100)
	cmd = exec.Command(bin, "run", "--config", conf(fmt.Sprintf("mqtt: {broker: %s, batch_max: %d, in_flight: %d}\n", broker.URL, batch, window)))
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	agentTime := agentCount.waitFor(b, int64(n), 3*time.Minute, func() string {
		cmd.Process.Signal(os.Interrupt)
		cmd.Wait()
		ob, err := outbox.Open(db, outbox.Options{Streams: map[string]outbox.Caps{"results": {}, "events": {}}})
		if err != nil {
			return err.Error()
		}
		defer ob.Close()
		js, _ := json.Marshal(ob.Stats())
		return "outbox after stopping the agent: " + string(js)
	})
	peak := procKB(cmd.Process.Pid, "VmHWM")

	// Baseline: the same envelopes straight through paho.
	envs := make([][]byte, 0, n/batch+1)
	for i := 0; i < n; i += batch {
		var sb strings.Builder
		fmt.Fprintf(&sb, `{"schema":"edge-agent/results/v1","device":"bench","first_seq":%d,"last_seq":%d,"count":%d,"results":[`, i+1, min(i+batch, n), min(batch, n-i))
		for j := i; j < min(i+batch, n); j++ {
			if j > i {
				sb.WriteByte(',')
			}
			d := rec(j)
			fmt.Fprintf(&sb, `{"seq":%d,%s`, j+1, d[1:])
		}
		sb.WriteString("]}")
		envs = append(envs, []byte(sb.String()))
	}
	var rawCount counter
	rc := rawCount.subscribe(b, broker.URL, "raw/results")
	defer rc.Disconnect(100)
	pub := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(broker.URL).SetClientID("bench-raw"))
	if tok := pub.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		b.Fatalf("raw connect: %v", tok.Error())
	}
	defer pub.Disconnect(100)
	rawStart := time.Now()
	inflight := make([]mqtt.Token, 0, window)
	for _, e := range envs {
		if len(inflight) == window {
			inflight[0].Wait()
			inflight = inflight[1:]
		}
		inflight = append(inflight, pub.Publish("raw/results", 1, false, e))
	}
	for _, tok := range inflight {
		tok.Wait()
	}
	rawCount.waitFor(b, int64(n), 3*time.Minute, func() string { return "raw paho baseline" })
	rawTime := time.Since(rawStart)

	agentRate := float64(n) / agentTime.Seconds()
	rawRate := float64(n) / rawTime.Seconds()
	b.ReportMetric(float64(n)/fill.Seconds(), "fill/s")
	b.ReportMetric(agentRate, "agent/s")
	b.ReportMetric(rawRate, "raw-paho/s")
	b.ReportMetric(agentRate/rawRate, "ratio")
	b.ReportMetric(rssBuffered/1024, "rss-buffered-MB")
	b.ReportMetric(peak/1024, "peak-rss-MB")
	b.ReportMetric(float64(stats.FileBytes)/(1<<20), "file-MB")
	b.Logf("%d results: fill %.1fs, agent drain %.2fs (%d msgs), raw paho %.2fs", n, fill.Seconds(), agentTime.Seconds(), agentCount.msgs.Load(), rawTime.Seconds())
}
