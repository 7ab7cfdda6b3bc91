//go:build cgo

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edge-agent/edge-agent/agent"
	"github.com/edge-agent/edge-agent/agent/config"
	"github.com/edge-agent/edge-agent/internal/bundletest"
	"github.com/edge-agent/edge-agent/internal/testenv"

	_ "github.com/edge-agent/edge-agent/hal/sensor/all"
	"github.com/edge-agent/edge-agent/models/sign"
)

// syncBuffer is an agent log the test can print when it fails.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// commandKey is a fleet command key for a test: agents trust Pub (the config line Line),
// and edgectl signs with the secret key through the settings file Conn names.
type commandKey struct {
	Priv sign.PrivateKey
	Pub  sign.PublicKey
	Path string // the secret key file (unencrypted)
}

func newCommandKey(t *testing.T) *commandKey {
	t.Helper()
	pub, priv, err := sign.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	k := &commandKey{Priv: priv, Pub: pub, Path: filepath.Join(t.TempDir(), "command.key")}
	if err := sign.WritePrivateKey(k.Path, priv, nil); err != nil {
		t.Fatal(err)
	}
	return k
}

// Line is the agent config line that trusts the key for commands.
func (k *commandKey) Line() string { return "commands: {trusted_keys: [" + k.Pub.String() + "]}" }

// Conn returns the connection flags for broker with an edgectl settings file whose sign_key
// is this key, so every command edgectl sends is signed as an operator's would be.
func (k *commandKey) Conn(t *testing.T, broker string) []string {
	t.Helper()
	file := filepath.Join(t.TempDir(), "edgectl.yaml")
	writeFile(t, file, "sign_key: "+k.Path+"\n")
	return []string{"--broker", broker, "--config", file}
}

// startAgent runs a real agent in-process until the test ends.
func startAgent(t *testing.T, yml string) *agent.Agent {
	t.Helper()
	cfg, err := config.Parse([]byte(yml), t.TempDir())
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	f := false
	cfg.Stdout = &f
	logs := &syncBuffer{}
	a, err := agent.New(cfg, agent.Options{Logger: slog.New(slog.NewTextHandler(logs, nil)), HealthEvery: 50 * time.Millisecond})
	if err != nil {
		t.Fatalf("agent.New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			t.Error("agent did not stop within 20s")
		}
		if t.Failed() {
			t.Logf("agent %s log:\n%s", cfg.Device, logs.String())
		}
	})
	return a
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	testenv.Eventually(t, 20*time.Second, 20*time.Millisecond, func() string { return what }, cond)
}

// jsonLines decodes every JSON object line of out.
func jsonLines(t *testing.T, out string) []map[string]any {
	t.Helper()
	var rs []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		if l == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("line %q is not JSON: %v\nwhole output:\n%s", l, err, out)
		}
		rs = append(rs, m)
	}
	return rs
}

// lastStatus returns each device's last reply status in the JSON lines.
func lastStatus(rs []map[string]any) map[string]map[string]any {
	last := map[string]map[string]any{}
	for _, r := range rs {
		if d, ok := r["device"].(string); ok && r["status"] != nil {
			last[d] = r
		}
	}
	return last
}

