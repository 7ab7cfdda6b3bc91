//go:build cgo

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edge-agent/edge-agent/agent"
	"github.com/edge-agent/edge-agent/agent/command"
	"github.com/edge-agent/edge-agent/internal/bundletest"
	"github.com/edge-agent/edge-agent/internal/rollout"
	"github.com/edge-agent/edge-agent/internal/testenv"
	"github.com/edge-agent/edge-agent/models/sign"
	"github.com/edge-agent/edge-agent/models/store"
)

// serveAgentYAML is a real agent in group g serving the sin model from bundles. Probation
// never fails on errors (max_error_rate 1), so that a version that errors stays installed
// and it is serve's soak gate that has to catch it; metrics go out every 200ms.
const serveAgentYAML = `
device: %s
state_dir: %s
bundles: {trusted_keys: [%s]}
%s
probation: {inferences: 5, max_error_rate: 1}
mqtt: {broker: %s, groups: [g], backoff_min: 50ms, backoff_max: 200ms, status_every: 1s, metrics_every: 200ms}
sources:
  - {name: sweep, kind: synthetic, rate: 200, synthetic: {wave: sine, phase: true, offset: -3.14159}}
models:
  - {name: sin, sources: [sweep]}
`

// serveFleet is a Mosquitto, a signing key, a bundle folder and n agents serving sin 1.0.0.
type serveFleet struct {
	broker *testenv.Broker
	keys   *bundletest.Fleet
	cmdKey *commandKey // the only key on the serve host: it signs commands, not bundles
	dir    string      // the bundle folder serve hosts
	names  []string
	agents map[string]*agent.Agent
	states map[string]string // device → state_dir
}

func newServeFleet(t *testing.T, n int) *serveFleet {
	t.Helper()
	fl := &serveFleet{broker: testenv.MosquittoWith(t, testenv.BrokerConfig{}), keys: bundletest.NewFleet(t), cmdKey: newCommandKey(t), dir: t.TempDir(),
		agents: map[string]*agent.Agent{}, states: map[string]string{}}
	v1 := fl.keys.Pack(t, bundletest.Opt{Version: "1.0.0", Seq: 1})
	for i := range n {
		dev := fmt.Sprintf("dev-%d", i)
		state := t.TempDir()
		a := startAgent(t, fmt.Sprintf(serveAgentYAML, dev, state, fl.keys.Pub.String(), fl.cmdKey.Line(), fl.broker.URL))
		if _, err := a.Deploy().InstallFile(context.Background(), v1); err != nil {
			t.Fatalf("%s: install 1.0.0: %v", dev, err)
		}
		fl.names, fl.agents[dev], fl.states[dev] = append(fl.names, dev), a, state
	}
	for _, dev := range fl.names {
		a := fl.agents[dev]
		eventually(t, dev+" online serving 1.0.0", func() bool {
			return strings.Contains(fmt.Sprint(a.FleetStats()["mqtt"]), "online") && fl.serving(dev) == "1.0.0"
		})
	}
	return fl
}

func (fl *serveFleet) serving(dev string) string {
	if s := fl.agents[dev].Pipeline().Serving("sin"); s != nil {
		return s.Version
	}
	return ""
}

// received is how many commands the device's router took.
func (fl *serveFleet) received(dev string) uint64 {
	return fl.agents[dev].FleetStats()["commands"].(command.Stats).Received
}

