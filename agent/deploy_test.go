//go:build cgo

package agent_test

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edge-agent/edge-agent/agent/deploy"
	"github.com/edge-agent/edge-agent/internal/bundletest"
	"github.com/edge-agent/edge-agent/internal/testenv"
	"github.com/edge-agent/edge-agent/models/bundle"
	"github.com/edge-agent/edge-agent/models/sign"
	"github.com/edge-agent/edge-agent/models/spec"
	"github.com/edge-agent/edge-agent/models/store"
)

type (
	fleet     = bundletest.Fleet
	bundleOpt = bundletest.Opt
)

var (
	newFleet = bundletest.NewFleet
	sinProc  = bundletest.SinProcessing
)

// rewrite copies a (plain tar) bundle through edit, which may change or drop members.
func rewrite(t *testing.T, src string, edit func(h *tar.Header, data []byte) ([]byte, bool)) string {
	t.Helper()
	f, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzipReader(f)
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(zr)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		data, _ := io.ReadAll(tr)
		data, keep := edit(h, data)
		if !keep {
			continue
		}
		h.Size = int64(len(data))
		tw.WriteHeader(h)
		tw.Write(data)
	}
	tw.Close()
	dst := fmt.Sprintf("%s.edited-%d.tar", src, rand.Int())
	os.WriteFile(dst, buf.Bytes(), 0o644)
	return dst
}

const deployConfig = `
trusted_keys: [%s]
state_dir: %s
probation: {inferences: %d, duration: 1h, min_samples: 10}
sources:
  - {name: sweep, kind: synthetic, rate: 400, synthetic: {wave: sine, phase: true, offset: -3.14159}}
models:
  - {name: sin, sources: [sweep], workers: 2}
`

func startDeploy(t testing.TB, f *fleet, stateDir string, probation int) *running {
	return start(t, fmt.Sprintf(deployConfig, f.Pub.String(), stateDir, probation))
}

func versionsSeen(r *running, since int) map[string]int {
	r.sink.mu.Lock()
	defer r.sink.mu.Unlock()
	seen := map[string]int{}
	for _, res := range r.sink.all[since:] {
		seen[res.Version]++
	}
	return seen
}

func serving(r *running) string {
	if s := r.a.Pipeline().Serving("sin"); s != nil {
		return s.Version
	}
	return ""
}

func history(t testing.TB, stateDir string) string {
	st, err := store.OpenReadOnly(filepath.Join(stateDir, "models"))
	if err != nil {
		t.Fatal(err)
	}
	ev, err := st.History("sin", 100)
	if err != nil {
		t.Fatalf("history: %v", err)
	}
	var b strings.Builder
	for _, e := range ev {
		fmt.Fprintf(&b, "%s %s %s\n", e.Event, e.Version, e.Reason)
	}
	return b.String()
}

func TestBundleInstallHotSwapAndProbation(t *testing.T) {
	f := newFleet(t)
	state := t.TempDir()
	r := startDeploy(t, f, state, 50)
	ctx := context.Background()
	if _, err := r.a.Deploy().InstallFile(ctx, f.Pack(t, bundleOpt{Version: "1.0.0", Seq: 1})); err != nil {
		t.Fatalf("install 1.0.0: %v", err)
	}
	waitFor(t, "results from 1.0.0", func() bool { return versionsSeen(r, 0)["1.0.0"] > 20 })
	mark := len(r.sink.byModel("sin"))
	if _, err := r.a.Deploy().InstallFile(ctx, f.Pack(t, bundleOpt{Version: "1.1.0", Seq: 2})); err != nil {
		t.Fatalf("install 1.1.0: %v", err)
	}
	waitFor(t, "probation of 1.1.0 to pass", func() bool { return strings.Contains(history(t, state), "probation-passed 1.1.0") })
	seen := versionsSeen(r, mark)
	if seen["1.1.0"] < 50 {
		t.Fatalf("results after the swap by version %v; want ≥ 50 from 1.1.0", seen)
	}
	for _, st := range r.a.Pipeline().Stats() {
		if st.InferErrors+st.PostErrors+st.PreErrors != 0 {
			t.Fatalf("errors across the swap: %+v", st)
		}
	}
}

