//go:build cgo

package agent_test

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/edge-agent/edge-agent/agent/deploy"
	"github.com/edge-agent/edge-agent/internal/bundletest"
	"github.com/edge-agent/edge-agent/internal/mqtttest"
	"github.com/edge-agent/edge-agent/internal/testenv"
	"github.com/edge-agent/edge-agent/models/bundle"
)

// bigBundle is a real signed sin bundle padded with incompressible notes, so that it spans
// more chunks than one need request asks for (4 KiB chunks: about 50).
func bigBundle(t *testing.T, f *bundletest.Fleet, version string, seq uint64) (string, []byte) {
	t.Helper()
	pad := make([]byte, 150<<10)
	rand.Read(pad)
	path := f.Pack(t, bundletest.Opt{Version: version, Seq: seq, Edit: func(m *bundle.Manifest) { m.Notes = base64.StdEncoding.EncodeToString(pad) }})
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return path, data
}

// pushSpec describes data in chunks of size chunk, as a deploy command's push args.
func pushSpec(data []byte, chunk int) deploy.PushSpec {
	whole := sha256.Sum256(data)
	s := deploy.PushSpec{SHA256: hex.EncodeToString(whole[:]), Size: int64(len(data)), ChunkSize: chunk}
	for off := 0; off < len(data); off += chunk {
		h := sha256.Sum256(data[off:min(off+chunk, len(data))])
		s.Chunks = append(s.Chunks, hex.EncodeToString(h[:]))
	}
	return s
}

// need is a need request as the test pusher saw it.
type need struct {
	Schema string `json:"schema"`
	Device string `json:"device"`
	ID     string `json:"id"`
	SHA256 string `json:"sha256"`
	Chunks []int  `json:"chunks"`
}

type pushJob struct {
	device string
	index  int
}

// testPusher is a plain paho client that answers the devices' need requests with chunks of
// data, except those skip says to leave out (it decides per request of a chunk, knowing how
// often that chunk was asked for, including this time).
type testPusher struct {
	t    *testing.T
	c    mqtt.Client
	data []byte
	spec deploy.PushSpec
	jobs chan pushJob // chunks to publish, in order
	done chan struct{}
	wg   sync.WaitGroup

	mu    sync.Mutex
	needs []need
	asked map[string]map[int]int // command id → chunk → times asked
	sent  int
	skip  func(index, asked, sent int) bool
}

func newTestPusher(t *testing.T, broker string, data []byte, spec deploy.PushSpec) *testPusher {
	p := &testPusher{t: t, data: data, spec: spec, jobs: make(chan pushJob, 4096), done: make(chan struct{}),
		asked: map[string]map[int]int{}, skip: func(int, int, int) bool { return false }}
	p.c = mqtt.NewClient(mqtt.NewClientOptions().AddBroker(broker).SetClientID("test-pusher").SetProtocolVersion(4))
	if tok := p.c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("pusher connect: %v", tok.Error())
	}
	// The handler runs on paho's goroutine and must not wait for a publish: it queues.
	tok := p.c.Subscribe("edge/+/bundle/need", 1, func(_ mqtt.Client, m mqtt.Message) {
		var n need
		if err := json.Unmarshal(m.Payload(), &n); err != nil {
			t.Errorf("need request is not JSON: %s", m.Payload())
			return
		}
		if want := "edge/" + n.Device + "/bundle/need"; m.Topic() != want || n.Schema != "edge-agent/bundle-need/v1" || n.SHA256 != spec.SHA256 {
			t.Errorf("need on %s: %s; want schema edge-agent/bundle-need/v1, the bundle's sha256 and topic %s", m.Topic(), m.Payload(), want)
		}
		p.mu.Lock()
		defer p.mu.Unlock()
		p.needs = append(p.needs, n)
		if p.asked[n.ID] == nil {
			p.asked[n.ID] = map[int]int{}
		}
		for _, i := range n.Chunks {
			p.asked[n.ID][i]++
			if p.skip(i, p.asked[n.ID][i], p.sent) {
				continue
			}
			p.sent++
			p.jobs <- pushJob{n.Device, i}
		}
	})
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("pusher subscribe: %v", tok.Error())
	}
	p.wg.Go(func() {
		for {
			select {
			case <-p.done:
				return
			case j := <-p.jobs:
				i := j.index
				chunk := p.data[i*spec.ChunkSize : min((i+1)*spec.ChunkSize, len(p.data))]
				payload := append([]byte(fmt.Sprintf(`{"sha256":%q,"index":%d}`+"\n", spec.SHA256, i)), chunk...)
				if tok := p.c.Publish("edge/"+j.device+"/bundle/chunk", 1, false, payload); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
					t.Errorf("publish chunk %d: %v", i, tok.Error())
				}
			}
		}
	})
	t.Cleanup(func() {
		close(p.done)
		p.wg.Wait()
		p.c.Disconnect(100)
	})
	return p
}

