//go:build cgo

package agent_test

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/edge-agent/edge-agent/agent/command"
	"github.com/edge-agent/edge-agent/internal/bundletest"
	"github.com/edge-agent/edge-agent/internal/mqtttest"
	"github.com/edge-agent/edge-agent/internal/testenv"
	"github.com/edge-agent/edge-agent/models/sign"
)

// lastReply is the final reply of id, as a string for matching.
func lastReply(con *console, id string) (status, reason string) {
	rs := con.final(id)
	last := rs[len(rs)-1]
	return fmt.Sprint(last["status"]), fmt.Sprint(last["reason"])
}

// onlineWithStatus starts the agent of yml with a status server and waits until it is online
// and its page answers; it returns the page's base URL.
func onlineWithStatus(t *testing.T, yml string) (*running, string) {
	t.Helper()
	addr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	r := start(t, yml+"\nstatus: {listen: \""+addr+"\"}\n")
	mqtttest.WaitFor(t, 20*time.Second, "the agent online", func() bool {
		return strings.Contains(fmt.Sprint(r.a.FleetStats()["mqtt"]), "online")
	})
	url := "http://" + addr
	waitFor(t, "the status server", func() bool {
		resp, err := http.Get(url + "/healthz")
		if err == nil {
			resp.Body.Close()
		}
		return err == nil
	})
	return r, url
}

func page(t *testing.T, url string) string {
	t.Helper()
	_, b := httpGet(t, url+"/")
	return string(b)
}

// The default config (no key, commands.require_signed unset) takes no command: the audit's
// anonymous rollback, config set and capture, and a command signed by a key the device
// does not know, are all refused and change nothing; the device says so at start, on the
// status page, in /v1/status, in its health and in the retained status.
func TestDefaultConfigTakesNoCommand(t *testing.T) {
	broker := testenv.MosquittoWith(t, testenv.BrokerConfig{})
	con := newConsole(t, broker.URL)
	statuses := mqtttest.NewConsumer(t, broker.URL, "edge/+/status")
	state := t.TempDir()
	r, url := onlineWithStatus(t, fmt.Sprintf(`
device: sec-1
state_dir: %s
mqtt: {broker: %s, backoff_min: 50ms, backoff_max: 200ms}
`+statusModel, state, broker.URL))

	con.send("edge/sec-1/cmd", con.plain("rb", "rollback", `{"model":"mnist"}`, ""))
	con.send("edge/sec-1/cmd", con.plain("cfg", "config", `{"set":{"probation.max_error_rate":"1","outbox.max_results":"1"}}`, ""))
	con.send("edge/sec-1/cmd", con.plain("cap", "capture", `{"model":"mnist","count":1}`, ""))
	con.send("edge/sec-1/cmd", con.cmd("signed", "ping", ""))
	for _, id := range []string{"rb", "cfg", "cap", "signed"} {
		if st, why := lastReply(con, id); st != "failed" || !strings.Contains(why, "trusts no command key, so it takes no command") || !strings.Contains(why, "commands.trusted_keys") {
			t.Errorf("%s: %s %q; want failed, saying how to configure commands.trusted_keys", id, st, why)
		}
	}
	if _, err := os.Stat(filepath.Join(state, "config-overrides.json")); !os.IsNotExist(err) {
		t.Errorf("config overrides written by a refused command (stat: %v)", err)
	}
	if !strings.Contains(r.logs.String(), "security/no-command-key") {
		t.Errorf("no start-up warning about the missing command key in the log:\n%s", r.logs.String())
	}
	v := getStatus(t, url)
	if v.Security.Commands != "no key" || !strings.Contains(v.Security.Detail, "commands.trusted_keys") {
		t.Errorf("/v1/status security = %+v; want commands \"no key\" and how to add one", v.Security)
	}
	if p := page(t, url); !strings.Contains(p, `id="commands">no key<`) || !strings.Contains(p, "commands.trusted_keys") {
		t.Errorf("status page does not show the missing command key")
	}
	if c, ok := r.a.Health().Get("security/no-command-key"); !ok || !strings.Contains(c.Message, "commands.trusted_keys") {
		t.Errorf("health condition security/no-command-key = %+v, %v", c, ok)
	}
	mqtttest.WaitFor(t, 10*time.Second, "the retained status naming the command mode", func() bool {
		return strings.Contains(string(statuses.Status("sec-1")), `"commands":"no key"`)
	})
}

