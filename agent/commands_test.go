//go:build cgo

package agent_test

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/edge-agent/edge-agent/agent/command"
	"github.com/edge-agent/edge-agent/internal/bundletest"
	"github.com/edge-agent/edge-agent/internal/mqtttest"
	"github.com/edge-agent/edge-agent/internal/testenv"
	"github.com/edge-agent/edge-agent/models/sign"
)

// console is the fleet side of the command tests: it signs commands with its own command key
// (a real minisign key; the agents under test trust it through commands.trusted_keys, see
// keys), publishes them and collects the replies by id.
type console struct {
	t       *testing.T
	c       mqtt.Client
	priv    sign.PrivateKey
	pub     sign.PublicKey
	mu      sync.Mutex
	replies map[string][]map[string]any
	raw     []string
}

func newConsole(t *testing.T, broker string) *console {
	k := &console{t: t, replies: map[string][]map[string]any{}}
	var err error
	if k.pub, k.priv, err = sign.GenerateKey(); err != nil {
		t.Fatal(err)
	}
	k.c = mqtt.NewClient(mqtt.NewClientOptions().AddBroker(broker).SetClientID("console-cmd").SetProtocolVersion(4))
	if tok := k.c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("console connect: %v", tok.Error())
	}
	t.Cleanup(func() { k.c.Disconnect(100) })
	tok := k.c.Subscribe("edge/+/cmd/reply", 1, func(_ mqtt.Client, m mqtt.Message) {
		var r map[string]any
		if json.Unmarshal(m.Payload(), &r) != nil {
			t.Errorf("reply is not JSON: %s", m.Payload())
			return
		}
		k.mu.Lock()
		k.raw = append(k.raw, string(m.Payload()))
		id, _ := r["id"].(string)
		k.replies[id] = append(k.replies[id], r)
		k.mu.Unlock()
	})
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("console subscribe: %v", tok.Error())
	}
	return k
}

func (k *console) send(topic, body string) {
	k.t.Helper()
	if tok := k.c.Publish(topic, 1, false, body); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		k.t.Fatalf("publish: %v", tok.Error())
	}
}

// keys is the config line that makes an agent trust the console's command key.
func (k *console) keys() string {
	return fmt.Sprintf("commands: {trusted_keys: [%s]}", k.pub.String())
}

// cmd is a command issued now, expiring in an hour, for all devices, signed by the console.
func (k *console) cmd(id, typ, args string) string {
	return k.seal(k.plain(id, typ, args, command.TargetAll))
}

// plain is the command JSON, unsigned, with target (none when "").
func (k *console) plain(id, typ, args, target string) string {
	now := time.Now().UTC()
	if args == "" {
		args = "{}"
	}
	c := command.Command{ID: id, Type: typ, Args: json.RawMessage(args), IssuedAt: now, Expires: now.Add(time.Hour), Target: target}
	b, err := json.Marshal(c)
	if err != nil {
		k.t.Fatal(err)
	}
	return string(b)
}

// seal signs body with the console's key as a command, in the envelope agents take.
func (k *console) seal(body string) string {
	return sealWith(k.t, k.priv, sign.CommandComment, body)
}

func sealWith(t *testing.T, priv sign.PrivateKey, comment, body string) string {
	t.Helper()
	sig, err := sign.Sign(priv, []byte(body), comment)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(map[string]string{"body": base64.StdEncoding.EncodeToString([]byte(body)), "sig": string(sig)})
	return string(b)
}

// final waits for the done or failed reply of id and returns every reply of it.
func (k *console) final(id string) []map[string]any {
	k.t.Helper()
	var out []map[string]any
	mqtttest.WaitFor(k.t, 30*time.Second, "the final reply to "+id, func() bool {
		k.mu.Lock()
		defer k.mu.Unlock()
		out = append([]map[string]any(nil), k.replies[id]...)
		return len(out) > 0 && (out[len(out)-1]["status"] == "done" || out[len(out)-1]["status"] == "failed")
	})
	return out
}

func (k *console) count(id string) int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return len(k.replies[id])
}

