//go:build cgo

package main

import (
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/edge-agent/edge-agent/agent"
	"github.com/edge-agent/edge-agent/internal/bundletest"
	"github.com/edge-agent/edge-agent/internal/testenv"
	"github.com/edge-agent/edge-agent/models/bundle"
)

// edgectl deploy without --url pushes the bundle over MQTT: two real agents in group g
// receive it in chunks, verify and serve it, with progress bars and exit status 0. A bundle
// signed with a key the agents do not trust is refused by both: exit status 1.
func TestDeployPushesOverMQTT(t *testing.T) {
	broker := testenv.MosquittoWith(t, testenv.BrokerConfig{})
	f := bundletest.NewFleet(t)
	ck := newCommandKey(t)
	pad := make([]byte, 500<<10) // a bundle of about 510 KiB: two 256 KiB chunks
	rand.Read(pad)
	padded := func(m *bundle.Manifest) { m.Notes = base64.StdEncoding.EncodeToString(pad) }
	v1 := f.Pack(t, bundletest.Opt{Version: "1.0.0", Seq: 1, Edit: padded})
	agents := map[string]*agent.Agent{}
	states := map[string]string{}
	for _, dev := range []string{"push-a", "push-b"} {
		states[dev] = t.TempDir()
		agents[dev] = startAgent(t, fmt.Sprintf(`
device: %s
state_dir: %s
bundles: {trusted_keys: [%s]}
%s
probation: {inferences: 5}
mqtt: {broker: %s, groups: [g], backoff_min: 50ms, backoff_max: 200ms}
sources:
  - {name: sweep, kind: synthetic, rate: 200, synthetic: {wave: sine, phase: true, offset: -3.14159}}
models:
  - {name: sin, sources: [sweep]}
`, dev, states[dev], f.Pub.String(), ck.Line(), broker.URL))
	}
	for dev, a := range agents {
		eventually(t, dev+" online", func() bool { return strings.Contains(fmt.Sprint(a.FleetStats()["mqtt"]), "online") })
	}
	conn := ck.Conn(t, broker.URL)

	code, out, errOut := edgectl(t, append([]string{"deploy", "--group", "g", v1, "--wait-for", "2", "--timeout", "60s"}, conn...)...)
	if code != 0 {
		t.Fatalf("exit %d; want 0\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	if !strings.Contains(out, "2 done, 0 failed") || !strings.Contains(out, "[") || !strings.Contains(out, "received") {
		t.Errorf("deploy output does not show progress bars and both devices done:\n%s", out)
	}
	if !strings.Contains(errOut, "to 2 devices") {
		t.Errorf("stderr does not say the bundle was pushed to both devices:\n%s", errOut)
	}
	for dev, a := range agents {
		eventually(t, dev+" serving 1.0.0", func() bool {
			s := a.Pipeline().Serving("sin")
			return s != nil && s.Version == "1.0.0"
		})
	}

	untrusted := bundletest.NewFleet(t)
	forged := untrusted.Pack(t, bundletest.Opt{Version: "1.1.0", Seq: 2, Edit: padded})
	code, out, errOut = edgectl(t, append([]string{"deploy", "--group", "g", forged, "--wait-for", "2", "--timeout", "60s", "--json"}, conn...)...)
	if code != 1 {
		t.Fatalf("untrusted bundle: exit %d; want 1\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	last := lastStatus(jsonLines(t, out))
	for dev, a := range agents {
		if r := last[dev]; r == nil || r["status"] != "failed" || !strings.Contains(fmt.Sprint(r["reason"]), "sign") {
			t.Errorf("%s: last reply %v; want failed, naming the signature", dev, r)
		}
		if s := a.Pipeline().Serving("sin"); s == nil || s.Version != "1.0.0" {
			t.Errorf("%s serves %v after the refused bundle; want 1.0.0", dev, s)
		}
		if left, _ := filepath.Glob(filepath.Join(states[dev], "downloads", "*")); len(left) != 0 {
			t.Errorf("%s kept %v after the refusal; want the pushed files deleted", dev, left)
		}
	}
}
