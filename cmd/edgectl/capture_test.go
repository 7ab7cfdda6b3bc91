//go:build cgo

package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edge-agent/edge-agent/internal/testenv"
)

// edgectl capture and config against two real agents in a group: capture writes every
// device's samples (JSON, and the PNG of each picture) and exits 0; config sets a live
// setting on the group and shows it, and a refused key exits 1 with the device's reason.
func TestCaptureAndConfig(t *testing.T) {
	broker := testenv.MosquittoWith(t, testenv.BrokerConfig{})
	ck := newCommandKey(t)
	for _, dev := range []string{"cap-a", "cap-b"} {
		digits := t.TempDir()
		for d := range 10 {
			b, err := os.ReadFile(testenv.Data(t, fmt.Sprintf("mnist_digit_%d.png", d)))
			if err != nil {
				t.Fatal(err)
			}
			os.WriteFile(filepath.Join(digits, fmt.Sprintf("d%d.png", d)), b, 0o644)
		}
		a := startAgent(t, fmt.Sprintf(`
device: %s
state_dir: %s
%s
mqtt: {broker: %s, groups: [cams], backoff_min: 50ms, backoff_max: 200ms, batch_wait: 20ms}
sources:
  - {name: digits, kind: file, queue: 16, file: {path: %s, poll: 50ms}}
models:
  - name: mnist
    path: %s
    sources: [digits]
    queue: 16
    input: {image: {resize: area, color: grey, std: [255]}}
    output: {kind: classification, classification: {top_k: 1}}
`, dev, t.TempDir(), ck.Line(), broker.URL, digits, testenv.Data(t, "mnist_model.tflite")))
		eventually(t, dev+" online", func() bool { return strings.Contains(fmt.Sprint(a.FleetStats()["mqtt"]), "online") })
		// Pictures keep coming: a writer adds a copy every so often until the test ends.
		stop := make(chan struct{})
		done := make(chan struct{})
		t.Cleanup(func() { close(stop); <-done })
		go func() {
			defer close(done)
			src, _ := os.ReadFile(testenv.Data(t, "mnist_digit_3.png"))
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				case <-time.After(100 * time.Millisecond):
				}
				os.WriteFile(filepath.Join(digits, fmt.Sprintf("more-%d.png", i)), src, 0o644)
			}
		}()
	}
	conn := ck.Conn(t, broker.URL)

	out := t.TempDir()
	code, stdout, stderr := edgectl(t, append([]string{"capture", "--group", "cams", "--wait-for", "2", "--model", "mnist", "--count", "4", "--out", out, "--timeout", "40s"}, conn...)...)
	if code != 0 {
		t.Fatalf("capture exit %d\nstdout: %s\nstderr: %s", code, stdout, stderr)
	}
	if !strings.Contains(stdout, "wrote 8 samples from 2 devices") {
		t.Errorf("capture output:\n%s", stdout)
	}
	for _, dev := range []string{"cap-a", "cap-b"} {
		js, _ := filepath.Glob(filepath.Join(out, dev, "mnist-*.json"))
		pngs, _ := filepath.Glob(filepath.Join(out, dev, "mnist-*.png"))
		if len(js) != 4 || len(pngs) != 4 {
			t.Fatalf("%s: %d JSON and %d PNG files; want 4 each", dev, len(js), len(pngs))
		}
		for i, p := range pngs {
			b, _ := os.ReadFile(p)
			img, err := png.Decode(bytes.NewReader(b))
			if err != nil || img.Bounds().Dx() != 100 {
				t.Errorf("%s is not the 100x100 picture: %v", p, err)
			}
			var rec struct {
				Device string `json:"device"`
				Model  string `json:"model"`
				Inputs []struct{ Data []byte }
			}
			raw, _ := os.ReadFile(js[i])
			if err := json.Unmarshal(raw, &rec); err != nil || rec.Device != dev || rec.Model != "mnist" || len(rec.Inputs) != 1 || len(rec.Inputs[0].Data) != 784*4 {
				t.Errorf("%s: %v %+v", js[i], err, rec.Device)
			}
		}
	}

	code, stdout, stderr = edgectl(t, append([]string{"config", "--group", "cams", "--wait-for", "2", "--set", "log.level=warn", "--json"}, conn...)...)
	if code != 0 {
		t.Fatalf("config exit %d\nstdout: %s\nstderr: %s", code, stdout, stderr)
	}
	for dev, r := range lastStatus(jsonLines(t, stdout)) {
		res, _ := r["result"].(map[string]any)
		eff, _ := res["effective"].(map[string]any)
		if r["status"] != "done" || eff["log.level"] != "warn" || res["reload"] != false {
			t.Errorf("%s: %v; want done with log.level warn and no reload", dev, r)
		}
	}
	code, stdout, _ = edgectl(t, append([]string{"config", "--device", "cap-a", "--set", "mqtt.broker=tcp://elsewhere:1883"}, conn...)...)
	if code != 1 || !strings.Contains(stdout, "cannot be set by the fleet") {
		t.Errorf("config of mqtt.broker: exit %d, output:\n%s\nwant exit 1 with the device's reason", code, stdout)
	}
}
