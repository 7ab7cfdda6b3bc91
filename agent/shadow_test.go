//go:build cgo

package agent_test

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/edge-agent/edge-agent/agent/result"
	"github.com/edge-agent/edge-agent/internal/bundletest"
	"github.com/edge-agent/edge-agent/internal/mqtttest"
	"github.com/edge-agent/edge-agent/internal/testenv"
	"github.com/edge-agent/edge-agent/models/spec"
)

// Shadow figures for two known models: mnist read as usual (v1) and mnist fed the inverted
// picture (v2, a different model in effect: most digits change class). The shadow test's
// top-1 agreement and mean absolute difference must equal what the test computes itself from
// each version's published results on the same ten pictures (v1 while it serves with v2 in
// shadow, v2 after promote).
func TestShadowFiguresForTwoKnownModels(t *testing.T) {
	broker := testenv.MosquittoWith(t, testenv.BrokerConfig{})
	con := newConsole(t, broker.URL)
	f := bundletest.NewFleet(t)
	proc := func(invert bool) spec.Model {
		return spec.Model{
			Input:  spec.Input{Kind: "image", Image: spec.Image{Resize: "area", Color: "grey", Std: []float64{255}, Invert: invert}},
			Output: spec.Output{Kind: spec.OutputClassification, Classification: spec.Classification{TopK: 10}},
		}
	}
	mnist := testenv.Data(t, "mnist_model.tflite")
	v1 := f.Pack(t, bundletest.Opt{Name: "digits", Version: "1.0.0", Seq: 1, ModelPath: mnist, Proc: proc(false)})
	v2 := f.Pack(t, bundletest.Opt{Name: "digits", Version: "2.0.0", Seq: 2, ModelPath: mnist, Proc: proc(true)})
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
	pictures := t.TempDir()
	r := start(t, fmt.Sprintf(`
device: shadow-1
state_dir: %s
bundles: {trusted_keys: [%s]}
%s
probation: {inferences: 5}
mqtt: {broker: %s, backoff_min: 50ms, backoff_max: 200ms}
sources:
  - {name: cam, kind: file, queue: 16, file: {path: %s, poll: 50ms}}
models:
  - {name: digits, sources: [cam], queue: 16}
`, t.TempDir(), f.Pub.String(), con.keys(), broker.URL, pictures))
	mqtttest.WaitFor(t, 20*time.Second, "the agent online", func() bool {
		return strings.Contains(fmt.Sprint(r.a.FleetStats()["mqtt"]), "online")
	})
	run := func(id, typ, args string) {
		t.Helper()
		con.send("edge/shadow-1/cmd", con.cmd(id, typ, args))
		if rs := con.final(id); rs[len(rs)-1]["status"] != "done" {
			t.Fatalf("%s %s: %v", typ, args, rs[len(rs)-1])
		}
	}
	run("d1", "deploy", fmt.Sprintf(`{"url":%q,"sha256":%q}`, srv.URL+"/v1", sum(v1)))
	run("d2", "deploy", fmt.Sprintf(`{"url":%q,"sha256":%q}`, srv.URL+"/v2", sum(v2)))
	run("rb", "rollback", `{"model":"digits","version":"1.0.0"}`)
	run("sh", "ab", `{"model":"digits","version":"2.0.0","mode":"shadow"}`)

	// Ten pictures, each once, into a folder the source watches; results keyed by digit.
	feed := func(prefix string) map[string]result.Result {
		t.Helper()
		mark := len(r.sink.byModel("digits"))
		for d := range 10 {
			b, err := os.ReadFile(testenv.Data(t, fmt.Sprintf("mnist_digit_%d.png", d)))
			if err != nil {
				t.Fatal(err)
			}
			os.WriteFile(filepath.Join(pictures, fmt.Sprintf("%s_%d.png", prefix, d)), b, 0o644)
		}
		waitFor(t, "10 results for "+prefix, func() bool { return len(r.sink.byModel("digits")) >= mark+10 })
		out := map[string]result.Result{}
		digit := regexp.MustCompile(`_(\d)\.png$`)
		for _, res := range r.sink.byModel("digits")[mark:] {
			out[digit.FindStringSubmatch(res.InputRef)[1]] = res
		}
		return out
	}
	a := feed("shadow")
	x := r.a.Pipeline().Stats()[0].Experiment
	if x == nil || x.Compared != 10 || x.Top1Compared != 10 {
		t.Fatalf("experiment after 10 pictures: %+v; want 10 compared", x)
	}
	run("pr", "promote", `{"model":"digits"}`)
	b := feed("promoted")

	agree, mad := 0, 0.0
	for d := range 10 {
		ra, rb := a[fmt.Sprint(d)], b[fmt.Sprint(d)]
		if ra.Version != "1.0.0" || rb.Version != "2.0.0" || len(ra.Classes) != 10 || len(rb.Classes) != 10 {
			t.Fatalf("digit %d: %s %v / %s %v; want all 10 classes of 1.0.0 and 2.0.0", d, ra.Version, ra.Classes, rb.Version, rb.Classes)
		}
		if ra.Classes[0].Index == rb.Classes[0].Index {
			agree++
		}
		sa, sb := make([]float64, 10), make([]float64, 10)
		for i := range 10 {
			sa[ra.Classes[i].Index], sb[rb.Classes[i].Index] = ra.Classes[i].Score, rb.Classes[i].Score
		}
		diff := 0.0
		for i := range 10 {
			diff += math.Abs(sa[i] - sb[i])
		}
		mad += diff / 10
	}
	mad /= 10
	t.Logf("two versions agree on %d of 10 digits, mean absolute difference %.4f", agree, mad)
	if agree == 10 || mad == 0 {
		t.Fatal("the two versions give the same outputs: the test cannot tell anything")
	}
	if x.Top1Agree != uint64(agree) || math.Abs(x.Agreement-float64(agree)/10) > 1e-12 || math.Abs(x.MeanAbsDiff-mad) > 1e-6 {
		t.Errorf("shadow figures: agree %d (%.2f), mean abs diff %.6f; computed from the results: %d, %.6f",
			x.Top1Agree, x.Agreement, x.MeanAbsDiff, agree, mad)
	}
}
