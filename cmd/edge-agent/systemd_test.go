//go:build cgo

package main

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/edge-agent/edge-agent/internal/mqtttest"
	"github.com/edge-agent/edge-agent/internal/testenv"
)

// The unit file passes systemd-analyze verify. Its ExecStart binary does not exist on this
// machine (/opt/edge-agent/bin is the packages' place), so the check runs on a copy whose only
// change is that path, pointing at a real build.
func TestUnitFileVerifies(t *testing.T) {
	tool, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Fatal("systemd-analyze is not installed: apt-get install systemd (scripts/deps.sh does)")
	}
	unit, err := os.ReadFile(filepath.Join(testenv.Root(t), "systemd", "edge-agent.service"))
	if err != nil {
		t.Fatal(err)
	}
	text := string(unit)
	for _, want := range []string{
		"Type=notify", "WatchdogSec=", "Restart=on-failure", "NoNewPrivileges=yes", "ProtectSystem=strict",
		"PrivateTmp=yes", "User=edge-agent", "SupplementaryGroups=video plugdev",
		"ReadWritePaths=/var/lib/edge-agent /opt/edge-agent/bin",
		"ExecStart=/opt/edge-agent/bin/edge-agent run --config /etc/edge-agent/config.yaml",
		"ExecStartPre=-/opt/edge-agent/bin/edge-agent.previous guard --exe /opt/edge-agent/bin/edge-agent",
		"RestartForceExitStatus=75",
	} {
		if !strings.Contains(text, "\n"+want) {
			t.Errorf("the unit has no line starting %q", want)
		}
	}
	bin := buildAgent(t)
	dir := t.TempDir()
	copyPath := filepath.Join(dir, "edge-agent.service")
	text = strings.ReplaceAll(text, "/opt/edge-agent/bin/edge-agent.previous ", bin+" ")
	os.WriteFile(copyPath, []byte(strings.ReplaceAll(text, "/opt/edge-agent/bin/edge-agent ", bin+" ")), 0o644)
	out, err := exec.Command(tool, "verify", copyPath).CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
}

// systemd-analyze security rates the unit's exposure at 2.5 or lower, with the devices the
// agent needs still allowed (cameras, USB and PCIe Edge TPUs, I2C) and the folders
// self-update writes still writable.
func TestUnitFileSecurityExposure(t *testing.T) {
	tool, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Fatal("systemd-analyze is not installed: apt-get install systemd (scripts/deps.sh does)")
	}
	path := filepath.Join(testenv.Root(t), "systemd", "edge-agent.service")
	out, err := exec.Command(tool, "security", "--offline=yes", path).CombinedOutput()
	if err != nil {
		t.Fatalf("systemd-analyze security: %v\n%s", err, out)
	}
	m := regexp.MustCompile(`Overall exposure level for edge-agent.service: ([0-9.]+)`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("no exposure level in:\n%s", out)
	}
	if level, _ := strconv.ParseFloat(string(m[1]), 64); level > 2.5 {
		t.Errorf("exposure level %.1f; want at most 2.5:\n%s", level, out)
	}
	unit, _ := os.ReadFile(path)
	for _, want := range []string{"DeviceAllow=char-video4linux rw", "DeviceAllow=char-usb_device rw", "DeviceAllow=char-apex rw",
		"DeviceAllow=char-i2c rw", "ReadWritePaths=/var/lib/edge-agent /opt/edge-agent/bin", "SystemCallErrorNumber=EPERM"} {
		if !strings.Contains(string(unit), "\n"+want+"\n") {
			t.Errorf("the unit has no line %q", want)
		}
	}
}

// notifySocket collects sd_notify datagrams as systemd's NOTIFY_SOCKET would.
type notifySocket struct {
	path string
	mu   sync.Mutex
	msgs []string
}

func listenNotify(t *testing.T) *notifySocket {
	t.Helper()
	n := &notifySocket{path: filepath.Join(t.TempDir(), "notify.sock")}
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: n.path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 4096)
		for {
			k, _, err := conn.ReadFromUnix(buf)
			if err != nil {
				return
			}
			n.mu.Lock()
			n.msgs = append(n.msgs, string(buf[:k]))
			n.mu.Unlock()
		}
	}()
	t.Cleanup(func() { conn.Close(); <-done })
	return n
}

func (n *notifySocket) count(prefix string) int {
	n.mu.Lock()
	defer n.mu.Unlock()
	c := 0
	for _, m := range n.msgs {
		if strings.HasPrefix(m, prefix) {
			c++
		}
	}
	return c
}

// Type=notify as systemd speaks it: READY=1 only once a model serves, WATCHDOG=1 every half
// WATCHDOG_USEC, STOPPING=1 on SIGTERM; an agent whose model never loads is alive (pings)
// but never ready.
func TestSystemdNotifyProtocol(t *testing.T) {
	bin := buildAgent(t)
	run := func(model string) (*notifySocket, *exec.Cmd, *testenv.LockedBuffer) {
		n := listenNotify(t)
		cfg := filepath.Join(t.TempDir(), "config.yaml")
		os.WriteFile(cfg, []byte(`state_dir: `+t.TempDir()+`
stdout: false
sources:
  - {name: sweep, kind: synthetic, rate: 50, synthetic: {wave: sine}}
models:
  - {name: sin, path: `+model+`, sources: [sweep], output: {kind: regression, regression: {names: [y]}}}
`), 0o644)
		cmd := exec.Command(bin, "run", "--config", cfg)
		cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+n.path, "WATCHDOG_USEC=400000")
		logs := &testenv.LockedBuffer{}
		cmd.Stderr = logs
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		return n, cmd, logs
	}

	n, cmd, logs := run(testenv.Data(t, "sin_model.tflite"))
	mqtttest.WaitFor(t, 20*time.Second, "READY=1", func() bool { return n.count("READY=1") == 1 })
	if !strings.Contains(logs.String(), `msg="model loaded"`) {
		t.Errorf("READY=1 came before the model loaded:\n%s", logs)
	}
	w := n.count("WATCHDOG=1")
	mqtttest.WaitFor(t, 10*time.Second, "3 more watchdog pings", func() bool { return n.count("WATCHDOG=1") >= w+3 })
	cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("exit after SIGTERM: %v\n%s", err, logs)
	}
	if n.count("STOPPING=1") != 1 {
		t.Errorf("STOPPING=1 sent %d times; want once", n.count("STOPPING=1"))
	}

	n, _, _ = run(filepath.Join(t.TempDir(), "missing.tflite"))
	mqtttest.WaitFor(t, 10*time.Second, "watchdog pings from an agent with no model", func() bool { return n.count("WATCHDOG=1") >= 5 })
	if n.count("READY=1") != 0 {
		t.Error("READY=1 from an agent whose model did not load")
	}
}
