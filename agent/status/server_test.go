//go:build cgo

package status_test

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edge-agent/edge-agent/agent"
	"github.com/edge-agent/edge-agent/agent/config"
	"github.com/edge-agent/edge-agent/agent/status"
	"github.com/edge-agent/edge-agent/internal/testenv"
)

// /healthz answers while the process serves; /readyz only when a model serves and the
// outbox takes results, with the reason otherwise: here no model loads, then the outbox
// fills under a policy that refuses new results.
func TestHealthAndReadiness(t *testing.T) {
	broken := filepath.Join(t.TempDir(), "broken.tflite")
	os.WriteFile(broken, []byte("not a model"), 0o644)
	r := startAgent(t, "models:\n  - {name: broken, path: "+broken+"}")
	if code, body := r.call(t, http.MethodGet, "/healthz", nil); code != http.StatusOK || !strings.Contains(string(body), "ok") {
		t.Errorf("/healthz: %d %s", code, body)
	}
	code, body := r.call(t, http.MethodGet, "/readyz", nil)
	if code != http.StatusServiceUnavailable || !strings.Contains(string(body), "no model has a loaded version") {
		t.Errorf("/readyz with no model loaded: %d %s; want 503 with the reason", code, body)
	}
	if v := mustMetric(t, r.scrape(t), "edge_agent_ready"); v != 0 {
		t.Errorf("edge_agent_ready = %v; want 0", v)
	}

	full := startAgent(t, `
outbox: {max_results: 5, policy: drop-newest}
sources:
  - {name: digits, kind: file, queue: 16, file: {path: `+digitsDir(t)+`, poll: 50ms}}
models:`+strings.Replace(mnistModel, "workers: 2", "workers: 2\n    sources: [digits]\n    queue: 16", 1))
	eventually(t, "the outbox to fill and /readyz to say so", func() bool {
		code, body := full.call(t, http.MethodGet, "/readyz", nil)
		return code == http.StatusServiceUnavailable && strings.Contains(string(body), "the outbox is full (5 results")
	})
	if code, _ := full.call(t, http.MethodGet, "/healthz", nil); code != http.StatusOK {
		t.Errorf("/healthz with a full outbox: %d; want 200 (the process serves)", code)
	}
}