// Every bad bundle is refused with its reason; nothing changes and 1.0.0 keeps serving.
func TestBundleRefusalsKeepTheOldVersionServing(t *testing.T) {
	f := newFleet(t)
	state := t.TempDir()
	r := startDeploy(t, f, state, 20)
	ctx := context.Background()
	if _, err := r.a.Deploy().InstallFile(ctx, f.Pack(t, bundleOpt{Version: "1.0.0", Seq: 5})); err != nil {
		t.Fatal(err)
	}
	_, otherKey, _ := sign.GenerateKey()
	garbage := filepath.Join(t.TempDir(), "garbage.tflite")
	os.WriteFile(garbage, bytes.Repeat([]byte("TFL3 not really"), 300), 0o644)
	past := time.Now().Add(-time.Hour)
	good := f.Pack(t, bundleOpt{Version: "2.0.0", Seq: 6})
	plain := rewrite(t, good, func(h *tar.Header, d []byte) ([]byte, bool) { return d, true })
	full, _ := os.ReadFile(plain)
	truncated := filepath.Join(t.TempDir(), "truncated.tar")
	os.WriteFile(truncated, full[:len(full)*2/3], 0o644)
	for _, c := range []struct {
		name   string
		bundle string
		want   error
	}{
		{"signed by an untrusted key", f.Pack(t, bundleOpt{Version: "2.0.0", Seq: 6, Signer: &otherKey}), sign.ErrUntrustedKey},
		{"unsigned", rewrite(t, good, func(h *tar.Header, d []byte) ([]byte, bool) { return d, h.Name != bundle.SignatureName }), bundle.ErrUnsigned},
		{"tampered model file", rewrite(t, good, func(h *tar.Header, d []byte) ([]byte, bool) {
			if h.Name == "model.tflite" {
				d = append([]byte(nil), d...)
				d[len(d)/2] ^= 0xff
			}
			return d, true
		}), bundle.ErrChecksum},
		{"tensors differ from the manifest", f.Pack(t, bundleOpt{Version: "2.0.0", Seq: 6, Edit: func(m *bundle.Manifest) { m.Inputs[0].Shape = []int{1, 2} }}), deploy.ErrCanary},
		{"golden vectors fail", f.Pack(t, bundleOpt{Version: "2.0.0", Seq: 6, Edit: func(m *bundle.Manifest) { m.Golden[1].Outputs[0][0] += 0.5 }}), deploy.ErrCanary},
		{"model does not load", f.Pack(t, bundleOpt{Version: "2.0.0", Seq: 6, ModelPath: garbage}), deploy.ErrCanary},
		{"lower sequence", f.Pack(t, bundleOpt{Version: "0.9.0", Seq: 4}), deploy.ErrDowngrade},
		{"same sequence", f.Pack(t, bundleOpt{Version: "1.0.1", Seq: 5}), deploy.ErrDowngrade},
		{"expired", f.Pack(t, bundleOpt{Version: "2.0.0", Seq: 6, Edit: func(m *bundle.Manifest) { m.Expires = &past }}), bundle.ErrExpired},
		{"needs a newer agent", f.Pack(t, bundleOpt{Version: "2.0.0", Seq: 6, Edit: func(m *bundle.Manifest) { m.MinAgentVersion = "99.0.0" }}), deploy.ErrAgentOld},
		{"model not configured here", f.Pack(t, bundleOpt{Version: "2.0.0", Seq: 6, Edit: func(m *bundle.Manifest) { m.Name = "other" }}), deploy.ErrNotServed},
		{"truncated archive", truncated, bundle.ErrTruncated},
	} {
		mark := len(r.sink.byModel("sin"))
		_, err := r.a.Deploy().InstallFile(ctx, c.bundle)
		if !errors.Is(err, c.want) {
			t.Errorf("%s: err = %v; want %v", c.name, err, c.want)
			continue
		}
		if v := serving(r); v != "1.0.0" {
			t.Fatalf("%s: serving %q after the refusal; want 1.0.0", c.name, v)
		}
		waitFor(t, "results after refusing "+c.name, func() bool { return versionsSeen(r, mark)["1.0.0"] >= 5 })
	}
	st, _ := store.OpenReadOnly(filepath.Join(state, "models"))
	if vs, _ := st.Versions("sin"); len(vs) != 1 {
		t.Errorf("store holds %d versions after refusals; want only 1.0.0", len(vs))
	}
	// Refusals after the signature verified are recorded under the model's name; earlier
	// ones (untrusted, unsigned, tampered, expired, truncated) only in the log, since an
	// unverified manifest's name proves nothing.
	if h := history(t, state); strings.Count(h, "refused") < 6 || !strings.Contains(h, "canary-failed") {
		t.Errorf("history does not record the refusals:\n%s", h)
	}
	// allow_downgrade no longer lets an old sequence back in: replayed, such a bundle would
	// work forever. A rollback is a new release with a higher sequence, whatever its version.
	if _, err := r.a.Deploy().InstallFile(ctx, f.Pack(t, bundleOpt{Version: "0.9.0", Seq: 4, Edit: func(m *bundle.Manifest) { m.AllowDowngrade = true }})); !errors.Is(err, deploy.ErrDowngrade) {
		t.Fatalf("allow_downgrade with sequence 4 under 5: %v; want ErrDowngrade", err)
	}
	if _, err := r.a.Deploy().InstallFile(ctx, f.Pack(t, bundleOpt{Version: "0.9.0", Seq: 7})); err != nil {
		t.Fatalf("rollback release 0.9.0 with sequence 7: %v", err)
	}
	waitFor(t, "0.9.0 serving", func() bool { return serving(r) == "0.9.0" })
}

