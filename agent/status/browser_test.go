//go:build cgo

package status_test

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"image/png"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/edge-agent/edge-agent/internal/testenv"
)

// browser is a headless Chromium driven over the DevTools protocol.
type browser struct {
	t  testing.TB
	ws *websocket.Conn
	id int

	mu     sync.Mutex
	errors []string // exceptions and console errors the page raised
}

// startChromium starts Debian's chromium headless on a free DevTools port and connects to
// its first page. A missing chromium fails the test with how to install it.
func startChromium(t testing.TB) *browser {
	t.Helper()
	bin, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatal("chromium is not installed: run scripts/deps.sh (or apt-get install chromium); the status page test drives a real browser")
	}
	profile := t.TempDir()
	cmd := exec.Command(bin, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
		"--no-first-run", "--no-default-browser-check", "--disable-extensions", "--hide-scrollbars", "--mute-audio",
		"--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0", "--user-data-dir="+profile, "about:blank")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // its helpers are stopped with it
	var stderr syncBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-exited
	})
	// With port 0, Chromium writes the port it took into its profile.
	var port int
	eventually(t, "chromium's DevTools port", func() bool {
		b, err := os.ReadFile(filepath.Join(profile, "DevToolsActivePort"))
		if err != nil {
			select {
			case <-exited:
				t.Fatalf("chromium exited:\n%s", stderr.String())
			default:
			}
			return false
		}
		port, err = strconv.Atoi(strings.TrimSpace(strings.SplitN(string(b), "\n", 2)[0]))
		return err == nil && port > 0
	})
	var targets []struct {
		Type string `json:"type"`
		WS   string `json:"webSocketDebuggerUrl"`
	}
	eventually(t, "chromium's page target", func() bool {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/json/list", port))
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		targets = nil
		if json.NewDecoder(resp.Body).Decode(&targets) != nil {
			return false
		}
		for _, tg := range targets {
			if tg.Type == "page" {
				return true
			}
		}
		return false
	})
	var wsURL string
	for _, tg := range targets {
		if tg.Type == "page" {
			wsURL = tg.WS
			break
		}
	}
	ws, _, err := websocket.DefaultDialer.Dial(wsURL, nil)
	if err != nil {
		t.Fatalf("DevTools websocket: %v", err)
	}
	t.Cleanup(func() { ws.Close() })
	b := &browser{t: t, ws: ws}
	b.call("Runtime.enable", nil, nil)
	b.call("Log.enable", nil, nil)
	b.call("Page.enable", nil, nil)
	return b
}

// call sends one DevTools command and waits for its answer, noting page errors reported
// meanwhile.
func (b *browser) call(method string, params any, out any) {
	b.t.Helper()
	b.id++
	if params == nil {
		params = map[string]any{}
	}
	if err := b.ws.WriteJSON(map[string]any{"id": b.id, "method": method, "params": params}); err != nil {
		b.t.Fatalf("DevTools %s: %v", method, err)
	}
	b.ws.SetReadDeadline(time.Now().Add(60 * time.Second))
	for {
		var msg struct {
			ID     int             `json:"id"`
			Method string          `json:"method"`
			Params json.RawMessage `json:"params"`
			Result json.RawMessage `json:"result"`
			Error  *struct {
				Message string `json:"message"`
			} `json:"error"`
		}
		if err := b.ws.ReadJSON(&msg); err != nil {
			b.t.Fatalf("DevTools %s: %v", method, err)
		}
		switch msg.Method {
		case "Runtime.exceptionThrown":
			b.note("exception: " + string(msg.Params))
		case "Log.entryAdded":
			if strings.Contains(string(msg.Params), `"level":"error"`) {
				b.note("console: " + string(msg.Params))
			}
		}
		if msg.ID != b.id {
			continue
		}
		if msg.Error != nil {
			b.t.Fatalf("DevTools %s: %s", method, msg.Error.Message)
		}
		if out != nil {
			if err := json.Unmarshal(msg.Result, out); err != nil {
				b.t.Fatalf("DevTools %s: %v", method, err)
			}
		}
		return
	}
}

func (b *browser) note(s string) {
	b.mu.Lock()
	b.errors = append(b.errors, s)
	b.mu.Unlock()
}

// eval evaluates a JavaScript expression in the page and returns its value as a string.
func (b *browser) eval(expr string) string {
	b.t.Helper()
	var res struct {
		Result struct {
			Value any `json:"value"`
		} `json:"result"`
		Exception *struct {
			Text string `json:"text"`
		} `json:"exceptionDetails"`
	}
	b.call("Runtime.evaluate", map[string]any{"expression": expr, "returnByValue": true}, &res)
	if res.Exception != nil {
		b.t.Fatalf("evaluate %s: %s", expr, res.Exception.Text)
	}
	if res.Result.Value == nil {
		return ""
	}
	return fmt.Sprint(res.Result.Value)
}