// A bearer token guards state-changing requests; predictions and reads need none. Requests
// naming a host other than loopback are refused on a loopback listener (DNS rebinding),
// and the page allows no script but its own.
func TestSecurity(t *testing.T) {
	token := filepath.Join(t.TempDir(), "token")
	os.WriteFile(token, []byte("s3cret-s3cret-s3cret\n"), 0o600)
	r := startAgent(t, "status: {listen: @LISTEN@, token_file: "+token+"}\nmodels:"+mnistModel)
	if code, body := r.call(t, http.MethodPost, "/v1/anything", nil); code != http.StatusUnauthorized || !strings.Contains(string(body), "Bearer") {
		t.Errorf("POST without a token: %d %s; want 401", code, body)
	}
	if code, _ := r.call(t, http.MethodDelete, "/v1/models/mnist", nil, "Authorization", "Bearer wrong-wrong-wrong-wrong"); code != http.StatusUnauthorized {
		t.Errorf("DELETE with a wrong token: %d; want 401", code)
	}
	if code, body := r.call(t, http.MethodPost, "/v1/anything", nil, "Authorization", "Bearer s3cret-s3cret-s3cret"); code != http.StatusNotFound || !json.Valid(body) || !strings.Contains(string(body), "no such endpoint") {
		t.Errorf("POST with the token: %d %s; want it past the guard (404: no such route, as JSON)", code, body)
	}
	if code, body := r.call(t, http.MethodGet, "/nothing/here", nil); code != http.StatusNotFound || !json.Valid(body) {
		t.Errorf("GET of an unknown path: %d %s; want a JSON 404", code, body)
	}
	if code, body := r.call(t, http.MethodPost, "/v1/status", nil, "Authorization", "Bearer s3cret-s3cret-s3cret"); code != http.StatusMethodNotAllowed || !json.Valid(body) || !strings.Contains(string(body), "takes GET") {
		t.Errorf("POST /v1/status: %d %s; want a JSON 405 saying it takes GET", code, body)
	}
	zeros := "[" + strings.TrimSuffix(strings.Repeat("0,", 784), ",") + "]"
	if code, body := r.post(t, "/v1/models/mnist:predict", `{"instances": [`+zeros+`]}`, nil); code != http.StatusOK {
		t.Errorf("predict without a token: %d %s; want 200 (predictions change nothing)", code, body)
	}
	// A web page can post text/plain across origins without asking; predict refuses it.
	if code, body := r.call(t, http.MethodPost, "/v1/models/mnist:predict", strings.NewReader(`{"instances": [`+zeros+`]}`), "Content-Type", "text/plain"); code != http.StatusUnsupportedMediaType || !strings.Contains(string(body), "application/json") {
		t.Errorf("predict as text/plain: %d %s; want 415", code, body)
	}
	if code, body := r.call(t, http.MethodGet, "/metrics", nil, "Host", "attacker.example:8080"); code != http.StatusMisdirectedRequest || !strings.Contains(string(body), "loopback") {
		t.Errorf("foreign Host: %d %s; want 421", code, body)
	}
	req, _ := http.NewRequest(http.MethodGet, r.url+"/", nil)
	resp, err := r.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'self'") || !strings.Contains(csp, "default-src 'none'") {
		t.Errorf("page CSP %q; want only the page's own script", csp)
	}

	// Refusals at start: a reachable address without a token, a weak token.
	if _, err := config.Parse([]byte("status: {listen: \"0.0.0.0:8080\"}"), t.TempDir()); err == nil || !strings.Contains(err.Error(), "status.listen") || !strings.Contains(err.Error(), "token_file") {
		t.Errorf("config with 0.0.0.0 and no token: %v; want an error naming status.listen and token_file", err)
	}
	if _, err := status.New(nil, status.Options{Listen: ":0"}); err == nil || !strings.Contains(err.Error(), "without a bearer token") {
		t.Errorf("status.New on every interface without a token: %v; want a refusal", err)
	}
	weak := filepath.Join(t.TempDir(), "weak")
	os.WriteFile(weak, []byte("1234"), 0o600)
	cfg, err := config.Parse([]byte("device: d\nstate_dir: "+t.TempDir()+"\nstatus: {listen: \"0.0.0.0:0\", token_file: "+weak+"}"), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	a, err := agent.New(cfg, agent.Options{Logger: slog.New(slog.DiscardHandler)})
	if err == nil {
		a.Close()
	}
	if err == nil || !strings.Contains(err.Error(), "status.token_file") {
		t.Errorf("agent with a 4-character token: %v; want a refusal naming status.token_file", err)
	}
}

// The live stream sends the whole view with its history first, then one update a second;
// at most 16 streams are open at once, and a closed one frees its slot.
func TestLiveStream(t *testing.T) {
	testenv.NoGoroutineLeaks(t)
	r := startAgent(t, `
sources:
  - {name: digit, kind: file, rate: 20, file: {path: @TESTDATA@/mnist_digit_4.png, loop: true}}
models:`+strings.Replace(mnistModel, "workers: 2", "workers: 2\n    sources: [digit]", 1))
	type update struct {
		Models []struct {
			Name    string `json:"name"`
			Results uint64 `json:"results"`
		} `json:"models"`
		History []json.RawMessage `json:"history"`
		Point   *struct {
			T int64 `json:"t"`
		} `json:"point"`
		Rates map[string]float64 `json:"rates"`
	}
	open := func() (*http.Response, *bufio.Reader) {
		resp, err := r.client.Get(r.url + "/events")
		if err != nil {
			t.Fatal(err)
		}
		return resp, bufio.NewReader(resp.Body)
	}
	next := func(br *bufio.Reader) update {
		for {
			line := readLine(t, br)
			if data, ok := strings.CutPrefix(line, "data: "); ok {
				var u update
				if err := json.Unmarshal([]byte(data), &u); err != nil {
					t.Fatalf("event is not JSON: %v\n%s", err, data)
				}
				return u
			}
		}
	}
	resp, br := open()
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("Content-Type %q", ct)
	}
	first := next(br)
	if len(first.History) == 0 || first.Point != nil {
		t.Errorf("first event has %d history points and point %v; want the history and no point", len(first.History), first.Point)
	}
	last := first
	for i := range 3 {
		u := next(br)
		if u.Point == nil || len(u.History) != 0 || len(u.Models) != 1 {
			t.Fatalf("update %d: %+v; want one point and no history", i, u)
		}
		if u.Models[0].Results < last.Models[0].Results {
			t.Fatalf("results went back from %d to %d", last.Models[0].Results, u.Models[0].Results)
		}
		last = u
	}
	if last.Models[0].Results <= first.Models[0].Results || last.Rates["mnist"] <= 0 {
		t.Errorf("results %d → %d, rate %v: the stream does not follow the agent", first.Models[0].Results, last.Models[0].Results, last.Rates["mnist"])
	}

	streams := []*http.Response{resp}
	defer func() {
		for _, s := range streams {
			s.Body.Close()
		}
	}()
	for range 15 {
		s, br := open()
		next(br)
		streams = append(streams, s)
	}
	code, body := r.call(t, http.MethodGet, "/events", nil)
	if code != http.StatusServiceUnavailable || !strings.Contains(string(body), "too many live streams open (16)") {
		t.Fatalf("17th stream: %d %s; want 503", code, body)
	}
	streams[0].Body.Close()
	eventually(t, "a closed stream to free its slot", func() bool {
		v, _ := metric(r.scrape(t), "edge_agent_status_streams")
		return v == 15
	})
	s, br := open()
	streams[0] = s
	if u := next(br); len(u.History) == 0 {
		t.Error("a new stream after one closed got no history")
	}
	if v := mustMetric(t, r.scrape(t), "edge_agent_status_streams_refused_total"); v != 1 {
		t.Errorf("streams refused = %v; want 1", v)
	}
}