// Signed commands are bound to their purpose, their key and their target: only a command
// signed by the command key, as a command, addressed to this device, its group or all, runs.
// A command signed for device A and republished on B's topic is refused by B; so are a
// bundle key's signature, a command key's signature made for a bundle, and a plain command.
func TestSignedCommandsBoundToKeyPurposeAndTarget(t *testing.T) {
	broker := testenv.MosquittoWith(t, testenv.BrokerConfig{})
	con := newConsole(t, broker.URL)
	f := bundletest.NewFleet(t)
	_, url := onlineWithStatus(t, fmt.Sprintf(`
device: sec-b
state_dir: %s
bundles: {trusted_keys: [%s]}
%s
mqtt: {broker: %s, groups: [kitchen], backoff_min: 50ms, backoff_max: 200ms}
`+statusModel, t.TempDir(), f.Pub.String(), con.keys(), broker.URL))
	cases := []struct {
		id, payload, want string
	}{
		{"plain", con.plain("plain", "ping", "", "device:sec-b"), "not signed and this agent requires signed commands"},
		{"bundle-key", sealWith(t, f.Priv, sign.CommandComment, con.plain("bundle-key", "ping", "", "device:sec-b")), "untrusted key"},
		{"purpose", sealWith(t, con.priv, sign.BundleComment("mnist", 9), con.plain("purpose", "ping", "", "device:sec-b")), "another purpose"},
		{"no-target", con.seal(con.plain("no-target", "ping", "", "")), "names no target"},
		{"for-a", con.seal(con.plain("for-a", "rollback", `{"model":"mnist"}`, "device:sec-a")), `addressed to "device:sec-a"`},
		{"other-group", con.seal(con.plain("other-group", "ping", "", "group:garage")), `addressed to "group:garage"`},
	}
	for _, c := range cases {
		con.send("edge/sec-b/cmd", c.payload)
	}
	for _, c := range cases {
		if st, why := lastReply(con, c.id); st != "failed" || !strings.Contains(why, c.want) {
			t.Errorf("%s: %s %q; want failed naming %q", c.id, st, why, c.want)
		}
	}
	for _, target := range []string{"device:sec-b", "group:kitchen", "all"} {
		id := "ok-" + strings.ReplaceAll(target, ":", "-")
		con.send("edge/sec-b/cmd", con.seal(con.plain(id, "ping", "", target)))
		if st, why := lastReply(con, id); st != "done" {
			t.Errorf("ping for %s: %s %q; want done", target, st, why)
		}
	}
	v := getStatus(t, url)
	if v.Security.Commands != "signed" || len(v.Security.Keys["commands"]) != 1 || v.Security.Keys["commands"][0] != con.pub.ID() ||
		len(v.Security.Keys["bundles"]) != 1 || v.Security.Keys["bundles"][0] != f.Pub.ID() || len(v.Security.Shared) != 0 {
		t.Errorf("/v1/status security = %+v; want signed, command key %s, bundle key %s, nothing shared", v.Security, con.pub.ID(), f.Pub.ID())
	}
}

// require_signed: false is an explicit opt-out: plain commands run, and the device warns at
// every start, in its health, on the status page and in the retained status.
func TestUnsignedOptOutIsVisible(t *testing.T) {
	broker := testenv.MosquittoWith(t, testenv.BrokerConfig{})
	con := newConsole(t, broker.URL)
	statuses := mqtttest.NewConsumer(t, broker.URL, "edge/+/status")
	r, url := onlineWithStatus(t, fmt.Sprintf(`
device: sec-u
state_dir: %s
commands: {require_signed: false}
mqtt: {broker: %s, backoff_min: 50ms, backoff_max: 200ms}
`+statusModel, t.TempDir(), broker.URL))
	con.send("edge/sec-u/cmd", con.plain("p", "ping", "", ""))
	if st, why := lastReply(con, "p"); st != "done" {
		t.Fatalf("plain ping with the opt-out: %s %q; want done", st, why)
	}
	if !strings.Contains(r.logs.String(), "level=WARN") || !strings.Contains(r.logs.String(), "security/unsigned-commands") {
		t.Errorf("no start-up warning about unsigned commands in the log")
	}
	if v := getStatus(t, url); v.Security.Commands != "UNSIGNED" || !strings.Contains(v.Security.Detail, "require_signed is false") {
		t.Errorf("/v1/status security = %+v; want UNSIGNED", v.Security)
	}
	if p := page(t, url); !strings.Contains(p, `id="commands">UNSIGNED<`) {
		t.Error("status page does not show the unsigned opt-out")
	}
	if _, ok := r.a.Health().Get("security/unsigned-commands"); !ok {
		t.Error("no health condition security/unsigned-commands")
	}
	mqtttest.WaitFor(t, 10*time.Second, "the retained status naming the opt-out", func() bool {
		return strings.Contains(string(statuses.Status("sec-u")), `"commands":"UNSIGNED"`)
	})
}