// Anti-rollback follows the highest sequence ever installed, not the active version: after
// a rollback, a replayed release newer than the active one but not newer than every release
// installed is refused; the mark survives the versions being pruned and a restart; and with
// a damaged mark the highest version still kept stands in: nothing at or below it installs,
// a newer release does and rewrites the mark.
func TestAntiRollbackHighWaterMark(t *testing.T) {
	f := newFleet(t)
	state := t.TempDir()
	r := startDeploy(t, f, state, 20)
	ctx := context.Background()
	v := map[int]string{}
	for seq := 1; seq <= 4; seq++ {
		v[seq] = f.Pack(t, bundleOpt{Version: fmt.Sprintf("1.%d.0", seq), Seq: uint64(seq)})
		if _, err := r.a.Deploy().InstallFile(ctx, v[seq]); err != nil {
			t.Fatalf("install sequence %d: %v", seq, err)
		}
	}
	if err := r.a.Deploy().Rollback(ctx, "sin", "1.3.0"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "1.3.0 serving after the rollback", func() bool { return serving(r) == "1.3.0" })
	// Sequence 1 is pruned from the store by now, 2 and 4 are still kept: all are refused.
	for _, seq := range []int{1, 2, 4} {
		_, err := r.a.Deploy().InstallFile(ctx, v[seq])
		if !errors.Is(err, deploy.ErrDowngrade) || !strings.Contains(err.Error(), "the highest ever installed") {
			t.Errorf("replay of sequence %d with 1.3.0 active: %v; want ErrDowngrade against the highest (4)", seq, err)
		}
	}
	if s := serving(r); s != "1.3.0" {
		t.Errorf("serving %s after the replays; want 1.3.0", s)
	}
	r.stop()
	r = startDeploy(t, f, state, 20)
	if _, err := r.a.Deploy().InstallFile(ctx, v[4]); !errors.Is(err, deploy.ErrDowngrade) {
		t.Errorf("replay of sequence 4 after a restart: %v; want ErrDowngrade", err)
	}
	// Damaged mark: the kept versions (2, 3, 4) say 4.
	r.stop()
	mark := filepath.Join(state, "models", "highest", "sin.json")
	os.WriteFile(mark, []byte("{garbage"), 0o640)
	r = startDeploy(t, f, state, 20)
	if _, err := r.a.Deploy().InstallFile(ctx, v[4]); !errors.Is(err, deploy.ErrDowngrade) {
		t.Errorf("replay of sequence 4 with a damaged mark: %v; want ErrDowngrade against the kept versions", err)
	}
	if s := serving(r); s != "1.3.0" {
		t.Errorf("serving %s after a refused replay; want 1.3.0 still", s)
	}
	v5 := f.Pack(t, bundleOpt{Version: "1.5.0", Seq: 5})
	if _, err := r.a.Deploy().InstallFile(ctx, v5); err != nil {
		t.Errorf("a newer release with a damaged mark: %v; want it installed", err)
	}
	if b, _ := os.ReadFile(mark); !strings.Contains(string(b), `"sequence": 5`) && !strings.Contains(string(b), `"sequence":5`) {
		t.Errorf("mark after the install: %s; want it rewritten with sequence 5", b)
	}
}

// A version that passes its canary (golden inputs are already preprocessed) but fails on
// live frames is rolled back by itself, with the reason: here its preprocessing asks for a
// feature the sensor does not have, so every frame fails.
func TestAutoRollbackOnErrorRate(t *testing.T) {
	f := newFleet(t)
	state := t.TempDir()
	r := startDeploy(t, f, state, 1000)
	ctx := context.Background()
	if _, err := r.a.Deploy().InstallFile(ctx, f.Pack(t, bundleOpt{Version: "1.0.0", Seq: 1})); err != nil {
		t.Fatal(err)
	}
	bad := sinProc
	bad.Input.Vector.Features = []string{"x"} // the synthetic source names its value ch0
	if _, err := r.a.Deploy().InstallFile(ctx, f.Pack(t, bundleOpt{Version: "2.0.0", Seq: 2, Proc: bad})); err != nil {
		t.Fatalf("the bad version should pass its canary: %v", err)
	}
	waitFor(t, "automatic rollback to 1.0.0", func() bool { return strings.Contains(history(t, state), "rolled-back 1.0.0") })
	if v := serving(r); v != "1.0.0" {
		t.Fatalf("serving %q after the rollback; want 1.0.0", v)
	}
	if h := history(t, state); !strings.Contains(h, "auto-rollback: error rate") {
		t.Fatalf("the rollback does not say why:\n%s", h)
	}
	st, _ := store.OpenReadOnly(filepath.Join(state, "models"))
	if p, ok, _ := st.Active("sin"); !ok || p.Version != "1.0.0" || !strings.Contains(p.Reason, "auto-rollback") {
		t.Fatalf("active pointer %+v; want 1.0.0 by auto-rollback", p)
	}
	mark := len(r.sink.byModel("sin"))
	waitFor(t, "1.0.0 serving again", func() bool { return versionsSeen(r, mark)["1.0.0"] >= 20 })
}