// A real headless Chromium loads the status page, sees the results count change through the
// live stream (as the agent's own counter does), draws the charts without a script error or
// a CSP violation, and takes a screenshot: docs/status-page.png with UPDATE_SCREENSHOT=1,
// else a temporary file that must be a PNG of the page's size.
func TestStatusPageInChromium(t *testing.T) {
	b := startChromium(t)
	broker := testenv.Mosquitto(t)
	r := startAgent(t, `
device: pi-kitchen-01
mqtt: {broker: `+broker.URL+`}
drift: {enabled: true, window: 50}
sources:
  - {name: digits, kind: file, rate: 8, file: {path: @TESTDATA@/mnist_digit_3.png, loop: true}}
  - {name: camera, kind: file, rate: 1, file: {path: @TESTDATA@/ssd_example.jpg, loop: true}}
models:`+strings.Replace(mnistModel, "workers: 2", "workers: 2\n    sources: [digits]", 1)+
		strings.Replace(ssdModel, "name: ssd", "name: ssd\n    sources: [camera]", 1))

	b.call("Emulation.setDeviceMetricsOverride", map[string]any{"width": 1400, "height": 1000, "deviceScaleFactor": 1, "mobile": false}, nil)
	b.call("Page.navigate", map[string]any{"url": r.url + "/"}, nil)
	const cell = `document.querySelector('#models tr[data-model="mnist"] td[data-f="results"]')`
	updates := func() int {
		n, _ := strconv.Atoi(b.eval(`document.body ? (document.body.dataset.updates || "0") : "0"`))
		return n
	}
	results := func() int {
		n, _ := strconv.Atoi(strings.ReplaceAll(b.eval(cell+` ? `+cell+`.textContent : ""`), ",", ""))
		return n
	}
	eventually(t, "the page's first live update", func() bool { return updates() >= 1 })
	first, firstUpdates := results(), updates()
	eventually(t, "the results count on the page to change through the live stream", func() bool {
		return updates() > firstUpdates && results() > first
	})
	if got, agentCount := results(), int(r.a.Pipeline().Stats()[0].Results); got > agentCount || got == 0 {
		t.Errorf("page shows %d mnist results; the agent has %d", got, agentCount)
	}
	if live := b.eval(`document.getElementById('live').textContent`); live != "live" {
		t.Errorf("live badge %q; want live", live)
	}
	if mq := b.eval(`document.getElementById('mqtt-state').textContent`); mq != "online" {
		t.Errorf("MQTT card %q; want online", mq)
	}
	wantUpdates := 5
	if os.Getenv("UPDATE_SCREENSHOT") == "1" {
		wantUpdates = 40 // charts with some history for the README
	}
	eventuallyWithin(t, 2*time.Minute, "a few seconds of chart history", func() bool { return updates() >= wantUpdates })
	height, _ := strconv.Atoi(b.eval(`String(document.documentElement.scrollHeight)`))
	b.call("Emulation.setDeviceMetricsOverride", map[string]any{"width": 1400, "height": height, "deviceScaleFactor": 1, "mobile": false}, nil)
	n := updates()
	eventually(t, "a redraw at the full height", func() bool { return updates() > n })
	var shot struct {
		Data string `json:"data"`
	}
	b.call("Page.captureScreenshot", map[string]any{"format": "png"}, &shot)
	img, err := base64.StdEncoding.DecodeString(shot.Data)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := png.DecodeConfig(bytes.NewReader(img))
	if err != nil || cfg.Width != 1400 || cfg.Height < 900 || len(img) < 30_000 {
		t.Errorf("screenshot: %v, %d×%d, %d bytes; want a 1400-wide PNG of the whole page", err, cfg.Width, cfg.Height, len(img))
	}
	out := filepath.Join(t.TempDir(), "status-page.png")
	if os.Getenv("UPDATE_SCREENSHOT") == "1" {
		out = filepath.Join(testenv.Root(t), "docs", "status-page.png")
	}
	if err := os.WriteFile(out, img, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot %s (%d×%d, %d bytes)", out, cfg.Width, cfg.Height, len(img))
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.errors) > 0 {
		t.Errorf("the page raised errors:\n%s", strings.Join(b.errors, "\n"))
	}
}