// The fleet console against a real Mosquitto and two real agents in group g: ping, a group
// deploy with progress, the fleet status, a deploy with a wrong sha256, and live results.
func TestFleetConsole(t *testing.T) {
	broker := testenv.MosquittoWith(t, testenv.BrokerConfig{})
	f := bundletest.NewFleet(t)
	ck := newCommandKey(t)
	v1 := f.Pack(t, bundletest.Opt{Version: "1.0.0", Seq: 1})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { http.ServeFile(w, r, v1) }))
	defer srv.Close()
	agents := map[string]*agent.Agent{}
	for _, dev := range []string{"dev-a", "dev-b"} {
		agents[dev] = startAgent(t, fmt.Sprintf(`
device: %s
state_dir: %s
bundles: {trusted_keys: [%s]}
%s
probation: {inferences: 5}
mqtt: {broker: %s, groups: [g], backoff_min: 50ms, backoff_max: 200ms, status_every: 1s}
sources:
  - {name: sweep, kind: synthetic, rate: 200, synthetic: {wave: sine, phase: true, offset: -3.14159}}
models:
  - {name: sin, sources: [sweep]}
`, dev, t.TempDir(), f.Pub.String(), ck.Line(), broker.URL))
	}
	for dev, a := range agents {
		eventually(t, dev+" online", func() bool { return strings.Contains(fmt.Sprint(a.FleetStats()["mqtt"]), "online") })
	}
	conn := ck.Conn(t, broker.URL)

	t.Run("ping", func(t *testing.T) {
		code, out, errOut := edgectl(t, append([]string{"cmd", "--device", "dev-a", "ping", "--json"}, conn...)...)
		if code != 0 {
			t.Fatalf("exit %d; want 0\nstdout: %s\nstderr: %s", code, out, errOut)
		}
		rs := jsonLines(t, out)
		if len(rs) < 2 || rs[0]["status"] != "accepted" || rs[len(rs)-1]["status"] != "done" || rs[0]["device"] != "dev-a" {
			t.Fatalf("replies %v; want accepted then done from dev-a", rs)
		}
	})

	t.Run("deploy to a group", func(t *testing.T) {
		// The bundle file gives the sha256; the devices fetch it from --url.
		code, out, errOut := edgectl(t, append([]string{"deploy", "--group", "g", "--url", srv.URL + "/v1", "--wait-for", "2", "--timeout", "40s", v1}, conn...)...)
		if code != 0 {
			t.Fatalf("exit %d; want 0\nstdout: %s\nstderr: %s", code, out, errOut)
		}
		if !strings.Contains(out, "dev-a") || !strings.Contains(out, "dev-b") || !strings.Contains(out, "2 done, 0 failed") {
			t.Errorf("deploy output does not show both devices done:\n%s", out)
		}
		for dev, a := range agents {
			eventually(t, dev+" serving 1.0.0", func() bool {
				s := a.Pipeline().Serving("sin")
				return s != nil && s.Version == "1.0.0"
			})
		}
	})

	t.Run("status", func(t *testing.T) {
		var devs []map[string]any
		eventually(t, "both devices online with sin@1.0.0", func() bool {
			code, out, errOut := edgectl(t, append([]string{"status", "--json", "--settle", "300ms"}, conn...)...)
			if code != 0 {
				t.Fatalf("exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
			}
			if err := json.Unmarshal([]byte(out), &devs); err != nil {
				t.Fatalf("status --json: %v\n%s", err, out)
			}
			n := 0
			for _, d := range devs {
				if d["state"] == "online" && strings.Contains(fmt.Sprint(d["models"]), "sin") && strings.Contains(fmt.Sprint(d["models"]), "1.0.0") {
					n++
				}
			}
			return n == 2
		})
		_, out, _ := edgectl(t, append([]string{"status", "--settle", "300ms"}, conn...)...)
		if !strings.Contains(out, "dev-a") || !strings.Contains(out, "sin@1.0.0") || !strings.Contains(out, "online") {
			t.Errorf("status table:\n%s\nwant dev-a online with sin@1.0.0", out)
		}
	})

	t.Run("wrong sha256", func(t *testing.T) {
		code, out, errOut := edgectl(t, append([]string{"deploy", "--device", "dev-b", "--url", srv.URL + "/v1", "--sha256", strings.Repeat("0", 64)}, conn...)...)
		if code != 1 {
			t.Fatalf("exit %d; want 1\nstdout: %s\nstderr: %s", code, out, errOut)
		}
		if !strings.Contains(out, "failed") || !strings.Contains(out, "sha256") {
			t.Errorf("output does not give the failure reason:\n%s", out)
		}
	})

	t.Run("watch results", func(t *testing.T) {
		code, out, errOut := edgectl(t, append([]string{"watch", "--results", "--count", "10", "--json", "--timeout", "30s"}, conn...)...)
		if code != 0 {
			t.Fatalf("exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
		}
		rs := jsonLines(t, out)
		if len(rs) != 10 {
			t.Fatalf("got %d records; want 10:\n%s", len(rs), out)
		}
		for _, r := range rs {
			if r["model"] != "sin" || r["seq"] == nil {
				t.Errorf("record %v; want a result of model sin with a seq", r)
			}
		}
	})

	t.Run("signed commands", func(t *testing.T) {
		// dev-s is configured as recommended: a command key apart from the bundle key.
		signed := startAgent(t, fmt.Sprintf(`
device: dev-s
state_dir: %s
bundles: {trusted_keys: [%s]}
%s
mqtt: {broker: %s, backoff_min: 50ms, backoff_max: 200ms}
`, t.TempDir(), f.Pub.String(), ck.Line(), broker.URL))
		eventually(t, "dev-s online", func() bool { return strings.Contains(fmt.Sprint(signed.FleetStats()["mqtt"]), "online") })
		bundleKey := filepath.Join(t.TempDir(), "bundle.key")
		if err := sign.WritePrivateKey(bundleKey, f.Priv, nil); err != nil {
			t.Fatal(err)
		}
		code, out, errOut := edgectl(t, append([]string{"ping", "--device", "dev-s", "--timeout", "10s", "--unsigned"}, conn...)...)
		if code != 1 || !strings.Contains(out+errOut, "not signed") {
			t.Errorf("unsigned ping: exit %d, %q %q; want 1 and a reason about signing", code, out, errOut)
		}
		code, out, errOut = edgectl(t, "ping", "--device", "dev-s", "--timeout", "10s", "--broker", broker.URL, "--config", os.DevNull, "--sign-key", bundleKey)
		if code != 1 || !strings.Contains(out+errOut, "untrusted key") {
			t.Errorf("ping signed with the bundle key: exit %d, %q %q; want 1, untrusted key", code, out, errOut)
		}
		code, out, errOut = edgectl(t, "ping", "--device", "dev-s", "--timeout", "10s", "--broker", broker.URL, "--config", os.DevNull)
		if code != 1 || !strings.Contains(errOut, "no command key") || !strings.Contains(errOut, "--sign-key") {
			t.Errorf("ping without any key: exit %d, %q; want 1 saying how to give the command key", code, errOut)
		}
		code, out, errOut = edgectl(t, append([]string{"ping", "--device", "dev-s", "--json"}, conn...)...)
		if rs := jsonLines(t, out); code != 0 || len(rs) < 2 || rs[len(rs)-1]["status"] != "done" {
			t.Errorf("signed ping: exit %d, %q %q; want done", code, out, errOut)
		}
	})

	t.Run("experiment", func(t *testing.T) {
		v2 := f.Pack(t, bundletest.Opt{Version: "1.1.0", Seq: 2})
		srv2 := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { http.ServeFile(w, r, v2) }))
		defer srv2.Close()
		run := func(want int, args ...string) string {
			t.Helper()
			code, out, errOut := edgectl(t, append(args, conn...)...)
			if code != want {
				t.Fatalf("edgectl %v: exit %d; want %d\n%s\n%s", args, code, want, out, errOut)
			}
			return out
		}
		run(0, "deploy", "--device", "dev-a", "--url", srv2.URL, v2)
		if code, _, _ := edgectl(t, append([]string{"ab", "--device", "dev-a", "sin", "1.0.0"}, conn...)...); code == 0 {
			t.Error("ab without --weight or --shadow succeeded")
		}
		run(0, "ab", "--device", "dev-a", "sin", "1.0.0", "--shadow")
		eventually(t, "shadow comparisons on dev-a", func() bool {
			st := agents["dev-a"].Pipeline().Stats()[0]
			return st.Experiment != nil && st.Experiment.Mode == "shadow" && st.Experiment.Compared > 10
		})
		run(0, "abort", "--device", "dev-a", "sin")
		run(0, "ab", "--device", "dev-a", "sin", "1.0.0", "--weight", "0.5", "--json")
		if x := agents["dev-a"].Pipeline().Stats()[0].Experiment; x == nil || x.Mode != "split" || x.Weight != 0.5 {
			t.Fatalf("experiment after ab --weight 0.5: %+v", x)
		}
		run(0, "promote", "--device", "dev-a", "sin")
		eventually(t, "dev-a serving the promoted 1.0.0", func() bool {
			st := agents["dev-a"].Pipeline().Stats()[0]
			return st.Version == "1.0.0" && st.Experiment == nil
		})
		run(1, "abort", "--device", "dev-a", "sin") // nothing to abort any more
	})

	t.Run("no such device", func(t *testing.T) {
		code, _, errOut := edgectl(t, append([]string{"ping", "--device", "nobody", "--timeout", "500ms"}, conn...)...)
		if code != 1 || !strings.Contains(errOut, "no device replied") {
			t.Errorf("exit %d, stderr %q; want 1 saying no device replied", code, errOut)
		}
	})
}

