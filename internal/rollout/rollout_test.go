package rollout

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestStageSizes(t *testing.T) {
	for _, tc := range []struct {
		stages []float64
		n      int
		want   []int
	}{
		{[]float64{5, 25, 100}, 4, []int{1, 1, 4}},
		{[]float64{25, 50, 100}, 4, []int{1, 2, 4}},
		{[]float64{5, 25, 100}, 20, []int{1, 5, 20}}, // 5% of 20 is exactly 1 despite float error
		{[]float64{5, 25, 100}, 1000, []int{50, 250, 1000}},
		{[]float64{1, 50}, 3, []int{1, 2}},
		{[]float64{0.5, 100}, 1, []int{1, 1}},
		{[]float64{33.3, 66.6, 100}, 10, []int{4, 7, 10}},
	} {
		if got := StageSizes(tc.stages, tc.n); !slices.Equal(got, tc.want) {
			t.Errorf("StageSizes(%v, %d) = %v; want %v", tc.stages, tc.n, got, tc.want)
		}
	}
}

// The order is a function of the rollout id and the device set only: not of the input order,
// so a restarted server puts every device in the same stage; and another rollout shuffles
// differently, so the first stage is not always the same devices.
func TestOrderIsStablePerRollout(t *testing.T) {
	devs := make([]string, 50)
	for i := range devs {
		devs[i] = fmt.Sprintf("dev-%02d", i)
	}
	a := Order("r1", devs)
	rev := slices.Clone(devs)
	slices.Reverse(rev)
	if b := Order("r1", rev); !slices.Equal(a, b) {
		t.Errorf("order depends on the input order:\n%v\n%v", a, b)
	}
	if slices.Equal(a, devs) {
		t.Error("order is the input order; want it shuffled by the hash")
	}
	if c := Order("r2", devs); slices.Equal(a[:5], c[:5]) {
		t.Errorf("two rollouts start on the same five devices %v", a[:5])
	}
	if s := slices.Sorted(slices.Values(a)); !slices.Equal(s, devs) {
		t.Errorf("order lost or duplicated devices: %v", a)
	}
}

func TestSpecAndGatesChecks(t *testing.T) {
	ok := Spec{Bundle: "b.tar.gz", Group: "g", Stages: []float64{5, 25, 100}}
	if err := ok.Check(); err != nil {
		t.Fatalf("valid spec: %v", err)
	}
	for _, tc := range []struct {
		name string
		edit func(*Spec)
		want string
	}{
		{"no target", func(s *Spec) { s.Group = "" }, "exactly one target"},
		{"two targets", func(s *Spec) { s.All = true }, "exactly one target"},
		{"bad group", func(s *Spec) { s.Group = "a/b" }, "group"},
		{"bad device", func(s *Spec) { s.Group, s.Devices = "", []string{"x+"} }, "device"},
		{"device twice", func(s *Spec) { s.Group, s.Devices = "", []string{"a", "a"} }, "twice"},
		{"no stages", func(s *Spec) { s.Stages = nil }, "stages is required"},
		{"decreasing", func(s *Spec) { s.Stages = []float64{50, 25} }, "must increase"},
		{"over 100", func(s *Spec) { s.Stages = []float64{50, 150} }, "must increase"},
		{"zero", func(s *Spec) { s.Stages = []float64{0, 100} }, "must increase"},
	} {
		s := ok
		s.Stages = slices.Clone(ok.Stages)
		tc.edit(&s)
		err := s.Check()
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v; want ErrInvalid saying %q", tc.name, err, tc.want)
		}
	}

	g, err := GateSpec{}.Resolve()
	if err != nil || g.MaxErrorRate != DefaultMaxError || time.Duration(g.Soak) != DefaultSoak || time.Duration(g.StageTimeout) != DefaultTimeout || g.MaxFailures != 0 || g.MaxP95LatencyMS != 0 {
		t.Errorf("defaults %+v, %v", g, err)
	}
	var spec Spec
	if err := json.Unmarshal([]byte(`{"bundle":"b.tar.gz","all":true,"stages":[100],"gates":{"max_failures":2,"max_error_rate":0,"soak":"30s","max_p95_latency_ms":150}}`), &spec); err != nil {
		t.Fatal(err)
	}
	g, err = spec.Gates.Resolve()
	if err != nil || g.MaxFailures != 2 || g.MaxErrorRate != 0 || time.Duration(g.Soak) != 30*time.Second || g.MaxP95LatencyMS != 150 {
		t.Errorf("explicit gates %+v, %v; want max_failures 2, max_error_rate 0 (kept, not defaulted), soak 30s, p95 150", g, err)
	}
	for _, bad := range []string{`{"max_error_rate": 1.5}`, `{"max_failures": -1}`, `{"soak": "-1s"}`, `{"stage_timeout": "10ms"}`, `{"max_p95_latency_ms": -3}`} {
		var gs GateSpec
		if err := json.Unmarshal([]byte(bad), &gs); err != nil {
			t.Fatal(err)
		}
		if _, err := gs.Resolve(); !errors.Is(err, ErrInvalid) {
			t.Errorf("gates %s: %v; want ErrInvalid", bad, err)
		}
	}
	var d Duration
	if err := json.Unmarshal([]byte(`"soon"`), &d); err == nil {
		t.Error(`duration "soon" parsed`)
	}
}