// A version whose outputs turn Inf on live frames is rolled back for its NaN/Inf rate: the
// iris classifier fed inputs divided by 1e-38 overflows.
func TestAutoRollbackOnNonFiniteOutputs(t *testing.T) {
	f := newFleet(t)
	state := t.TempDir()
	r := start(t, fmt.Sprintf(`
trusted_keys: [%s]
state_dir: %s
probation: {inferences: 1000, duration: 1h, min_samples: 10}
sources:
  - {name: petals, kind: synthetic, rate: 400, synthetic: {wave: sine, channels: 4, amplitude: 1, offset: 3}}
models:
  - {name: iris, sources: [petals]}
`, f.Pub.String(), state))
	ctx := context.Background()
	iris := testenv.Data(t, "iris.tflite")
	good := spec.Model{Output: spec.Output{Kind: spec.OutputClassification}}
	if _, err := r.a.Deploy().InstallFile(ctx, f.Pack(t, bundleOpt{Name: "iris", Version: "1.0.0", Seq: 1, ModelPath: iris, Proc: good})); err != nil {
		t.Fatal(err)
	}
	bad := good
	bad.Input.Vector.Std = []float64{1e-38, 1e-38, 1e-38, 1e-38}
	if _, err := r.a.Deploy().InstallFile(ctx, f.Pack(t, bundleOpt{Name: "iris", Version: "2.0.0", Seq: 2, ModelPath: iris, Proc: bad})); err != nil {
		t.Fatalf("the bad version should pass its canary: %v", err)
	}
	st, _ := store.OpenReadOnly(filepath.Join(state, "models"))
	waitFor(t, "automatic rollback for NaN/Inf", func() bool {
		ev, _ := st.History("iris", 20)
		for _, e := range ev {
			if e.Event == "rolled-back" && strings.Contains(e.Reason, "NaN/Inf rate") {
				return true
			}
		}
		return false
	})
	if s := r.a.Pipeline().Serving("iris"); s == nil || s.Version != "1.0.0" {
		t.Fatalf("serving %+v after the rollback; want 1.0.0", s)
	}
}

func TestManualRollbackInboxAndRestart(t *testing.T) {
	f := newFleet(t)
	state := t.TempDir()
	r := startDeploy(t, f, state, 20)
	ctx := context.Background()
	for i, v := range []string{"1.0.0", "1.1.0", "1.2.0"} {
		if _, err := r.a.Deploy().InstallFile(ctx, f.Pack(t, bundleOpt{Version: v, Seq: uint64(i + 1)})); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.a.Deploy().Rollback(ctx, "sin", "1.0.0"); err != nil {
		t.Fatalf("rollback to 1.0.0: %v", err)
	}
	if v := serving(r); v != "1.0.0" {
		t.Fatalf("serving %q; want 1.0.0", v)
	}
	// The inbox: a good bundle is installed and removed; a bad one lands in failed/ with why.
	inbox := filepath.Join(state, "inbox")
	good := f.Pack(t, bundleOpt{Version: "1.3.0", Seq: 4})
	data, _ := os.ReadFile(good)
	os.WriteFile(filepath.Join(inbox, "new.tar.gz"), data, 0o644)
	_, other, _ := sign.GenerateKey()
	bad, _ := os.ReadFile(f.Pack(t, bundleOpt{Version: "1.4.0", Seq: 5, Signer: &other}))
	os.WriteFile(filepath.Join(inbox, "evil.tar.gz"), bad, 0o644)
	waitFor(t, "the inbox bundle to serve", func() bool { return serving(r) == "1.3.0" })
	waitFor(t, "the bad bundle to be refused", func() bool {
		b, err := os.ReadFile(filepath.Join(inbox, "failed", "evil.tar.gz.reason"))
		return err == nil && strings.Contains(string(b), "untrusted key")
	})
	// Restart: the active version is restored.
	r.stop()
	r2 := startDeploy(t, f, state, 20)
	waitFor(t, "1.3.0 restored after restart", func() bool { return versionsSeen(r2, 0)["1.3.0"] >= 10 })
}
