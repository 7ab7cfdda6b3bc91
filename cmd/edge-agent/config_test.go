//go:build cgo

package main

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/edge-agent/edge-agent/agent/command"
	"github.com/edge-agent/edge-agent/agent/config"
	"github.com/edge-agent/edge-agent/internal/mqtttest"
	"github.com/edge-agent/edge-agent/internal/testenv"
	"github.com/edge-agent/edge-agent/models/sign"
)

// cfgConsole sends commands to one device, signed with its own command key (real minisign;
// the agent trusts it through line()), and keeps the final replies and the metrics count.
type cfgConsole struct {
	t       *testing.T
	c       mqtt.Client
	priv    sign.PrivateKey
	pub     sign.PublicKey
	mu      sync.Mutex
	final   map[string]map[string]any
	metrics atomic.Int64
}

func newCfgConsole(t *testing.T, broker, device string) *cfgConsole {
	k := &cfgConsole{t: t, final: map[string]map[string]any{}}
	var err error
	if k.pub, k.priv, err = sign.GenerateKey(); err != nil {
		t.Fatal(err)
	}
	k.c = mqtt.NewClient(mqtt.NewClientOptions().AddBroker(broker).SetClientID("cfg-console").SetProtocolVersion(4))
	if tok := k.c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("console connect: %v", tok.Error())
	}
	t.Cleanup(func() { k.c.Disconnect(100) })
	subs := map[string]mqtt.MessageHandler{
		"edge/" + device + "/cmd/reply": func(_ mqtt.Client, m mqtt.Message) {
			var r map[string]any
			if json.Unmarshal(m.Payload(), &r) == nil && (r["status"] == "done" || r["status"] == "failed") {
				k.mu.Lock()
				k.final[r["id"].(string)] = r
				k.mu.Unlock()
			}
		},
		"edge/" + device + "/metrics": func(mqtt.Client, mqtt.Message) { k.metrics.Add(1) },
	}
	for topic, h := range subs {
		if tok := k.c.Subscribe(topic, 1, h); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("subscribe %s: %v", topic, tok.Error())
		}
	}
	return k
}

// line is the agent config line that trusts the console's command key.
func (k *cfgConsole) line() string { return "commands: {trusted_keys: [" + k.pub.String() + "]}\n" }

// run sends a signed command addressed to device and returns its final reply.
func (k *cfgConsole) run(device, id, typ, args string) map[string]any {
	k.t.Helper()
	now := time.Now().UTC()
	body, err := json.Marshal(command.Command{ID: id, Type: typ, Args: json.RawMessage(args), IssuedAt: now, Expires: now.Add(time.Hour), Target: command.ForDevice(device)})
	if err != nil {
		k.t.Fatal(err)
	}
	sig, err := sign.Sign(k.priv, body, sign.CommandComment)
	if err != nil {
		k.t.Fatal(err)
	}
	env, _ := json.Marshal(map[string]string{"body": base64.StdEncoding.EncodeToString(body), "sig": string(sig)})
	if tok := k.c.Publish("edge/"+device+"/cmd", 1, false, env); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		k.t.Fatalf("publish: %v", tok.Error())
	}
	var r map[string]any
	mqtttest.WaitFor(k.t, 60*time.Second, "the final reply to "+id, func() bool {
		k.mu.Lock()
		defer k.mu.Unlock()
		r = k.final[id]
		return r != nil
	})
	return r
}

func effective(t *testing.T, r map[string]any, key string) string {
	t.Helper()
	res, _ := r["result"].(map[string]any)
	eff, _ := res["effective"].(map[string]any)
	if eff == nil {
		t.Fatalf("config reply without effective settings: %v", r)
	}
	return fmt.Sprint(eff[key])
}