// The upgrade path: a device configured as before roles (one top-level trusted_keys) keeps
// serving its installed bundles and taking commands signed by that key for their purpose,
// and warns that one key set signs everything.
func TestLegacyTrustedKeysStillWorkAndWarn(t *testing.T) {
	broker := testenv.MosquittoWith(t, testenv.BrokerConfig{})
	con := newConsole(t, broker.URL)
	f := bundletest.NewFleet(t)
	// Signed as edgectl signed bundles before purposes were checked.
	v1 := f.Pack(t, bundletest.Opt{Version: "1.0.0", Seq: 1, Comment: "edge-agent bundle sin 1.0.0 sequence 1"})
	bad := f.Pack(t, bundletest.Opt{Version: "1.1.0", Seq: 2, Comment: "file:sin.tar.gz"})
	state := t.TempDir()
	r, url := onlineWithStatus(t, fmt.Sprintf(`
device: sec-l
state_dir: %s
trusted_keys: [%s]
mqtt: {broker: %s, backoff_min: 50ms, backoff_max: 200ms}
sources:
  - {name: sweep, kind: synthetic, rate: 200, synthetic: {wave: sine, phase: true, offset: -3.14159}}
models:
  - {name: sin, sources: [sweep]}
`, state, f.Pub.String(), broker.URL))
	if err := copyFile(v1, filepath.Join(state, "inbox", "v1.tar.gz")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "1.0.0 installed from the inbox", func() bool { return serving(r) == "1.0.0" })
	// A signature by the same key made for something else opens no bundle.
	if err := copyFile(bad, filepath.Join(state, "inbox", "bad.tar.gz")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the wrongly signed bundle refused", func() bool {
		b, err := os.ReadFile(filepath.Join(state, "inbox", "failed", "bad.tar.gz.reason"))
		return err == nil && strings.Contains(string(b), "another purpose")
	})
	if v := serving(r); v != "1.0.0" {
		t.Errorf("serving %s after a wrongly signed bundle; want 1.0.0", v)
	}
	con.send("edge/sec-l/cmd", sealWith(t, f.Priv, sign.CommandComment, con.plain("legacy", "ping", "", "device:sec-l")))
	if st, why := lastReply(con, "legacy"); st != "done" {
		t.Errorf("command signed by the legacy key: %s %q; want done", st, why)
	}
	c, ok := r.a.Health().Get("security/shared-keys")
	if !ok || !strings.Contains(c.Message, "commands, bundles, update") {
		t.Errorf("health security/shared-keys = %+v, %v; want the three roles named", c, ok)
	}
	if v := getStatus(t, url); strings.Join(v.Security.Shared, ",") != "commands,bundles,update" {
		t.Errorf("/v1/status security.shared_key_roles = %v", v.Security.Shared)
	}
}

func copyFile(src, dst string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	tmp := dst + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, dst)
}