// Commands over a real broker: ping and status are answered, a deploy by URL downloads a
// signed bundle, verifies it and serves it (accepted, progress, done), a bundle whose sha256
// does not match is refused, rollback goes back, a replayed id does nothing, and malformed
// or unknown commands get failed replies while the agent keeps serving.
func TestFleetCommandsOverMQTT(t *testing.T) {
	broker := testenv.MosquittoWith(t, testenv.BrokerConfig{})
	con := newConsole(t, broker.URL)
	statuses := mqtttest.NewConsumer(t, broker.URL, "edge/+/status")
	f := bundletest.NewFleet(t)
	v1 := f.Pack(t, bundletest.Opt{Version: "1.0.0", Seq: 1})
	v2 := f.Pack(t, bundletest.Opt{Version: "1.1.0", Seq: 2})
	files := http.NewServeMux()
	for name, p := range map[string]string{"/v1": v1, "/v2": v2} {
		files.HandleFunc(name, func(w http.ResponseWriter, r *http.Request) { http.ServeFile(w, r, p) })
	}
	srv := httptest.NewServer(files)
	defer srv.Close()
	sum := func(p string) string {
		b, _ := os.ReadFile(p)
		s := sha256.Sum256(b)
		return hex.EncodeToString(s[:])
	}
	r := start(t, fmt.Sprintf(`
device: cmd-1
state_dir: %s
bundles: {trusted_keys: [%s]}
%s
probation: {inferences: 5}
mqtt: {broker: %s, groups: [kitchen], backoff_min: 50ms, backoff_max: 200ms}
sources:
  - {name: sweep, kind: synthetic, rate: 200, synthetic: {wave: sine, phase: true, offset: -3.14159}}
models:
  - {name: sin, sources: [sweep]}
`, t.TempDir(), f.Pub.String(), con.keys(), broker.URL))
	mqtttest.WaitFor(t, 20*time.Second, "the agent online", func() bool {
		return strings.Contains(fmt.Sprint(r.a.FleetStats()["mqtt"]), "online")
	})

	con.send("edge/cmd-1/cmd", con.cmd("p1", "ping", ""))
	if rs := con.final("p1"); rs[0]["status"] != "accepted" || rs[len(rs)-1]["status"] != "done" {
		t.Fatalf("ping replies %v; want accepted then done", rs)
	}
	for i, v := range []string{"/v1", "/v2"} {
		id := fmt.Sprintf("d%d", i+1)
		con.send("edge/group/kitchen/cmd", con.cmd(id, "deploy", fmt.Sprintf(`{"url":%q,"sha256":%q}`, srv.URL+v, sum(map[string]string{"/v1": v1, "/v2": v2}[v]))))
		rs := con.final(id)
		if last := rs[len(rs)-1]; last["status"] != "done" {
			t.Fatalf("deploy %s: %v", v, rs)
		}
	}
	mqtttest.WaitFor(t, 20*time.Second, "1.1.0 serving", func() bool { return serving(r) == "1.1.0" })
	// The retained status follows the new version at once, not at the next status_every (60s).
	mqtttest.WaitFor(t, 10*time.Second, "the retained status listing sin 1.1.0", func() bool {
		return strings.Contains(string(statuses.Status("cmd-1")), `{"name":"sin","version":"1.1.0"}`)
	})

	con.send("edge/all/cmd", con.cmd("bad-sum", "deploy", fmt.Sprintf(`{"url":%q,"sha256":%q}`, srv.URL+"/v1", strings.Repeat("0", 64))))
	if rs := con.final("bad-sum"); !strings.Contains(fmt.Sprint(rs[len(rs)-1]["reason"]), "sha256") {
		t.Errorf("deploy with a wrong sha256: %v; want failed naming the sha256", rs)
	}
	con.send("edge/cmd-1/cmd", con.cmd("rb", "rollback", `{"model":"sin"}`))
	if rs := con.final("rb"); rs[len(rs)-1]["status"] != "done" {
		t.Fatalf("rollback: %v", rs)
	}
	mqtttest.WaitFor(t, 20*time.Second, "1.0.0 serving again", func() bool { return serving(r) == "1.0.0" })

	// A replay of an id already carried out: no reply, nothing done.
	before := con.count("rb")
	con.send("edge/cmd-1/cmd", con.cmd("rb", "rollback", `{"model":"sin"}`))
	con.send("edge/cmd-1/cmd", con.cmd("s1", "status", ""))
	status := con.final("s1")
	if con.count("rb") != before {
		t.Errorf("a replayed command id got %d more replies; want none", con.count("rb")-before)
	}
	if res, _ := status[len(status)-1]["result"].(map[string]any); res == nil || res["board"] == nil {
		t.Errorf("status result %v; want the device's status", status[len(status)-1])
	}
	// A/B: a split with weight 1 sends the (only) source to the candidate, tagged b; abort
	// returns to the active version alone. Shadow runs the candidate on every frame without
	// publishing it: the same model file, so the outputs agree exactly. Promote activates it.
	con.send("edge/cmd-1/cmd", con.cmd("ab1", "ab", `{"model":"sin","version":"1.1.0","mode":"split","weight":1}`))
	if rs := con.final("ab1"); rs[len(rs)-1]["status"] != "done" {
		t.Fatalf("ab split: %v", rs)
	}
	mark := len(r.sink.byModel("sin"))
	waitFor(t, "results of the candidate tagged b", func() bool {
		rs := r.sink.byModel("sin")
		return len(rs) > mark+20 && rs[len(rs)-1].Variant == "b" && rs[len(rs)-1].Version == "1.1.0"
	})
	con.send("edge/cmd-1/cmd", con.cmd("ab2", "abort", `{"model":"sin"}`))
	if rs := con.final("ab2"); rs[len(rs)-1]["status"] != "done" {
		t.Fatalf("abort: %v", rs)
	}
	mark = len(r.sink.byModel("sin"))
	waitFor(t, "untagged results of 1.0.0 again", func() bool {
		rs := r.sink.byModel("sin")
		return len(rs) > mark+20 && rs[len(rs)-1].Variant == "" && rs[len(rs)-1].Version == "1.0.0"
	})
	con.send("edge/cmd-1/cmd", con.cmd("ab3", "ab", `{"model":"sin","version":"1.1.0","mode":"shadow"}`))
	if rs := con.final("ab3"); rs[len(rs)-1]["status"] != "done" {
		t.Fatalf("ab shadow: %v", rs)
	}
	waitFor(t, "50 shadow comparisons", func() bool {
		for _, st := range r.a.Pipeline().Stats() {
			if x := st.Experiment; x != nil && x.Compared >= 50 {
				return true
			}
		}
		return false
	})
	for _, res := range r.sink.byModel("sin")[mark:] {
		if res.Version != "1.0.0" {
			t.Fatalf("a shadow candidate's result was published: %+v", res)
		}
	}
	x := r.a.Pipeline().Stats()[0].Experiment
	if x.Mode != "shadow" || x.MeanAbsDiff != 0 || x.B.Errors != 0 || x.B.Results < 50 {
		t.Errorf("shadow of the same model file: %+v; want identical outputs (mean abs diff 0)", x)
	}
	con.send("edge/cmd-1/cmd", con.cmd("ab4", "promote", `{"model":"sin"}`))
	if rs := con.final("ab4"); rs[len(rs)-1]["status"] != "done" {
		t.Fatalf("promote: %v", rs)
	}
	mqtttest.WaitFor(t, 20*time.Second, "1.1.0 serving after promote", func() bool { return serving(r) == "1.1.0" })
	if r.a.Pipeline().Stats()[0].Experiment != nil {
		t.Error("the experiment is still running after promote")
	}

	for id, body := range map[string]string{
		"u1": con.cmd("u1", "reboot-the-moon", ""),
		"e1": con.seal(`{"id":"e1","type":"ping","issued_at":"2020-01-01T00:00:00Z","expires":"2020-01-01T01:00:00Z","target":"all"}`),
	} {
		con.send("edge/cmd-1/cmd", body)
		if rs := con.final(id); rs[len(rs)-1]["status"] != "failed" || rs[len(rs)-1]["reason"] == "" {
			t.Errorf("%s: %v; want failed with a reason", id, rs)
		}
	}
	con.send("edge/cmd-1/cmd", `{not json`)
	n := len(r.sink.byModel("sin"))
	waitFor(t, "the agent still serving", func() bool { return len(r.sink.byModel("sin")) > n+20 })
}
