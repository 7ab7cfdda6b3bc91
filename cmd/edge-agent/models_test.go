//go:build cgo

package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/edge-agent/edge-agent/internal/bundletest"
	"github.com/edge-agent/edge-agent/models/sign"
)

func modelsConfig(t *testing.T, f *bundletest.Fleet, withSource bool) string {
	state := t.TempDir()
	src, srcs := "", ""
	if withSource {
		src = "sources:\n  - {name: sweep, kind: synthetic, rate: 100, synthetic: {wave: sine, phase: true, offset: -3.14159}}\n"
		srcs = "sources: [sweep]"
	}
	cfg := filepath.Join(t.TempDir(), "config.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf("device: cli-test\nstate_dir: %s\ntrusted_keys: [%s]\nprobation: {inferences: 5}\n%smodels:\n  - {name: sin, %s}\n", state, f.Pub.String(), src, srcs)), 0o644)
	return cfg
}

func TestModelsInstallListRollbackOffline(t *testing.T) {
	f := bundletest.NewFleet(t)
	cfg := modelsConfig(t, f, false)
	for i, v := range []string{"1.0.0", "1.1.0"} {
		code, out, errOut := cli(t, "models", "install", "--config", cfg, f.Pack(t, bundletest.Opt{Version: v, Seq: uint64(i + 1)}))
		if code != 0 || !strings.Contains(out, "installed and activated sin "+v) {
			t.Fatalf("install %s: exit %d, %q %q", v, code, out, errOut)
		}
	}
	code, out, _ := cli(t, "models", "list", "--config", cfg)
	if code != 0 || !strings.Contains(out, "* 1.1.0") || !strings.Contains(out, "  1.0.0") {
		t.Fatalf("list: exit %d\n%s\nwant 1.1.0 active and 1.0.0 kept", code, out)
	}
	if code, out, errOut := cli(t, "models", "rollback", "--config", cfg, "sin"); code != 0 || !strings.Contains(out, "rolled back sin") {
		t.Fatalf("rollback: exit %d, %q %q", code, out, errOut)
	}
	code, out, _ = cli(t, "models", "list", "--config", cfg, "--json")
	var list []struct {
		Name   string
		Active struct{ Version, Reason string }
	}
	if code != 0 || json.Unmarshal([]byte(out), &list) != nil || len(list) != 1 || list[0].Active.Version != "1.0.0" || list[0].Active.Reason != "manual rollback" {
		t.Fatalf("list --json after rollback: %s", out)
	}
	_, other, _ := sign.GenerateKey()
	code, _, errOut := cli(t, "models", "install", "--config", cfg, f.Pack(t, bundletest.Opt{Version: "2.0.0", Seq: 9, Signer: &other}))
	if code != 1 || !strings.Contains(errOut, "untrusted key") {
		t.Fatalf("untrusted bundle: exit %d, stderr %q; want 1 and the reason", code, errOut)
	}
	if code, _, errOut := cli(t, "models", "rollback", "--config", cfg, "sin", "9.9.9"); code != 1 || !strings.Contains(errOut, "9.9.9") {
		t.Fatalf("rollback to a version never installed: exit %d, stderr %q", code, errOut)
	}
}

// With the daemon running (it owns the store), install and rollback go through its inbox
// and report what the daemon did.
func TestModelsThroughRunningDaemon(t *testing.T) {
	f := bundletest.NewFleet(t)
	cfg := modelsConfig(t, f, true)
	bin := filepath.Join(t.TempDir(), "edge-agent")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	if code, _, errOut := cli(t, "models", "install", "--config", cfg, f.Pack(t, bundletest.Opt{Version: "1.0.0", Seq: 1})); code != 0 {
		t.Fatalf("offline install: %s", errOut)
	}
	daemon := exec.Command(bin, "run", "--config", cfg)
	stdout, _ := daemon.StdoutPipe()
	if err := daemon.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		daemon.Process.Signal(syscall.SIGTERM)
		daemon.Wait()
	}()
	versions := make(chan string, 1000)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			var r struct{ Version string }
			if json.Unmarshal(sc.Bytes(), &r) == nil {
				select {
				case versions <- r.Version:
				default:
				}
			}
		}
	}()
	waitVersion := func(v string) {
		t.Helper()
		deadline := time.After(20 * time.Second)
		for {
			select {
			case got := <-versions:
				if got == v {
					return
				}
			case <-deadline:
				t.Fatalf("the daemon never served %s", v)
			}
		}
	}
	waitVersion("1.0.0")
	code, out, errOut := cli(t, "models", "install", "--config", cfg, "--wait", "20s", f.Pack(t, bundletest.Opt{Version: "1.1.0", Seq: 2}))
	if code != 0 || !strings.Contains(out, "inbox") || !strings.Contains(out, "installed and activated by the daemon") {
		t.Fatalf("install via daemon: exit %d, %q %q", code, out, errOut)
	}
	waitVersion("1.1.0")
	code, out, errOut = cli(t, "models", "rollback", "--config", cfg, "--wait", "20s", "sin", "1.0.0")
	if code != 0 || !strings.Contains(out, "rolled back sin by the daemon") {
		t.Fatalf("rollback via daemon: exit %d, %q %q", code, out, errOut)
	}
	waitVersion("1.0.0")
	_, other, _ := sign.GenerateKey()
	code, _, errOut = cli(t, "models", "install", "--config", cfg, "--wait", "20s", f.Pack(t, bundletest.Opt{Version: "3.0.0", Seq: 3, Signer: &other}))
	if code != 1 || !strings.Contains(errOut, "untrusted key") {
		t.Fatalf("bad bundle via daemon: exit %d, stderr %q", code, errOut)
	}
}