// On a listener other machines reach, every route needs the token: the page, /metrics,
// /v1/status (broker, models, reasons), health and predict; with it they answer.
func TestEveryRouteNeedsTheTokenOffLoopback(t *testing.T) {
	token := filepath.Join(t.TempDir(), "token")
	os.WriteFile(token, []byte("s3cret-s3cret-s3cret\n"), 0o600)
	r := startAgent(t, fmt.Sprintf("status: {listen: \"0.0.0.0:%d\", token_file: %s}\nmodels:%s", testenv.FreePort(t), token, mnistModel))
	zeros := "[" + strings.TrimSuffix(strings.Repeat("0,", 784), ",") + "]"
	predict := `{"instances": [` + zeros + `]}`
	for _, c := range []struct{ method, path, body string }{
		{http.MethodGet, "/", ""}, {http.MethodGet, "/metrics", ""}, {http.MethodGet, "/v1/status", ""},
		{http.MethodGet, "/healthz", ""}, {http.MethodGet, "/v1/models/mnist", ""},
		{http.MethodPost, "/v1/models/mnist:predict", predict},
	} {
		code, body := r.call(t, c.method, c.path, strings.NewReader(c.body), "Content-Type", "application/json")
		if code != http.StatusUnauthorized || !strings.Contains(string(body), "reachable from other machines") {
			t.Errorf("%s %s without the token: %d %s; want 401", c.method, c.path, code, body)
		}
		code, body = r.call(t, c.method, c.path, strings.NewReader(c.body), "Content-Type", "application/json", "Authorization", "Bearer s3cret-s3cret-s3cret")
		if code != http.StatusOK {
			t.Errorf("%s %s with the token: %d %s; want 200", c.method, c.path, code, body)
		}
	}
}

// With status.tls_cert and tls_key the server speaks HTTPS only.
func TestStatusOverTLS(t *testing.T) {
	dir := t.TempDir()
	cert, key := selfSigned(t, dir)
	r := startAgent(t, "status: {listen: @LISTEN@, tls_cert: "+cert+", tls_key: "+key+"}\nmodels:"+mnistModel)
	if code, body := r.call(t, http.MethodGet, "/v1/status", nil); code != http.StatusOK {
		t.Fatalf("GET /v1/status over TLS: %d %s", code, body)
	}
	plain := strings.Replace(r.url, "https://", "http://", 1)
	resp, err := http.Get(plain + "/v1/status")
	if err == nil {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			t.Errorf("plain HTTP answered 200 on a TLS listener: %s", b)
		}
	}
	if _, err := config.Parse([]byte("status: {tls_cert: "+cert+"}"), dir); err == nil || !strings.Contains(err.Error(), "tls_key") {
		t.Errorf("tls_cert without tls_key: %v; want a refusal naming tls_key", err)
	}
}

// selfSigned writes a self-signed certificate for 127.0.0.1 and its key as PEM files.
func selfSigned(t *testing.T, dir string) (certFile, keyFile string) {
	t.Helper()
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "edge-agent test"},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &priv.PublicKey, priv)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600)
	return certFile, keyFile
}