// A flood of unsigned commands from anyone on the broker is not amplified: beyond the
// refusal burst and rate the device answers nothing and logs nothing, and counts what it
// suppressed, also in /metrics.
func TestUnsignedFloodIsNotAmplified(t *testing.T) {
	broker := testenv.MosquittoWith(t, testenv.BrokerConfig{})
	con := newConsole(t, broker.URL)
	r, url := onlineWithStatus(t, fmt.Sprintf(`
device: sec-f
state_dir: %s
%s
mqtt: {broker: %s, backoff_min: 50ms, backoff_max: 200ms}
`+statusModel, t.TempDir(), con.keys(), broker.URL))
	const n = 2000
	start := time.Now()
	for i := range n {
		con.send("edge/sec-f/cmd", con.plain(fmt.Sprintf("f%d", i), "ping", "", ""))
	}
	var st command.Stats
	mqtttest.WaitFor(t, 60*time.Second, "every flooded command refused", func() bool {
		st, _ = r.a.FleetStats()["commands"].(command.Stats)
		return st.Refused >= n
	})
	// At most the burst plus one per second of flood (and one for rounding) were answered.
	allowed := uint64(command.DefaultRefusalBurst) + uint64(time.Since(start)/command.DefaultRefusalEvery) + 1
	if answered := st.Refused - st.Suppressed; answered > allowed || st.Suppressed < n-allowed {
		t.Errorf("stats %+v: %d refusals answered; want at most %d", st, answered, allowed)
	}
	if logged := uint64(strings.Count(r.logs.String(), "command refused")); logged > allowed {
		t.Errorf("%d refusal log lines for %d refused commands; want at most %d", logged, n, allowed)
	}
	if strings.Count(r.logs.String(), "command refusals are rate-limited") != 1 {
		t.Errorf("want one warning that refusals are rate-limited")
	}
	_, body := httpGet(t, url+"/metrics")
	if want := fmt.Sprintf("edge_agent_commands_suppressed_total %d\n", st.Suppressed); !strings.Contains(string(body), want) {
		t.Errorf("/metrics does not hold %q", want)
	}
	// A signed command still runs after the flood.
	con.send("edge/sec-f/cmd", con.cmd("after", "ping", ""))
	if status, why := lastReply(con, "after"); status != "done" {
		t.Errorf("signed ping after the flood: %s %q", status, why)
	}
}

// The broker ACL this project documents is keyed on the authenticated user, not on the client
// id, which any client picks: with `pattern readwrite edge/%u/#`, user mallory connecting
// with the device's client id cannot publish on the device's topics, which the older
// `%c` ACL let her do. The device itself, as its own user, gets online and sends results
// under that ACL, and warns that its password crosses a tcp:// connection in clear.
func TestBrokerACLKeyedOnTheUser(t *testing.T) {
	users := map[string]string{"sec-acl": "dev-pw", "mallory": "evil-pw", "watch": "watch-pw"}
	spoofed := func(acl string) int {
		t.Helper()
		b := testenv.MosquittoWith(t, testenv.BrokerConfig{Passwords: users, ACL: acl + "\nuser watch\ntopic readwrite edge/#"})
		seen := mqtttest.NewConsumerAs(t, b.URL, "watch", "watch-pw", "edge/sec-acl/#")
		m := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(b.URL).SetClientID("sec-acl").SetUsername("mallory").SetPassword("evil-pw").SetProtocolVersion(4))
		if tok := m.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("mallory connect: %v", tok.Error())
		}
		defer m.Disconnect(100)
		for _, topic := range []string{"edge/sec-acl/cmd", "edge/sec-acl/results"} {
			if tok := m.Publish(topic, 1, false, `{"spoofed": true}`); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
				t.Fatalf("publish: %v", tok.Error())
			}
		}
		// A marker from the watcher's own side ends the wait: what mallory's publishes did
		// has happened by the time the broker delivers a later message.
		w := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(b.URL).SetClientID("marker").SetUsername("watch").SetPassword("watch-pw").SetProtocolVersion(4))
		if tok := w.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("marker connect: %v", tok.Error())
		}
		defer w.Disconnect(100)
		if tok := w.Publish("edge/sec-acl/marker", 1, false, `{"marker": true}`); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("marker publish: %v", tok.Error())
		}
		mqtttest.WaitFor(t, 10*time.Second, "the marker", func() bool { return seen.RawCount("edge/sec-acl/marker") == 1 })
		return seen.RawCount("edge/sec-acl/cmd") + seen.RawCount("edge/sec-acl/results")
	}
	if n := spoofed("pattern readwrite edge/%c/#"); n != 2 {
		t.Errorf("with the client-id ACL mallory got %d of 2 spoofed messages through; the test expects the old ACL to be spoofable", n)
	}
	if n := spoofed("pattern readwrite edge/%u/#\npattern read edge/group/+/cmd\npattern read edge/all/cmd"); n != 0 {
		t.Errorf("with the user ACL mallory got %d spoofed messages through; want 0", n)
	}

	b := testenv.MosquittoWith(t, testenv.BrokerConfig{Passwords: users, ACL: "pattern readwrite edge/%u/#\npattern read edge/group/+/cmd\npattern read edge/all/cmd\nuser watch\ntopic read edge/#"})
	results := mqtttest.NewConsumerAs(t, b.URL, "watch", "watch-pw", "edge/+/results")
	r := start(t, fmt.Sprintf(`
device: sec-acl
state_dir: %s
mqtt: {broker: %s, username: sec-acl, password: dev-pw, backoff_min: 50ms, backoff_max: 200ms, batch_wait: 20ms}
sources:
  - {name: sweep, kind: synthetic, rate: 100, synthetic: {wave: sine, phase: true, offset: -3.14159}}
models:
  - {name: sin, path: @TESTDATA@/sin_model.tflite, sources: [sweep], output: {kind: regression, regression: {names: [y]}}}
`, t.TempDir(), b.URL))
	mqtttest.WaitFor(t, 20*time.Second, "results of the device under the user ACL", func() bool { return results.Count("results", "sec-acl") >= 10 })
	if c, ok := r.a.Health().Get("security/cleartext-password"); !ok || !strings.Contains(c.Message, "ssl://") {
		t.Errorf("health security/cleartext-password = %+v, %v; want a warning naming ssl://", c, ok)
	}
}