// The config command on the real binary: a live setting (log.level) changes at once without a
// reload; a setting read at start (mqtt.metrics_every) is kept, makes the agent reload in the
// same process and takes effect; refusals change nothing; the settings survive a restart of
// the process, and unset goes back to the file's values.
func TestConfigCommandPersistsAndReloads(t *testing.T) {
	bin := buildAgent(t)
	broker := testenv.MosquittoWith(t, testenv.BrokerConfig{})
	state := t.TempDir()
	k := newCfgConsole(t, broker.URL, "cfg-1")
	cfg := filepath.Join(t.TempDir(), "config.yaml")
	os.WriteFile(cfg, []byte(`device: cfg-1
state_dir: `+state+`
stdout: false
`+k.line()+`mqtt: {broker: `+broker.URL+`, backoff_min: 50ms, backoff_max: 200ms}
sources:
  - {name: sweep, kind: synthetic, rate: 50, synthetic: {wave: sine, phase: true, offset: -3.14159}}
models:
  - {name: sin, path: `+testenv.Data(t, "sin_model.tflite")+`, sources: [sweep], output: {kind: regression, regression: {names: [y]}}}
`), 0o644)
	startAgent := func() (*exec.Cmd, *testenv.LockedBuffer) {
		cmd := exec.Command(bin, "run", "--config", cfg)
		logs := &testenv.LockedBuffer{}
		cmd.Stderr = logs
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		return cmd, logs
	}
	statuses := mqtttest.NewConsumer(t, broker.URL, "edge/+/status")
	cmd, logs := startAgent()
	// Commands sent before the device's first session subscribed would have no taker.
	mqtttest.WaitFor(t, 20*time.Second, "the device online", func() bool {
		return strings.Contains(string(statuses.Status("cfg-1")), `"state":"online"`)
	})

	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("agent log:\n%s", logs)
		}
	})
	if r := k.run("cfg-1", "p1", "ping", "{}"); r["status"] != "done" {
		t.Fatalf("ping: %v", r)
	}
	if strings.Contains(logs.String(), "level=DEBUG") {
		t.Fatalf("debug lines at level info:\n%s", logs)
	}
	r := k.run("cfg-1", "c1", "config", `{"set":{"log.level":"debug"}}`)
	if res, _ := r["result"].(map[string]any); r["status"] != "done" || res["reload"] != false || fmt.Sprint(res["applied_now"]) != "[log.level]" {
		t.Fatalf("config log.level: %v; want done, applied now, no reload", r)
	}
	k.run("cfg-1", "p2", "ping", "{}")
	mqtttest.WaitFor(t, 10*time.Second, "a debug line for ping p2", func() bool {
		return strings.Contains(logs.String(), `level=DEBUG msg="command accepted" id=p2`)
	})
	if strings.Count(logs.String(), "edge-agent starting") != 1 {
		t.Fatalf("a live setting restarted the agent:\n%s", logs)
	}

	before, _ := os.ReadFile(config.OverridesFile(state))
	for id, args := range map[string]string{
		"bad1": `{"set":{"mqtt.broker":"tcp://elsewhere:1883"}}`,
		"bad2": `{"set":{"outbox.policy":"keep-everything"}}`,
		"bad3": `{"set":{"mqtt.metrics_every":"soon"}}`,
		"bad4": `{"unset":["device"]}`,
		"bad5": `{"set":{"mqtt.batch_max":0}}`,
	} {
		if r := k.run("cfg-1", id, "config", args); r["status"] != "failed" || r["reason"] == "" {
			t.Errorf("%s %s: %v; want failed with a reason", id, args, r)
		}
	}
	if after, _ := os.ReadFile(config.OverridesFile(state)); string(after) != string(before) {
		t.Errorf("refused config commands changed the overrides file:\n%s\n→\n%s", before, after)
	}

	r = k.run("cfg-1", "c2", "config", `{"set":{"mqtt.metrics_every":"1s"}}`)
	if res, _ := r["result"].(map[string]any); r["status"] != "done" || res["reload"] != true {
		t.Fatalf("config metrics_every: %v; want done with reload", r)
	}
	mqtttest.WaitFor(t, 30*time.Second, "the agent started again", func() bool {
		return strings.Count(logs.String(), "edge-agent starting") == 2
	})
	k.run("cfg-1", "p3", "ping", "{}")
	m0 := k.metrics.Load()
	mqtttest.WaitFor(t, 20*time.Second, "3 metrics messages (every 1s now, 30s before)", func() bool { return k.metrics.Load() >= m0+3 })
	if r := k.run("cfg-1", "c3", "config", "{}"); effective(t, r, "mqtt.metrics_every") != "1s" || effective(t, r, "log.level") != "debug" {
		t.Errorf("settings after the reload: %v", r)
	}

	// A restart of the process keeps them.
	cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("agent exit: %v\n%s", err, logs)
	}
	_, logs = startAgent()
	if r := k.run("cfg-1", "c4", "config", "{}"); effective(t, r, "mqtt.metrics_every") != "1s" {
		t.Errorf("settings after a restart: %v", r)
	}
	if !strings.Contains(logs.String(), "fleet settings applied") {
		t.Errorf("the restarted agent did not log the fleet settings:\n%s", logs)
	}
	r = k.run("cfg-1", "c5", "config", `{"unset":["mqtt.metrics_every","log.level"]}`)
	if effective(t, r, "mqtt.metrics_every") != "30s" || effective(t, r, "log.level") != "info" {
		t.Errorf("after unset: %v; want the file's values back", r)
	}
}