// Settings come from the flag, else the environment, else the config file.
func TestSettingsPrecedence(t *testing.T) {
	file := filepath.Join(t.TempDir(), "config.yaml")
	writeFile(t, file, "broker: tcp://file:1883\nusername: file-user\npassword: file-pw\nprefix: fleet\nca_file: /file/ca.pem\n")
	env := map[string]string{"EDGECTL_BROKER": "tcp://env:1883", "EDGECTL_USERNAME": "env-user"}
	getenv := func(k string) string { return env[k] }
	for _, tc := range []struct {
		args []string
		want settings
	}{
		{[]string{"--config", file}, settings{Broker: "tcp://env:1883", Username: "env-user", Password: "file-pw", Prefix: "fleet", CAFile: "/file/ca.pem"}},
		{[]string{"--config", file, "--broker", "tcp://flag:1883", "--password", "flag-pw"},
			settings{Broker: "tcp://flag:1883", Username: "env-user", Password: "flag-pw", Prefix: "fleet", CAFile: "/file/ca.pem"}},
		{[]string{"--config", os.DevNull, "--username", "u"}, settings{Broker: "tcp://env:1883", Username: "u", Prefix: "edge"}},
	} {
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		c := addConnFlags(fs)
		if err := fs.Parse(tc.args); err != nil {
			t.Fatal(err)
		}
		got, err := c.resolve(getenv)
		if err != nil {
			t.Fatalf("%v: %v", tc.args, err)
		}
		if got != tc.want {
			t.Errorf("%v: got %+v; want %+v", tc.args, got, tc.want)
		}
	}

	// The default file under $HOME is read when it exists; an explicit missing file is an error.
	home := t.TempDir()
	os.MkdirAll(filepath.Join(home, ".config", "edgectl"), 0o755)
	writeFile(t, filepath.Join(home, ".config", "edgectl", "config.yaml"), "broker: tcp://home:1883\n")
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	c := addConnFlags(fs)
	fs.Parse(nil)
	if got, err := c.resolve(func(k string) string { return map[string]string{"HOME": home}[k] }); err != nil || got.Broker != "tcp://home:1883" {
		t.Errorf("default config file: %+v, %v; want broker tcp://home:1883", got, err)
	}
	fs = flag.NewFlagSet("t", flag.ContinueOnError)
	c = addConnFlags(fs)
	fs.Parse([]string{"--config", filepath.Join(home, "missing.yaml")})
	if _, err := c.resolve(getenv); err == nil || !strings.Contains(err.Error(), "--config") {
		t.Errorf("missing --config file: %v; want an error naming --config", err)
	}
	fs = flag.NewFlagSet("t", flag.ContinueOnError)
	c = addConnFlags(fs)
	fs.Parse([]string{"--config", os.DevNull})
	if _, err := c.resolve(func(string) string { return "" }); err == nil || !strings.Contains(err.Error(), "--broker") {
		t.Errorf("no broker anywhere: %v; want an error naming --broker", err)
	}
}