func (p *testPusher) setSkip(skip func(index, asked, sent int) bool) {
	p.mu.Lock()
	p.skip = skip
	p.mu.Unlock()
}

// requests returns how often each chunk was asked for by command id.
func (p *testPusher) requests(id string) map[int]int {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := map[int]int{}
	for i, n := range p.asked[id] {
		out[i] = n
	}
	return out
}

// needsOf returns the need requests of command id, in arrival order.
func (p *testPusher) needsOf(id string) []need {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []need
	for _, n := range p.needs {
		if n.ID == id {
			out = append(out, n)
		}
	}
	return out
}

const pushConfig = `
device: push-1
state_dir: %s
bundles: {trusted_keys: [%s]}
%s
probation: {inferences: 5}
mqtt: {broker: %s, backoff_min: 50ms, backoff_max: 200ms}
sources:
  - {name: sweep, kind: synthetic, rate: 200, synthetic: {wave: sine, phase: true, offset: -3.14159}}
models:
  - {name: sin, sources: [sweep]}
`

func pushArgs(t *testing.T, spec deploy.PushSpec) string {
	b, err := json.Marshal(map[string]any{"push": spec})
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func online(t *testing.T, r *running) {
	t.Helper()
	mqtttest.WaitFor(t, 20*time.Second, "the agent online", func() bool {
		return strings.Contains(fmt.Sprint(r.a.FleetStats()["mqtt"]), "online")
	})
}

// A pushed bundle whose chunk 2 is lost the first time: the device asks for it again after
// its idle time, the deploy finishes done and the new version serves. Chunk 2 is asked for
// twice or more, every other chunk once.
func TestPushedDeployResumesAfterALostChunk(t *testing.T) {
	broker := testenv.MosquittoWith(t, testenv.BrokerConfig{})
	con := newConsole(t, broker.URL)
	f := bundletest.NewFleet(t)
	_, data := bigBundle(t, f, "1.0.0", 1)
	spec := pushSpec(data, deploy.MinChunkSize)
	if len(spec.Chunks) <= 32 {
		t.Fatalf("the bundle has %d chunks; the test needs more than one need request's worth", len(spec.Chunks))
	}
	p := newTestPusher(t, broker.URL, data, spec)
	p.setSkip(func(index, asked, _ int) bool { return index == 2 && asked == 1 })
	state := t.TempDir()
	r := start(t, fmt.Sprintf(pushConfig, state, f.Pub.String(), con.keys(), broker.URL))
	online(t, r)

	con.send("edge/push-1/cmd", con.cmd("push-lost", "deploy", pushArgs(t, spec)))
	rs := con.final("push-lost")
	if last := rs[len(rs)-1]; last["status"] != "done" {
		t.Fatalf("pushed deploy: %v\nagent log:\n%s", rs, r.logs)
	}
	progress := 0
	for _, rep := range rs {
		if rep["status"] == "progress" {
			progress++
		}
	}
	if progress == 0 {
		t.Errorf("no progress replies in %v", rs)
	}
	mqtttest.WaitFor(t, 20*time.Second, "1.0.0 serving", func() bool { return serving(r) == "1.0.0" })

	asked := p.requests("push-lost")
	if asked[2] < 2 {
		t.Errorf("chunk 2 was asked for %d times; want at least twice (it was lost the first time)", asked[2])
	}
	for i := range spec.Chunks {
		if i != 2 && asked[i] != 1 {
			t.Errorf("chunk %d was asked for %d times; want once", i, asked[i])
		}
	}
	for _, n := range p.needsOf("push-lost") {
		if len(n.Chunks) > 32 || n.Device != "push-1" {
			t.Errorf("need request %+v; want at most 32 chunks, from push-1", n)
		}
	}
	if left, _ := filepath.Glob(filepath.Join(state, "downloads", "*")); len(left) != 0 {
		t.Errorf("files left in downloads after the install: %v", left)
	}
}

// The pusher stops answering after half the chunks and the agent is stopped; started again
// on the same state dir, a new deploy command for the same bundle asks only for the chunks
// it does not have, and finishes done.
func TestPushedDeployResumesAcrossRestart(t *testing.T) {
	broker := testenv.MosquittoWith(t, testenv.BrokerConfig{})
	con := newConsole(t, broker.URL)
	f := bundletest.NewFleet(t)
	_, data := bigBundle(t, f, "1.0.0", 1)
	spec := pushSpec(data, deploy.MinChunkSize)
	n := len(spec.Chunks)
	half := n / 2
	if n-half > 32 {
		t.Fatalf("the bundle has %d chunks; the rest after half must fit one need request", n)
	}
	p := newTestPusher(t, broker.URL, data, spec)
	p.setSkip(func(_, _, sent int) bool { return sent >= half })
	state := t.TempDir()
	cfg := fmt.Sprintf(pushConfig, state, f.Pub.String(), con.keys(), broker.URL)
	r := start(t, cfg)
	online(t, r)

	con.send("edge/push-1/cmd", con.cmd("push-a", "deploy", pushArgs(t, spec)))
	// The device asks again once it has gone pushAskAgain without a new chunk; a repeat
	// that lists only chunks from half on means chunks 0..half-1 are stored.
	mqtttest.WaitFor(t, 30*time.Second, "a repeated request for the chunks the pusher kept back", func() bool {
		seen := map[int]bool{}
		for _, nd := range p.needsOf("push-a") {
			repeat := false
			for _, i := range nd.Chunks {
				repeat = repeat || seen[i]
				seen[i] = true
			}
			if repeat && slices.Min(nd.Chunks) >= half {
				return true
			}
		}
		return false
	})
	r.stop()
	downloads := filepath.Join(state, "downloads")
	for _, ext := range []string{".part", ".have"} {
		if _, err := os.Stat(filepath.Join(downloads, spec.SHA256+ext)); err != nil {
			t.Fatalf("after the stop: %v; want the partial bundle kept", err)
		}
	}

	p.setSkip(func(int, int, int) bool { return false })
	r2 := start(t, cfg)
	online(t, r2)
	con.send("edge/push-1/cmd", con.cmd("push-b", "deploy", pushArgs(t, spec)))
	rs := con.final("push-b")
	if last := rs[len(rs)-1]; last["status"] != "done" {
		t.Fatalf("resumed deploy: %v\nagent log:\n%s", rs, r2.logs)
	}
	needs := p.needsOf("push-b")
	var want []int
	for i := half; i < n; i++ {
		want = append(want, i)
	}
	if len(needs) == 0 || !slices.Equal(needs[0].Chunks, want) {
		t.Errorf("first request after the restart %+v; want only the missing chunks %v", needs, want)
	}
	for i, k := range p.requests("push-b") {
		if i < half {
			t.Errorf("chunk %d, stored before the restart, was asked for again (%d times)", i, k)
		}
	}
	mqtttest.WaitFor(t, 20*time.Second, "1.0.0 serving", func() bool { return serving(r2) == "1.0.0" })
	if left, _ := filepath.Glob(filepath.Join(downloads, "*")); len(left) != 0 {
		t.Errorf("files left in downloads after the install: %v", left)
	}
}