// Deploy by URL downloads only from deploy.allowed_urls: a bundle on another server is
// refused before any request is made, and an installed download leaves nothing behind.
func TestDeployByURLStaysInsideTheAllowList(t *testing.T) {
	broker := testenv.MosquittoWith(t, testenv.BrokerConfig{})
	con := newConsole(t, broker.URL)
	f := bundletest.NewFleet(t)
	v1 := f.Pack(t, bundletest.Opt{Version: "1.0.0", Seq: 1})
	serve := func() (*httptest.Server, *atomic.Int32) {
		var hits atomic.Int32
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			hits.Add(1)
			http.ServeFile(w, r, v1)
		}))
		t.Cleanup(srv.Close)
		return srv, &hits
	}
	fleet, _ := serve()
	other, otherHits := serve()
	state := t.TempDir()
	r := start(t, fmt.Sprintf(`
device: dl-1
state_dir: %s
bundles: {trusted_keys: [%s]}
%s
deploy: {allowed_urls: [%q]}
mqtt: {broker: %s, backoff_min: 50ms, backoff_max: 200ms}
sources:
  - {name: sweep, kind: synthetic, rate: 100, synthetic: {wave: sine, phase: true, offset: -3.14159}}
models:
  - {name: sin, sources: [sweep]}
`, state, f.Pub.String(), con.keys(), fleet.URL+"/bundles", broker.URL))
	mqtttest.WaitFor(t, 20*time.Second, "the agent online", func() bool {
		return strings.Contains(fmt.Sprint(r.a.FleetStats()["mqtt"]), "online")
	})
	sum := fileSum(t, v1)
	for id, u := range map[string]string{"other-server": other.URL + "/bundles/sin.bundle", "other-path": fleet.URL + "/admin/sin.bundle",
		"traversal": fleet.URL + "/bundles/../admin/sin.bundle"} {
		con.send("edge/dl-1/cmd", con.cmd(id, "deploy", fmt.Sprintf(`{"url":%q,"sha256":%q}`, u, sum)))
		if status, reason := lastReply(con, id); status != "failed" || !strings.Contains(reason, "not under deploy.allowed_urls") {
			t.Errorf("%s: %s %q; want failed naming deploy.allowed_urls", id, status, reason)
		}
	}
	if n := otherHits.Load(); n != 0 {
		t.Errorf("the server outside the list got %d requests", n)
	}
	con.send("edge/dl-1/cmd", con.cmd("good", "deploy", fmt.Sprintf(`{"url":%q,"sha256":%q}`, fleet.URL+"/bundles/sin.bundle", sum)))
	if status, reason := lastReply(con, "good"); status != "done" {
		t.Fatalf("deploy from the allowed server: %s %s", status, reason)
	}
	if left, _ := filepath.Glob(filepath.Join(state, "downloads", "*")); len(left) != 0 {
		t.Errorf("the installed download is still there: %v", left)
	}
}

func fileSum(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}