// bundle packs a real signed bundle and puts it into the served folder as name.
func (fl *serveFleet) bundle(t *testing.T, name string, o bundletest.Opt) string {
	t.Helper()
	b, err := os.ReadFile(fl.keys.Pack(t, o))
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(fl.dir, name)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// runningServe is an in-process edgectl serve.
type runningServe struct {
	*server
	cancel context.CancelFunc
	done   chan error
	log    *syncBuffer
	once   sync.Once
}

func startServe(t *testing.T, fl *serveFleet, state string, extra ...string) *runningServe {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	rs := &runningServe{cancel: cancel, done: make(chan error, 1), log: &syncBuffer{}}
	up := make(chan *server, 1)
	args := append(append([]string{"--listen", "127.0.0.1:0", "--dir", fl.dir, "--state", state},
		fl.cmdKey.Conn(t, fl.broker.URL)...), append([]string{"--settle", "300ms"}, extra...)...)
	go func() { rs.done <- serve(ctx, args, io.Discard, rs.log, func(s *server) { up <- s }) }()
	select {
	case rs.server = <-up:
	case err := <-rs.done:
		cancel()
		t.Fatalf("serve %v: %v\n%s", args, err, rs.log)
	case <-time.After(20 * time.Second):
		cancel()
		t.Fatalf("serve did not start within 20s\n%s", rs.log)
	}
	t.Cleanup(func() {
		rs.stop(t)
		if t.Failed() {
			t.Logf("serve %s log:\n%s", state, rs.log)
		}
	})
	return rs
}

// stop cancels serve and waits for it to return.
func (rs *runningServe) stop(t *testing.T) {
	rs.once.Do(func() {
		rs.cancel()
		select {
		case err := <-rs.done:
			if err != nil {
				t.Errorf("serve returned %v; want nil after its context ended", err)
			}
		case <-time.After(20 * time.Second):
			t.Error("serve did not stop within 20s")
		}
	})
}

// api sends a JSON request and returns the status code and body.
func api(t *testing.T, method, url, token string, body any) (int, []byte) {
	t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	default:
		raw, _ := json.Marshal(b)
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, raw
}

// startRollout posts a rollout and returns its id.
func (rs *runningServe) startRollout(t *testing.T, token string, spec map[string]any) string {
	t.Helper()
	code, raw := api(t, "POST", rs.url+"/v1/rollouts", token, spec)
	if code != http.StatusCreated {
		t.Fatalf("POST /v1/rollouts %v: %d %s; want 201", spec, code, raw)
	}
	var ro rollout.Rollout
	if err := json.Unmarshal(raw, &ro); err != nil || ro.ID == "" {
		t.Fatalf("created rollout %s: %v", raw, err)
	}
	return ro.ID
}

func (rs *runningServe) get(t *testing.T, id string) rollout.Rollout {
	t.Helper()
	code, raw := api(t, "GET", rs.url+"/v1/rollouts/"+id, "", nil)
	if code != http.StatusOK {
		t.Fatalf("GET rollout %s: %d %s", id, code, raw)
	}
	var ro rollout.Rollout
	if err := json.Unmarshal(raw, &ro); err != nil {
		t.Fatal(err)
	}
	return ro
}

// waitRollout waits (at most 45s) until the rollout finished and checks how.
func (rs *runningServe) waitRollout(t *testing.T, id, want string) rollout.Rollout {
	t.Helper()
	deadline := time.Now().Add(testenv.Patience(45 * time.Second))
	for {
		ro := rs.get(t, id)
		if ro.State != rollout.StateRunning {
			if ro.State != want {
				b, _ := json.MarshalIndent(ro, "", "  ")
				t.Fatalf("rollout %s ended %s; want %s:\n%s", id, ro.State, want, b)
			}
			return ro
		}
		if time.Now().After(deadline) {
			b, _ := json.MarshalIndent(ro, "", "  ")
			t.Fatalf("rollout %s still running after 45s:\n%s", id, b)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stateRollout reads one rollout from a state file as serve wrote it.
func stateRollout(t *testing.T, path, id string) (rollout.Rollout, bool) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("state file: %v", err)
	}
	var st struct {
		Schema   string            `json:"schema"`
		Rollouts []rollout.Rollout `json:"rollouts"`
	}
	if err := json.Unmarshal(b, &st); err != nil || st.Schema != rollout.StateSchema {
		t.Fatalf("state file %s: schema %q, %v", path, st.Schema, err)
	}
	for _, r := range st.Rollouts {
		if r.ID == id {
			return r, true
		}
	}
	return rollout.Rollout{}, false
}

func byStage(ro rollout.Rollout, k int) []*rollout.Device {
	var out []*rollout.Device
	for _, d := range ro.Devices {
		if d.Stage == k {
			out = append(out, d)
		}
	}
	return out
}

// A good version goes out in three stages to the four devices of group g, and every device
// serves it at the end; the state file records each stage and each device's outcome, and
// the stages ran one after the other on the devices the rollout's order puts in them.
func TestStagedRolloutCompletes(t *testing.T) {
	fl := newServeFleet(t, 4)
	fl.bundle(t, "sin-2.0.0.tar.gz", bundletest.Opt{Version: "2.0.0", Seq: 2})
	state := filepath.Join(t.TempDir(), "serve.json")
	rs := startServe(t, fl, state, "--instance", "t1")

	code, out, errOut := edgectl(t, "rollout", "start", "--server", rs.url, "--group", "g", "--stages", "25,50,100", "--soak", "1s", "--json", "sin-2.0.0.tar.gz")
	if code != 0 {
		t.Fatalf("rollout start: exit %d\n%s\n%s", code, out, errOut)
	}
	var started rollout.Rollout
	if err := json.Unmarshal([]byte(out), &started); err != nil {
		t.Fatalf("rollout start --json: %v\n%s", err, out)
	}
	ro := rs.waitRollout(t, started.ID, rollout.StateDone)
	for _, dev := range fl.names {
		if v := fl.serving(dev); v != "2.0.0" {
			t.Errorf("%s serves %q; want 2.0.0", dev, v)
		}
	}

	st, ok := stateRollout(t, state, ro.ID)
	if !ok {
		t.Fatalf("rollout %s is not in the state file", ro.ID)
	}
	if st.State != rollout.StateDone || len(st.Stages) != 3 {
		t.Fatalf("state file: state %s, %d stages; want done, 3", st.State, len(st.Stages))
	}
	var order []string
	var prevEnd time.Time
	for k, want := range []int{1, 2, 4} {
		s := st.Stages[k]
		if s.Devices != want || s.StartedAt == nil || s.DeployedAt == nil || s.SoakUntil == nil || s.FinishedAt == nil {
			t.Errorf("stage %d in the state file: %+v; want %d devices with start, deployed, soak and finish times", k+1, s, want)
			continue
		}
		devs := byStage(st, k)
		if len(devs) != want-len(order) {
			t.Errorf("stage %d deploys to %d devices; want %d", k+1, len(devs), want-len(order))
		}
		for _, d := range devs {
			order = append(order, d.ID)
			if d.Outcome != "done" || d.Failure != "" || d.From != "1.0.0" || len(d.Commands) != 1 {
				t.Errorf("%s in the state file: %+v; want done from 1.0.0 after one command", d.ID, *d)
			}
			if d.SentAt == nil || d.SentAt.Before(prevEnd) {
				t.Errorf("%s (stage %d) was sent its deploy at %v, before stage %d finished at %v", d.ID, k+1, d.SentAt, k, prevEnd)
			}
		}
		prevEnd = *s.FinishedAt
	}
	if want := rollout.Order(ro.ID, fl.names); !slices.Equal(order, want) {
		t.Errorf("stage membership %v; want the rollout's order %v", order, want)
	}

	code, raw := api(t, "GET", rs.url+"/v1/rollouts", "", nil)
	var list struct {
		Rollouts []rollout.Summary `json:"rollouts"`
	}
	json.Unmarshal(raw, &list)
	if code != 200 || len(list.Rollouts) != 1 || list.Rollouts[0].State != "done" || list.Rollouts[0].Done != 4 || list.Rollouts[0].Failed != 0 {
		t.Errorf("GET /v1/rollouts: %d %s; want the rollout done with 4 devices done", code, raw)
	}
	code, out, errOut = edgectl(t, "rollout", "status", "--server", rs.url, "--watch", ro.ID)
	if code != 0 || !strings.Contains(out, "done") || !strings.Contains(out, "dev-3") {
		t.Errorf("rollout status --watch: exit %d\n%s\n%s", code, out, errOut)
	}
}

// A bundle every device refuses (signed with a key they do not trust) halts the rollout
// after its first stage: the one device there replied failed, the others never got a
// command, and everything still serves 1.0.0.
func TestStagedRolloutHaltsOnBadBundle(t *testing.T) {
	fl := newServeFleet(t, 4)
	_, untrusted, _ := sign.GenerateKey()
	fl.bundle(t, "sin-2.0.0.tar.gz", bundletest.Opt{Version: "2.0.0", Seq: 2, Signer: &untrusted})
	state := filepath.Join(t.TempDir(), "serve.json")
	rs := startServe(t, fl, state)
	id := rs.startRollout(t, "", map[string]any{"bundle": "sin-2.0.0.tar.gz", "group": "g", "stages": []float64{25, 50, 100}, "gates": map[string]any{"soak": "1s"}})
	ro := rs.waitRollout(t, id, rollout.StateHalted)

	if !strings.Contains(ro.Reason, "stage 1") || !strings.Contains(ro.Reason, "max_failures 0") {
		t.Errorf("reason %q; want it to name stage 1 and max_failures 0", ro.Reason)
	}
	first := byStage(ro, 0)
	if len(first) != 1 {
		t.Fatalf("stage 1 has %d devices; want 1 (25%% of 4)", len(first))
	}
	d := first[0]
	if d.Outcome != "failed" || !strings.Contains(d.Reason, "untrusted key") || !strings.Contains(strings.Join(ro.Evidence, "\n"), d.ID) {
		t.Errorf("stage 1 device %+v, evidence %q; want failed for the untrusted key, in the evidence", *d, ro.Evidence)
	}
	if d.Rollback != nil {
		t.Errorf("%s gets a rollback %+v though it never took the version", d.ID, *d.Rollback)
	}
	for _, dev := range fl.names {
		want := uint64(0)
		if dev == d.ID {
			want = 1
		}
		if got := fl.received(dev); got != want {
			t.Errorf("%s received %d commands; want %d", dev, got, want)
		}
		if v := fl.serving(dev); v != "1.0.0" {
			t.Errorf("%s serves %q; want 1.0.0", dev, v)
		}
	}
	for _, later := range append(byStage(ro, 1), byStage(ro, 2)...) {
		if len(later.Commands) != 0 {
			t.Errorf("%s of a later stage has commands %v", later.ID, later.Commands)
		}
	}
	if st, _ := stateRollout(t, state, id); st.State != rollout.StateHalted || st.Reason != ro.Reason {
		t.Errorf("state file: %s %q; want halted with the reason", st.State, st.Reason)
	}
	code, _, errOut := edgectl(t, "rollout", "status", "--server", rs.url, "--watch", id)
	if code != 1 || !strings.Contains(errOut, "halted") {
		t.Errorf("rollout status --watch of a halted rollout: exit %d, %q; want 1 saying it halted", code, errOut)
	}
}

// A version that installs but fails on every live frame (its preprocessing names a feature
// the source does not have) passes the device's canary; serve's soak sees the error rate in
// the metrics, halts, and rolls the device back to the version it had.
func TestRolloutHaltsOnErrorRateAndRollsBack(t *testing.T) {
	fl := newServeFleet(t, 2)
	bad := bundletest.SinProcessing
	bad.Input.Vector.Features = []string{"x"} // the synthetic source names its value ch0
	fl.bundle(t, "sin-2.0.0.tar.gz", bundletest.Opt{Version: "2.0.0", Seq: 2, Proc: bad})
	rs := startServe(t, fl, filepath.Join(t.TempDir(), "serve.json"))
	id := rs.startRollout(t, "", map[string]any{"bundle": "sin-2.0.0.tar.gz", "group": "g", "stages": []float64{50, 100},
		"gates": map[string]any{"soak": "30s", "max_error_rate": 0.05}})
	ro := rs.waitRollout(t, id, rollout.StateHalted)
	if !strings.Contains(ro.Reason, "error rate") || !strings.Contains(ro.Reason, "soak") {
		t.Fatalf("reason %q; want the soak's error rate", ro.Reason)
	}
	first, second := byStage(ro, 0)[0], byStage(ro, 1)[0]
	if first.Outcome != "done" || first.Rollback == nil || first.Rollback.Version != "1.0.0" {
		t.Fatalf("stage 1 device %+v; want done, then a rollback to 1.0.0", *first)
	}
	deadline := time.Now().Add(testenv.Patience(20 * time.Second))
	for rs.get(t, id).Devices[slices.IndexFunc(ro.Devices, func(d *rollout.Device) bool { return d.ID == first.ID })].Rollback.Outcome != "done" {
		if time.Now().After(deadline) {
			t.Fatalf("the rollback of %s did not reply done within 20s", first.ID)
		}
		time.Sleep(50 * time.Millisecond)
	}
	eventually(t, first.ID+" serving 1.0.0 again", func() bool { return fl.serving(first.ID) == "1.0.0" })
	if got := fl.received(second.ID); got != 0 || fl.serving(second.ID) != "1.0.0" {
		t.Errorf("%s of stage 2 received %d commands and serves %s; want none and 1.0.0", second.ID, got, fl.serving(second.ID))
	}
}

// A serve stopped during the first stage's soak, and whose record of one device's outcome
// was lost (as when it stops between sending a deploy and recording the reply), is started
// again on the same state file: it sends that device the deploy again — the device already
// serves the version and answers done without installing anything — and finishes.
func TestServeResumesAfterRestart(t *testing.T) {
	fl := newServeFleet(t, 4)
	fl.bundle(t, "sin-2.0.0.tar.gz", bundletest.Opt{Version: "2.0.0", Seq: 2})
	state := filepath.Join(t.TempDir(), "serve.json")
	rs1 := startServe(t, fl, state, "--instance", "r")
	id := rs1.startRollout(t, "", map[string]any{"bundle": "sin-2.0.0.tar.gz", "group": "g", "stages": []float64{25, 50, 100}, "gates": map[string]any{"soak": "2s"}})
	eventually(t, "stage 1 soaking in the state file", func() bool {
		st, ok := stateRollout(t, state, id)
		return ok && st.Stage == 0 && st.Phase == rollout.PhaseSoaking
	})
	rs1.stop(t)

	// Forget the stage 1 device's outcome in the state file.
	raw, _ := os.ReadFile(state)
	var doc map[string]any
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	var redo string
	for _, d := range doc["rollouts"].([]any)[0].(map[string]any)["devices"].([]any) {
		d := d.(map[string]any)
		if d["stage"].(float64) == 0 {
			redo = d["device"].(string)
			delete(d, "outcome")
			delete(d, "last_reply")
			delete(d, "finished_at")
		}
	}
	raw, _ = json.Marshal(doc)
	os.WriteFile(state, raw, 0o600)

	rs2 := startServe(t, fl, state, "--instance", "r")
	ro := rs2.waitRollout(t, id, rollout.StateDone)
	for _, dev := range fl.names {
		if v := fl.serving(dev); v != "2.0.0" {
			t.Errorf("%s serves %q; want 2.0.0", dev, v)
		}
	}
	d := ro.Devices[slices.IndexFunc(ro.Devices, func(d *rollout.Device) bool { return d.ID == redo })]
	if len(d.Commands) != 2 || d.Outcome != "done" || fl.received(redo) != 2 {
		t.Errorf("%s: commands %v, outcome %q, router received %d; want a second deploy with a new id, done", redo, d.Commands, d.Outcome, fl.received(redo))
	}
	st, err := store.OpenReadOnly(filepath.Join(fl.states[redo], "models"))
	if err != nil {
		t.Fatal(err)
	}
	hist, _ := st.History("sin", 100)
	installs := 0
	for _, e := range hist {
		if e.Version == "2.0.0" && e.Event == "installed" {
			installs++
		}
	}
	if installs != 1 {
		t.Errorf("%s installed 2.0.0 %d times; want once (the second deploy is a no-op)", redo, installs)
	}
}

// Two instances share the telemetry through a shared subscription: the rollout started on
// a completes, and b received part of its devices' telemetry and forwarded it to a.
func TestTwoInstancesSharedSubscriptions(t *testing.T) {
	fl := newServeFleet(t, 4)
	fl.bundle(t, "sin-2.0.0.tar.gz", bundletest.Opt{Version: "2.0.0", Seq: 2})
	dir := t.TempDir()
	a := startServe(t, fl, filepath.Join(dir, "a.json"), "--instance", "a", "--share", "serve")
	b := startServe(t, fl, filepath.Join(dir, "b.json"), "--instance", "b", "--share", "serve")
	id := a.startRollout(t, "", map[string]any{"bundle": "sin-2.0.0.tar.gz", "group": "g", "stages": []float64{50, 100}, "gates": map[string]any{"soak": "1s"}})
	a.waitRollout(t, id, rollout.StateDone)
	for _, dev := range fl.names {
		if v := fl.serving(dev); v != "2.0.0" {
			t.Errorf("%s serves %q; want 2.0.0", dev, v)
		}
	}
	sa, sb := a.engine.Stats(), b.engine.Stats()
	if sb.Replies == 0 || sb.Forwarded == 0 {
		t.Errorf("instance b: %+v; want replies received and observations forwarded", sb)
	}
	if sa.Observations == 0 {
		t.Errorf("instance a: %+v; want observations from b", sa)
	}
	eventually(t, "b to list a's rollout as done", func() bool {
		code, raw := api(t, "GET", b.url+"/v1/rollouts", "", nil)
		return code == 200 && strings.Contains(string(raw), `"owner": "a"`) && strings.Contains(string(raw), `"state": "done"`)
	})
	if code, raw := api(t, "GET", b.url+"/v1/rollouts/"+id, "", nil); code != 404 || !strings.Contains(string(raw), "instance a") {
		t.Errorf("GET a's rollout from b: %d %s; want 404 naming instance a", code, raw)
	}
}

// The HTTP API: bundles with Range requests and no way out of the folder, the bearer token,
// clear refusals, and a halt that rolls back the device that took the version.
func TestServeAPI(t *testing.T) {
	testenv.NoGoroutineLeaks(t)
	fl := newServeFleet(t, 2)
	path := fl.bundle(t, "sin-2.0.0.tar.gz", bundletest.Opt{Version: "2.0.0", Seq: 2})
	data, _ := os.ReadFile(path)
	os.WriteFile(filepath.Join(fl.dir, "notes.txt"), []byte("not a bundle"), 0o644)
	os.WriteFile(filepath.Join(fl.dir, "junk.tar.gz"), []byte("not a tar at all"), 0o644)
	outside := filepath.Join(t.TempDir(), "secret.tar.gz")
	os.WriteFile(outside, []byte("secret"), 0o644)
	os.Symlink(outside, filepath.Join(fl.dir, "link.tar.gz"))
	tokenFile := filepath.Join(t.TempDir(), "token")
	const token = "0123456789abcdef0123456789abcdef"
	writeFile(t, tokenFile, token+"\n")
	state := filepath.Join(t.TempDir(), "serve.json")

	t.Run("non-loopback without a token is refused", func(t *testing.T) {
		err := serve(context.Background(), []string{"--listen", "0.0.0.0:0", "--dir", fl.dir, "--state", state, "--broker", fl.broker.URL, "--config", os.DevNull}, io.Discard, io.Discard, nil)
		if err == nil || !strings.Contains(err.Error(), "--token-file") {
			t.Errorf("serve on 0.0.0.0 without --token-file: %v; want a refusal naming --token-file", err)
		}
	})
	rs := startServe(t, fl, state, "--token-file", tokenFile)

	t.Run("bundles", func(t *testing.T) {
		req, _ := http.NewRequest("GET", rs.url+"/bundles/sin-2.0.0.tar.gz", nil)
		req.Header.Set("Range", "bytes=100-199")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(body, data[100:200]) || resp.Header.Get("Content-Range") != fmt.Sprintf("bytes 100-199/%d", len(data)) {
			t.Errorf("Range request: %d, %d bytes, Content-Range %q; want 206 with bytes 100-199", resp.StatusCode, len(body), resp.Header.Get("Content-Range"))
		}
		if code, body := api(t, "GET", rs.url+"/bundles/sin-2.0.0.tar.gz", "", nil); code != 200 || !bytes.Equal(body, data) {
			t.Errorf("whole bundle: %d, %d bytes; want 200 and the file", code, len(body))
		}
		for _, p := range []string{"missing.tar.gz", "notes.txt", "link.tar.gz", "..%2Fsecret.tar.gz", "%2E%2E"} {
			if code, body := api(t, "GET", rs.url+"/bundles/"+p, "", nil); code != 404 || bytes.Contains(body, []byte("secret")) && !bytes.Contains(body, []byte("error")) {
				t.Errorf("GET /bundles/%s: %d %s; want 404", p, code, body)
			}
		}
	})

	good := map[string]any{"bundle": "sin-2.0.0.tar.gz", "devices": fl.names, "stages": []float64{50, 100}, "gates": map[string]any{"soak": "60s"}}
	t.Run("refusals", func(t *testing.T) {
		for _, tc := range []struct {
			name, token string
			body        any
			code        int
			want        string
		}{
			{"no token", "", good, 401, "bearer token"},
			{"wrong token", "not-the-token", good, 401, "bearer token"},
			{"unknown bundle", token, map[string]any{"bundle": "nope.tar.gz", "group": "g", "stages": []float64{100}}, 404, "nope.tar.gz"},
			{"not a bundle", token, map[string]any{"bundle": "junk.tar.gz", "group": "g", "stages": []float64{100}}, 400, "junk.tar.gz"},
			{"not JSON", token, "{", 400, "request body"},
			{"unknown field", token, `{"bundle":"sin-2.0.0.tar.gz","group":"g","stages":[100],"colour":"red"}`, 400, "colour"},
			{"no target", token, map[string]any{"bundle": "sin-2.0.0.tar.gz", "stages": []float64{100}}, 400, "exactly one target"},
			{"bad stages", token, map[string]any{"bundle": "sin-2.0.0.tar.gz", "all": true, "stages": []float64{50, 20}}, 400, "increase"},
			{"unknown device", token, map[string]any{"bundle": "sin-2.0.0.tar.gz", "devices": []string{"ghost"}, "stages": []float64{100}}, 400, "ghost"},
			{"empty group", token, map[string]any{"bundle": "sin-2.0.0.tar.gz", "group": "nobody", "stages": []float64{100}}, 400, "no online device"},
			{"too large", token, `{"bundle":"` + strings.Repeat("x", 70<<10) + `"}`, 413, "over"},
		} {
			code, raw := api(t, "POST", rs.url+"/v1/rollouts", tc.token, tc.body)
			if code != tc.code || !strings.Contains(string(raw), tc.want) {
				t.Errorf("%s: %d %s; want %d saying %q", tc.name, code, raw, tc.code, tc.want)
			}
		}
		if code, _ := api(t, "GET", rs.url+"/v1/rollouts/nope", "", nil); code != 404 {
			t.Errorf("GET an unknown rollout: %d; want 404", code)
		}
		for _, dev := range fl.names {
			if n := fl.received(dev); n != 0 {
				t.Errorf("%s received %d commands from refused requests", dev, n)
			}
		}
	})

	t.Run("halt rolls back", func(t *testing.T) {
		id := rs.startRollout(t, token, good)
		if code, raw := api(t, "POST", rs.url+"/v1/rollouts", token, good); code != 409 || !strings.Contains(string(raw), id) {
			t.Errorf("a second rollout to the same devices: %d %s; want 409 naming %s", code, raw, id)
		}
		eventually(t, "stage 1 soaking", func() bool { return rs.get(t, id).Phase == rollout.PhaseSoaking })
		if code, _ := api(t, "POST", rs.url+"/v1/rollouts/"+id+"/halt", "", nil); code != 401 {
			t.Errorf("halt without the token: %d; want 401", code)
		}
		code, raw := api(t, "POST", rs.url+"/v1/rollouts/"+id+"/halt", token, map[string]string{"reason": "bad dashboards"})
		var ro rollout.Rollout
		json.Unmarshal(raw, &ro)
		if code != 200 || ro.State != rollout.StateHalted || !strings.Contains(ro.Reason, "operator: bad dashboards") {
			t.Fatalf("halt: %d %s; want 200, halted by the operator with the reason", code, raw)
		}
		first, second := byStage(ro, 0)[0], byStage(ro, 1)[0]
		if first.Rollback == nil || first.Rollback.Version != "1.0.0" {
			t.Fatalf("stage 1 device %+v; want a rollback to 1.0.0", *first)
		}
		eventually(t, first.ID+" serving 1.0.0 again", func() bool { return fl.serving(first.ID) == "1.0.0" })
		eventually(t, "the rollback's done reply", func() bool {
			for _, d := range rs.get(t, id).Devices {
				if d.ID == first.ID {
					return d.Rollback.Outcome == "done"
				}
			}
			return false
		})
		if n := fl.received(second.ID); n != 0 {
			t.Errorf("%s of stage 2 received %d commands; want none", second.ID, n)
		}
		if code, raw := api(t, "POST", rs.url+"/v1/rollouts/"+id+"/halt", token, nil); code != 409 {
			t.Errorf("halting a halted rollout: %d %s; want 409", code, raw)
		}
		code, _, errOut := edgectl(t, "rollout", "halt", "--server", rs.url, id)
		if code != 1 || !strings.Contains(errOut, "bearer token") {
			t.Errorf("edgectl rollout halt without --token-file: exit %d %q; want 1 naming the bearer token", code, errOut)
		}
		if code, raw := api(t, "GET", rs.url+"/v1/stats", "", nil); code != 200 || !strings.Contains(string(raw), `"replies"`) {
			t.Errorf("GET /v1/stats: %d %s", code, raw)
		}
	})
}

// The latency gate: with a limit no inference can meet, the soak halts on the latency the
// device reports (its p95) and rolls the device back.
func TestRolloutHaltsOnLatency(t *testing.T) {
	fl := newServeFleet(t, 2)
	fl.bundle(t, "sin-2.0.0.tar.gz", bundletest.Opt{Version: "2.0.0", Seq: 2})
	rs := startServe(t, fl, filepath.Join(t.TempDir(), "serve.json"))
	id := rs.startRollout(t, "", map[string]any{"bundle": "sin-2.0.0.tar.gz", "group": "g", "stages": []float64{50, 100},
		"gates": map[string]any{"soak": "30s", "max_p95_latency_ms": 0.000001}})
	ro := rs.waitRollout(t, id, rollout.StateHalted)
	if !strings.Contains(ro.Reason, "p95 latency") || !strings.Contains(ro.Reason, "max_p95_latency_ms") {
		t.Fatalf("reason %q; want the p95 latency over max_p95_latency_ms", ro.Reason)
	}
	first, second := byStage(ro, 0)[0], byStage(ro, 1)[0]
	if first.Rollback == nil || first.Rollback.Version != "1.0.0" {
		t.Fatalf("stage 1 device %+v; want a rollback to 1.0.0", *first)
	}
	eventually(t, first.ID+" serving 1.0.0 again", func() bool { return fl.serving(first.ID) == "1.0.0" })
	if n := fl.received(second.ID); n != 0 {
		t.Errorf("%s of stage 2 received %d commands; want none", second.ID, n)
	}
}
