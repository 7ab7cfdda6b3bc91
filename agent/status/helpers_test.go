//go:build cgo

package status_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/edge-agent/edge-agent/agent"
	"github.com/edge-agent/edge-agent/agent/config"
	"github.com/edge-agent/edge-agent/internal/testenv"

	_ "github.com/edge-agent/edge-agent/agent/infer/tflite"
	_ "github.com/edge-agent/edge-agent/hal/sensor/all"
)

// Model blocks the tests share: the processing agent/agent_test.go uses for the same files.
const (
	mnistModel = `
  - name: mnist
    path: @TESTDATA@/mnist_model.tflite
    workers: 2
    input: {image: {resize: area, color: grey, std: [255]}}
    output: {kind: classification, classification: {top_k: 3}}`
	ssdModel = `
  - name: ssd
    path: @TESTDATA@/ssd_mobilenet_detect.tflite
    input: {image: {resize: bilinear, color: rgb, mean: [127.5], std: [127.5]}}
    output:
      kind: detection
      labels_file: @TESTDATA@/ssd_labelmap.txt
      label_offset: 1
      detection: {score_threshold: 0.3}`
)

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

// running is a real agent with its status server on a free loopback port.
type running struct {
	a      *agent.Agent
	url    string // http://127.0.0.1:port
	logs   *syncBuffer
	client *http.Client // its own connections, closed when the test ends
}

// startAgent builds and runs an agent from YAML (@TESTDATA@ is the repository's testdata folder,
// @LISTEN@ a free loopback address; without a status block the server listens there) and
// waits until its status server answers /healthz.
func startAgent(t testing.TB, yml string) *running {
	t.Helper()
	listen := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	yml = strings.ReplaceAll(yml, "@TESTDATA@", testenv.DataDir(t))
	yml = strings.ReplaceAll(yml, "@LISTEN@", listen)
	if !strings.Contains(yml, "\nstatus:") && !strings.HasPrefix(yml, "status:") {
		yml += "\nstatus: {listen: " + listen + "}\n"
	}
	dir := t.TempDir()
	cfg, err := config.Parse([]byte(yml), dir)
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	f := false
	cfg.Stdout = &f
	if cfg.StateDir == "/var/lib/edge-agent" {
		cfg.StateDir = dir
		cfg.Outbox.Path = filepath.Join(dir, "outbox.db")
		cfg.ModelsDir = filepath.Join(dir, "models")
		cfg.Inbox = filepath.Join(dir, "inbox")
	}
	r := &running{logs: &syncBuffer{}, url: "http://" + cfg.Status.Addr(), client: &http.Client{Transport: &http.Transport{}, Timeout: time.Minute}}
	if cfg.Status.TLSCert != "" { // trust the server's own (self-signed) certificate
		pem, err := os.ReadFile(cfg.Status.TLSCert)
		if err != nil {
			t.Fatal(err)
		}
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(pem)
		r.url = "https://" + cfg.Status.Addr()
		r.client.Transport = &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}
	}
	r.a, err = agent.New(cfg, agent.Options{Logger: slog.New(slog.NewTextHandler(r.logs, nil)), HealthEvery: 50 * time.Millisecond})
	if err != nil {
		t.Fatalf("agent.New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.a.Run(ctx) }()
	t.Cleanup(func() {
		r.client.CloseIdleConnections()
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("agent.Run: %v", err)
			}
		case <-time.After(20 * time.Second):
			t.Error("agent did not stop within 20s")
		}
		if t.Failed() {
			t.Logf("agent log:\n%s", r.logs.String())
		}
	})
	eventually(t, "the status server to answer /healthz", func() bool {
		resp, err := r.client.Get(r.url + "/healthz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		// 401: up, on a listener where every request needs the token.
		return resp.StatusCode == http.StatusOK || resp.StatusCode == http.StatusUnauthorized
	})
	return r
}

func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	eventuallyWithin(t, 30*time.Second, what, cond)
}

func eventuallyWithin(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	testenv.Eventually(t, within, 20*time.Millisecond, func() string { return what }, cond)
}

// call sends a request to the agent's server and returns the status code and the body.
func (r *running) call(t testing.TB, method, path string, body io.Reader, header ...string) (int, []byte) {
	t.Helper()
	url := r.url + path
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		if header[i] == "Host" {
			req.Host = header[i+1]
		}
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := r.client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", method, url, err)
	}
	return resp.StatusCode, b
}

// post sends v as JSON (a string or []byte as is) and decodes a 200 answer into out (may be
// nil).
func (r *running) post(t testing.TB, path string, v any, out any) (int, string) {
	t.Helper()
	var body []byte
	switch v := v.(type) {
	case string:
		body = []byte(v)
	case []byte:
		body = v
	default:
		var err error
		if body, err = json.Marshal(v); err != nil {
			t.Fatal(err)
		}
	}
	code, b := r.call(t, http.MethodPost, path, bytes.NewReader(body), "Content-Type", "application/json")
	if out != nil && code == http.StatusOK {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("POST %s: answer is not JSON: %v\n%s", path, err, b)
		}
	}
	return code, string(b)
}

// scrape reads /metrics with the Prometheus text parser.
func (r *running) scrape(t testing.TB) map[string]*dto.MetricFamily {
	t.Helper()
	code, body := r.call(t, http.MethodGet, "/metrics", nil)
	if code != http.StatusOK {
		t.Fatalf("GET /metrics: %d %s", code, body)
	}
	// Legacy names: the exposition must parse for any Prometheus, also one before UTF-8 names.
	p := expfmt.NewTextParser(model.LegacyValidation)
	mfs, err := p.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		t.Fatalf("/metrics is not valid Prometheus text: %v\n%s", err, body)
	}
	return mfs
}

// metric is the value of the series of name whose labels include want ("k=v" pairs); ok is
// false when there is none.
func metric(mfs map[string]*dto.MetricFamily, name string, want ...string) (float64, bool) {
	mf, ok := mfs[name]
	if !ok {
		return 0, false
	}
next:
	for _, m := range mf.GetMetric() {
		have := map[string]string{}
		for _, l := range m.GetLabel() {
			have[l.GetName()] = l.GetValue()
		}
		for _, kv := range want {
			k, v, _ := strings.Cut(kv, "=")
			if have[k] != v {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue(), true
		case m.Gauge != nil:
			return m.Gauge.GetValue(), true
		case m.Untyped != nil:
			return m.Untyped.GetValue(), true
		}
	}
	return 0, false
}

// mustMetric is metric, failing the test when the series is missing.
func mustMetric(t testing.TB, mfs map[string]*dto.MetricFamily, name string, want ...string) float64 {
	t.Helper()
	v, ok := metric(mfs, name, want...)
	if !ok {
		t.Fatalf("/metrics has no %s%v", name, want)
	}
	return v
}
