//go:build cgo

package agent_test

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"

	"github.com/edge-agent/edge-agent/agent"
	"github.com/edge-agent/edge-agent/agent/config"
	"github.com/edge-agent/edge-agent/agent/result"
	"github.com/edge-agent/edge-agent/internal/testenv"
)

const statusModel = `
sources:
  - {name: digit, kind: file, rate: 20, file: {path: @TESTDATA@/mnist_digit_5.png, loop: true}}
models:
  - name: mnist
    path: @TESTDATA@/mnist_model.tflite
    sources: [digit]
    input: {image: {resize: area, color: grey, std: [255]}}
    output: {kind: classification}
`

// A status port that is taken does not stop the agent: it serves its models and says why
// the page is missing in a warning condition.
func TestStatusServerPortTakenIsAWarning(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	r := start(t, "status: {listen: "+ln.Addr().String()+"}"+statusModel)
	waitFor(t, "the status condition", func() bool {
		c, ok := r.a.Health().Get("status")
		return ok && strings.Contains(c.Message, "the local status server is not running") && strings.Contains(c.Message, "address already in use")
	})
	waitFor(t, "mnist results", func() bool { return len(r.sink.byModel("mnist")) >= 3 })
}

type statusView struct {
	Security struct {
		Commands string              `json:"commands"`
		Detail   string              `json:"detail"`
		Keys     map[string][]string `json:"keys"`
		Shared   []string            `json:"shared_key_roles"`
	} `json:"security"`
	Device string         `json:"device"`
	Events []result.Event `json:"events"`
	Ready  bool           `json:"ready"`
	Models []struct {
		Name    string `json:"name"`
		Results uint64 `json:"results"`
	} `json:"models"`
}

func getStatus(t *testing.T, url string) statusView {
	t.Helper()
	code, b := httpGet(t, url+"/v1/status")
	var v statusView
	if code != http.StatusOK || json.Unmarshal(b, &v) != nil {
		t.Fatalf("/v1/status: %d %s", code, b)
	}
	return v
}

// httpGet returns the status code and body of a GET.
func httpGet(t *testing.T, url string) (int, []byte) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// The page's recent events are the agent's own, in order, kept to the last 100 however
// many are emitted; the server answers on the configured address and stops with the agent.
func TestStatusServerShowsRecentEvents(t *testing.T) {
	addr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	r := start(t, "device: status-ev\nstatus: {listen: \""+addr+"\"}"+statusModel)
	url := "http://" + addr
	waitFor(t, "the status server", func() bool {
		resp, err := http.Get(url + "/readyz")
		if err == nil {
			resp.Body.Close()
		}
		return err == nil && resp.StatusCode == http.StatusOK
	})
	v := getStatus(t, url)
	if v.Device != "status-ev" || !v.Ready || len(v.Events) == 0 || v.Events[0].Type != "agent.started" {
		t.Fatalf("/v1/status: %+v; want device status-ev, ready, first event agent.started", v)
	}
	for i := range 150 {
		r.a.Event(result.Event{Type: "test.tick", Message: fmt.Sprint(i)})
	}
	v = getStatus(t, url)
	if n := len(v.Events); n != 100 || v.Events[n-1].Message != "149" || v.Events[0].Message != "50" {
		t.Fatalf("%d events, first %q last %q; want the last 100 (50..149)", n, v.Events[0].Message, v.Events[n-1].Message)
	}
	r.stop()
	if _, err := http.Get(url + "/healthz"); err == nil {
		t.Error("the status server still answers after the agent stopped")
	}
}

// A token file that is missing stops the agent at start, naming the setting.
func TestStatusTokenFileIsCheckedAtStart(t *testing.T) {
	dir := t.TempDir()
	cfg, err := config.Parse([]byte("state_dir: "+dir+"\nstatus: {listen: \"0.0.0.0:0\", token_file: missing-token}"), dir)
	if err != nil {
		t.Fatal(err)
	}
	a, err := agent.New(cfg, agent.Options{Logger: slog.New(slog.DiscardHandler)})
	if err == nil {
		a.Close()
	}
	if err == nil || !strings.Contains(err.Error(), "status.token_file") || !strings.Contains(err.Error(), filepath.Join(dir, "missing-token")) {
		t.Fatalf("agent.New: %v; want an error naming status.token_file and the file", err)
	}
}