func TestCommandIDs(t *testing.T) {
	id := "0a1b2c3d-serve-a.example"
	rid, n, ok := ParseCommandID(CommandID(id, 17))
	if !ok || rid != id || n != 17 {
		t.Errorf("round trip: %q %d %v", rid, n, ok)
	}
	if got := ownerOf(id); got != "serve-a.example" {
		t.Errorf("owner of %s = %q", id, got)
	}
	for _, bad := range []string{"7f3a9c01d2e4b5a6", "ro-", "ro-x", "ro-abc-x", "ro--1"} {
		if _, _, ok := ParseCommandID(bad); ok {
			t.Errorf("ParseCommandID(%q) ok; want not a rollout command", bad)
		}
	}
}

func gz(t *testing.T, b []byte) []byte {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write(b)
	zw.Close()
	return buf.Bytes()
}

// The telemetry readers take the agent's payloads, gzipped or not, and keep only what the
// gates need: deploy events, and per-model counters with errors summed over the stages.
func TestTelemetryParsing(t *testing.T) {
	events := []byte(`{"schema":"edge-agent/events/v1","device":"d1","events":[
		{"seq":1,"type":"health.set","message":"x"},
		{"seq":2,"type":"deploy.rolled-back","model":"sin","version":"1.0.0","message":"rolled-back sin 2.0.0: error rate","ts":"2026-11-24T10:00:00Z"}]}`)
	for _, p := range [][]byte{events, gz(t, events)} {
		obs := parseEvents("d1", p)
		if len(obs) != 1 || obs[0].Type != "deploy.rolled-back" || obs[0].Version != "1.0.0" || obs[0].Kind != KindEvent || obs[0].TS.IsZero() {
			t.Errorf("events: %+v", obs)
		}
	}
	metrics := []byte(`{"schema":"edge-agent/metrics/v1","device":"d1","ts":"2026-11-24T10:00:01Z","models":[
		{"name":"sin","version":"2.0.0","results":90,"preprocess_errors":5,"infer_errors":3,"postprocess_errors":2,"latency_p50_ms":1.5,"latency_p99_ms":9.5}]}`)
	obs := parseMetrics("d1", metrics)
	if len(obs) != 1 || obs[0].Results != 90 || obs[0].Errors != 10 || obs[0].P99MS != 9.5 {
		t.Fatalf("metrics: %+v", obs)
	}
	if l, which := obs[0].latencyMS(); l != 9.5 || which != "p99" {
		t.Errorf("latency without p95: %v %s; want the p99 9.5", l, which)
	}
	obs = parseMetrics("d1", []byte(`{"models":[{"name":"sin","latency_p95_ms":4,"latency_p99_ms":9}]}`))
	if l, which := obs[0].latencyMS(); l != 4 || which != "p95" {
		t.Errorf("latency with p95: %v %s; want 4 p95", l, which)
	}
	if _, ok := parseReply("d1", []byte(`{"id":"7f3a","status":"done"}`)); ok {
		t.Error("a reply to a console command was taken for a rollout's")
	}
	o, ok := parseReply("d1", []byte(`{"id":"ro-0a1b2c3d-a-4","status":"failed","reason":"sha256 mismatch"}`))
	if !ok || o.Rollout != "0a1b2c3d-a" || o.Status != "failed" || o.Reason != "sha256 mismatch" {
		t.Errorf("reply: %+v %v", o, ok)
	}
	for _, junk := range [][]byte{nil, []byte("{"), {0x1f, 0x8b, 1, 2}} {
		if parseEvents("d1", junk) != nil || len(parseMetrics("d1", junk)) != 0 {
			t.Errorf("junk %q gave observations", junk)
		}
	}
}

// The state file is replaced whole: after a save only the new file is there (no temporary
// left behind), it reads back equal, and a damaged or foreign file is refused with what to do.
func TestStateFileRoundTrip(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "serve.json")
	if rs, err := loadState(path); err != nil || rs != nil {
		t.Fatalf("missing state file: %v, %v; want empty", rs, err)
	}
	now := time.Date(2026, 11, 24, 10, 0, 0, 0, time.UTC)
	r := &Rollout{ID: "0a1b2c3d-a", Owner: "a", State: StateRunning, Phase: PhaseSoaking, Stages: []Stage{{Percent: 50, Devices: 1, StartedAt: &now}, {Percent: 100, Devices: 2}},
		Devices: []*Device{{ID: "d1", Commands: []string{"ro-0a1b2c3d-a-0"}, Outcome: "done"}, {ID: "d2", Stage: 1}},
		Gates:   Gates{Soak: Duration(time.Second), StageTimeout: Duration(time.Minute)}, NextCmd: 1, Created: now}
	for range 3 {
		if err := saveState(path, "a", []*Rollout{r}); err != nil {
			t.Fatal(err)
		}
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("folder holds %d entries after saving; want only the state file", len(entries))
	}
	rs, err := loadState(path)
	if err != nil || len(rs) != 1 {
		t.Fatalf("load: %v, %v", rs, err)
	}
	a, _ := json.Marshal(r)
	b, _ := json.Marshal(rs[0])
	if !bytes.Equal(a, b) {
		t.Errorf("read back differs:\n%s\n%s", a, b)
	}
	os.WriteFile(path, []byte(`{"schema":"other/v1"}`), 0o600)
	if _, err := loadState(path); err == nil || !strings.Contains(err.Error(), "schema") {
		t.Errorf("foreign schema: %v", err)
	}
	os.WriteFile(path, []byte(`{"schema":"edgectl/serve-state/v1","rollouts":[{`), 0o600)
	if _, err := loadState(path); err == nil || !strings.Contains(err.Error(), "move it away") {
		t.Errorf("torn file: %v", err)
	}
}
