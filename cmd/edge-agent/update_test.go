//go:build cgo

package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/edge-agent/edge-agent/agent/update"
	"github.com/edge-agent/edge-agent/internal/mqtttest"
	"github.com/edge-agent/edge-agent/internal/testenv"
	"github.com/edge-agent/edge-agent/models/sign"
)

// updateKit holds real binaries of two versions (and faulty builds of the second), signed
// with a fleet key the agents trust.
type updateKit struct {
	dir  string
	priv sign.PrivateKey
	pub  sign.PublicKey
}

func newUpdateKit(t *testing.T) *updateKit {
	t.Helper()
	pub, priv, err := sign.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	return &updateKit{dir: t.TempDir(), priv: priv, pub: pub}
}

// build compiles edge-agent as version (with a test fault: "", "crash" or "hang") and signs it.
func (k *updateKit) build(t *testing.T, version, fault string) string {
	t.Helper()
	out := filepath.Join(k.dir, "edge-agent-"+version+fault)
	if _, err := os.Stat(out); err == nil {
		return out
	}
	ld := "-X github.com/edge-agent/edge-agent/agent.Version=" + version
	if fault != "" {
		ld += " -X main.testFault=" + fault
	}
	if b, err := exec.Command("go", "build", "-ldflags", ld, "-o", out, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", version, err, b)
	}
	k.sign(t, out, sign.BinaryComment(version, runtime.GOARCH))
	return out
}

// sign writes path.minisig, a signature by the kit's key with the trusted comment given (an
// agent binary's is sign.BinaryComment(VERSION, ARCH)).
func (k *updateKit) sign(t *testing.T, path, comment string) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	sig, err := sign.Sign(k.priv, data, comment)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(path+".minisig", sig, 0o644)
}

// install copies a binary to a fresh folder as the agent the "service" runs.
func install(t *testing.T, src string) string {
	t.Helper()
	dst := filepath.Join(t.TempDir(), "bin", "edge-agent")
	os.MkdirAll(filepath.Dir(dst), 0o755)
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o755); err != nil {
		t.Fatal(err)
	}
	return dst
}

// applyUpdate installs from with `exe update` (a pending update, run at the next start).
func applyUpdate(t *testing.T, exe, from, cfg string) {
	t.Helper()
	if out, err := exec.Command(exe, "update", "--from", from, "--config", cfg).CombinedOutput(); err != nil {
		t.Fatalf("update: %v\n%s", err, out)
	}
}

func versionOf(t *testing.T, exe string) string {
	t.Helper()
	out, err := exec.Command(exe, "version").Output()
	if err != nil {
		t.Fatalf("%s version: %v (the binary in place does not run)", exe, err)
	}
	first, _, _ := strings.Cut(string(out), "\n")
	return strings.TrimPrefix(first, "edge-agent ")
}

func sha256File(t *testing.T, path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func (k *updateKit) config(t *testing.T, device, broker, extra string) string {
	t.Helper()
	mqttLine := ""
	if broker != "" {
		mqttLine = "mqtt: {broker: " + broker + ", backoff_min: 50ms, backoff_max: 200ms, batch_wait: 20ms}\n"
	}
	cfg := filepath.Join(t.TempDir(), "config.yaml")
	os.WriteFile(cfg, []byte(`device: `+device+`
state_dir: `+t.TempDir()+`
stdout: false
trusted_keys: ["`+k.pub.String()+`"]
`+mqttLine+extra+`sources:
  - {name: sweep, kind: synthetic, rate: 50, synthetic: {wave: sine, phase: true, offset: -3.14159}}
models:
  - {name: sin, path: `+testenv.Data(t, "sin_model.tflite")+`, sources: [sweep], output: {kind: regression, regression: {names: [y]}}}
`), 0o644)
	return cfg
}

// service runs exe as systemd would with Restart=on-failure (at most restarts times): the
// test's stand-in for the service manager, which this machine does not run as PID 1.
type service struct {
	logs   *testenv.LockedBuffer
	starts chan int // process ids, one per start
	n      atomic.Int32
	done   chan struct{}
}

// unit says how the stand-in runs the agent.
type unit struct {
	restarts int
	// systemd: as systemd runs systemd/edge-agent.service: ExecStartPre=-EXE.previous guard
	// --exe EXE before every start, INVOCATION_ID and NOTIFY_SOCKET set, a start that sends
	// no READY=1 within startTimeout stopped (SIGTERM, as TimeoutStartSec) and restarted,
	// exit status 75 restarted (RestartForceExitStatus). The watchdog is not imitated.
	systemd      bool
	startTimeout time.Duration
}

func startService(t *testing.T, exe, cfg string, restarts int) *service {
	return startUnit(t, exe, cfg, unit{restarts: restarts})
}

func startUnit(t *testing.T, exe, cfg string, u unit) *service {
	t.Helper()
	s := &service{logs: &testenv.LockedBuffer{}, starts: make(chan int, u.restarts+1), done: make(chan struct{})}
	var notify *notifySocket
	if u.systemd {
		notify = listenNotify(t)
	}
	stop := make(chan struct{})
	go func() {
		defer close(s.done)
		for i := 0; i <= u.restarts; i++ {
			if u.systemd {
				if _, err := os.Stat(exe + ".previous"); err == nil {
					out, err := exec.Command(exe+".previous", "guard", "--exe", exe).CombinedOutput()
					fmt.Fprintf(s.logs, "service manager: ExecStartPre guard: %v %s\n", err, out)
				}
			}
			cmd := exec.Command(exe, "run", "--config", cfg)
			cmd.Stderr = s.logs
			readyBefore := 0
			if u.systemd {
				cmd.Env = append(os.Environ(), "INVOCATION_ID=stand-in", "NOTIFY_SOCKET="+notify.path)
				readyBefore = notify.count("READY=1")
			}
			if err := cmd.Start(); err != nil {
				t.Errorf("start %s: %v", exe, err)
				return
			}
			s.n.Add(1)
			s.starts <- cmd.Process.Pid
			exited := make(chan error, 1)
			go func() { exited <- cmd.Wait() }()
			var timeout <-chan time.Time
			if u.systemd && u.startTimeout > 0 {
				timer := time.NewTimer(u.startTimeout)
				defer timer.Stop()
				timeout = timer.C
			}
			var ready <-chan time.Time
			if u.systemd {
				poll := time.NewTicker(50 * time.Millisecond)
				defer poll.Stop()
				ready = poll.C
			}
		wait:
			for {
				select {
				case err := <-exited:
					if err == nil {
						return
					}
					fmt.Fprintf(s.logs, "service manager: exited (%v); restarting\n", err)
					break wait
				case <-ready:
					if notify.count("READY=1") > readyBefore {
						timeout, ready = nil, nil // started: the start timeout no longer applies
					}
				case <-timeout:
					fmt.Fprintf(s.logs, "service manager: no READY=1 within %v; stopping it\n", u.startTimeout)
					cmd.Process.Signal(syscall.SIGTERM)
					<-exited
					break wait
				case <-stop:
					cmd.Process.Signal(syscall.SIGTERM)
					<-exited
					return
				}
			}
		}
	}()
	t.Cleanup(func() {
		close(stop)
		<-s.done
		if t.Failed() {
			t.Logf("service log:\n%s", s.logs)
		}
	})
	return s
}

func (s *service) startCount() int { return int(s.n.Load()) }

// The selfupdate command on a real agent: a bad signature, a wrong checksum and a truncated
// download are refused and 1.0.0 keeps running; a good binary is installed, the process
// executes it in place (same pid), 2.0.0 confirms once ready, and the fleet sees the new
// version and an update.confirmed event.
func TestSelfUpdateCommand(t *testing.T) {
	k := newUpdateKit(t)
	v1 := k.build(t, "1.0.0", "")
	v2 := k.build(t, "2.0.0", "")
	exe := install(t, v1)
	broker := testenv.MosquittoWith(t, testenv.BrokerConfig{})
	statuses := mqtttest.NewConsumer(t, broker.URL, "edge/+/status", "edge/+/events")
	con := newCfgConsole(t, broker.URL, "up-1")
	full, _ := os.ReadFile(v2)
	files := http.NewServeMux()
	files.HandleFunc("/v2", func(w http.ResponseWriter, r *http.Request) { http.ServeFile(w, r, v2) })
	files.HandleFunc("/v2.minisig", func(w http.ResponseWriter, r *http.Request) { http.ServeFile(w, r, v2+".minisig") })
	files.HandleFunc("/v1.minisig", func(w http.ResponseWriter, r *http.Request) { http.ServeFile(w, r, v1+".minisig") })
	files.HandleFunc("/short", func(w http.ResponseWriter, r *http.Request) { w.Write(full[:len(full)/2]) })
	files.HandleFunc("/short.minisig", func(w http.ResponseWriter, r *http.Request) { http.ServeFile(w, r, v2+".minisig") })
	srv := httptest.NewServer(files)
	defer srv.Close()

	svc := startService(t, exe, k.config(t, "up-1", broker.URL, con.line()), 0)
	pid := <-svc.starts
	mqtttest.WaitFor(t, 20*time.Second, "1.0.0 online", func() bool {
		st := string(statuses.Status("up-1"))
		return strings.Contains(st, `"state":"online"`) && strings.Contains(st, `"agent_version":"1.0.0"`)
	})
	good := sha256File(t, v2)
	for id, args := range map[string]string{
		"bad-sig":   fmt.Sprintf(`{"url":%q,"sha256":%q,"sig_url":%q}`, srv.URL+"/v2", good, srv.URL+"/v1.minisig"),
		"bad-sum":   fmt.Sprintf(`{"url":%q,"sha256":%q}`, srv.URL+"/v2", strings.Repeat("ab", 32)),
		"truncated": fmt.Sprintf(`{"url":%q,"sha256":%q}`, srv.URL+"/short", good),
	} {
		r := con.run("up-1", id, "selfupdate", args)
		if r["status"] != "failed" || r["reason"] == "" {
			t.Errorf("%s: %v; want failed with a reason", id, r)
		}
	}
	if v := versionOf(t, exe); v != "1.0.0" {
		t.Fatalf("after refused updates the binary is %s", v)
	}
	if r := con.run("up-1", "p1", "ping", "{}"); r["status"] != "done" || !strings.Contains(fmt.Sprint(r["result"]), "1.0.0") {
		t.Fatalf("1.0.0 stopped answering after refused updates: %v", r)
	}

	r := con.run("up-1", "good", "selfupdate", fmt.Sprintf(`{"url":%q,"sha256":%q}`, srv.URL+"/v2", good))
	if res, _ := r["result"].(map[string]any); r["status"] != "done" || res["version"] != "2.0.0" || res["restarting"] != true {
		t.Fatalf("selfupdate: %v", r)
	}
	mqtttest.WaitFor(t, 30*time.Second, "2.0.0 online", func() bool {
		return strings.Contains(string(statuses.Status("up-1")), `"agent_version":"2.0.0"`)
	})
	mqtttest.WaitFor(t, 20*time.Second, "an update.confirmed event", func() bool {
		for _, e := range statuses.Records("events", "up-1") {
			if strings.Contains(string(e), `"type":"update.confirmed"`) && strings.Contains(string(e), `"version":"2.0.0"`) {
				return true
			}
		}
		return false
	})
	if n := svc.startCount(); n != 1 {
		t.Errorf("the service manager started the agent %d times; want 1 (the new binary runs in the same process)", n)
	}
	if err := syscall.Kill(pid, 0); err != nil {
		t.Errorf("process %d is gone: %v", pid, err)
	}
	if v := versionOf(t, exe); v != "2.0.0" {
		t.Errorf("binary in place is %s; want 2.0.0", v)
	}
	if v := versionOf(t, exe+".previous"); v != "1.0.0" {
		t.Errorf("previous binary is %s; want 1.0.0", v)
	}
	if res, ok := update.LastResult(exe); !ok || res.Outcome != update.OutcomeConfirmed || res.Version != "2.0.0" {
		t.Errorf("update result %+v", res)
	}
	if _, err := os.Stat(filepath.Join(filepath.Dir(exe), ".edge-agent.update.json")); !os.IsNotExist(err) {
		t.Errorf("the pending update file is still there after the confirm: %v", err)
	}
}

// A new binary that crashes on every start: after MaxStarts starts (restarted by the service
// manager) the next start restores 1.0.0, which runs and reports update.rolled-back.
func TestSelfUpdateRollsBackACrashingBinary(t *testing.T) {
	k := newUpdateKit(t)
	exe := install(t, k.build(t, "1.0.0", ""))
	bad := k.build(t, "2.0.0", "crash")
	broker := testenv.MosquittoWith(t, testenv.BrokerConfig{})
	events := mqtttest.NewConsumer(t, broker.URL, "edge/+/events")
	cfg := k.config(t, "up-2", broker.URL, "")
	out, err := exec.Command(exe, "update", "--from", bad, "--config", cfg).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "installed edge-agent 2.0.0") {
		t.Fatalf("update: %v\n%s", err, out)
	}
	svc := startService(t, exe, cfg, 5)
	mqtttest.WaitFor(t, 60*time.Second, "an update.rolled-back event from 1.0.0", func() bool {
		for _, e := range events.Records("events", "up-2") {
			if strings.Contains(string(e), `"type":"update.rolled-back"`) {
				return true
			}
		}
		return false
	})
	if n := svc.startCount(); n != update.MaxStarts+1 {
		t.Errorf("started %d times; want %d (the crashing ones, then the one that restored 1.0.0)", n, update.MaxStarts+1)
	}
	if v := versionOf(t, exe); v != "1.0.0" {
		t.Errorf("binary in place is %s; want 1.0.0 restored", v)
	}
	res, ok := update.LastResult(exe)
	if !ok || res.Outcome != update.OutcomeRolledBack || !strings.Contains(res.Reason, "without becoming ready") {
		t.Errorf("update result %+v", res)
	}
	if !strings.Contains(svc.logs.String(), "testFault=crash") {
		t.Errorf("the new binary did not crash as built:\n%s", svc.logs)
	}
}

// A new binary that runs but never becomes ready: at update.confirm_within the same process
// restores 1.0.0 and executes it.
func TestSelfUpdateRollsBackWhenNeverReady(t *testing.T) {
	k := newUpdateKit(t)
	exe := install(t, k.build(t, "1.0.0", ""))
	hang := k.build(t, "2.0.0", "hang")
	cfg := k.config(t, "up-3", "", "update: {confirm_within: 5s}\n")
	applyUpdate(t, exe, hang, cfg)
	svc := startService(t, exe, cfg, 0)
	mqtttest.WaitFor(t, 40*time.Second, "1.0.0 started again after the deadline", func() bool {
		l := svc.logs.String()
		return strings.Contains(l, "not ready within") && strings.Count(l, "edge-agent starting") == 2 &&
			strings.Contains(l[strings.LastIndex(l, "edge-agent starting"):], "version=1.0.0")
	})
	if n := svc.startCount(); n != 1 {
		t.Errorf("started %d times; want 1 (the restore runs in the same process)", n)
	}
	if v := versionOf(t, exe); v != "1.0.0" {
		t.Errorf("binary in place is %s", v)
	}
}

// Refusals of edge-agent update leave the binary byte for byte as it was.
func TestSelfUpdateRefusals(t *testing.T) {
	k := newUpdateKit(t)
	v1 := k.build(t, "1.0.0", "")
	v2 := k.build(t, "2.0.0", "")
	exe := install(t, v1)
	cfg := k.config(t, "up-4", "", "")
	before := sha256File(t, exe)
	dir := t.TempDir()
	full, _ := os.ReadFile(v2)
	short := filepath.Join(dir, "short")
	os.WriteFile(short, full[:len(full)-4096], 0o755)
	os.WriteFile(short+".minisig", must(os.ReadFile(v2+".minisig")), 0o644)
	otherPub, otherPriv, _ := sign.GenerateKey()
	forged := filepath.Join(dir, "forged")
	os.WriteFile(forged, full, 0o755)
	sig, _ := sign.Sign(otherPriv, full, "forged")
	os.WriteFile(forged+".minisig", sig, 0o644)
	notAgent := filepath.Join(dir, "true")
	os.WriteFile(notAgent, must(os.ReadFile("/bin/true")), 0o755)
	k.sign(t, notAgent, sign.BinaryComment("2.0.0", runtime.GOARCH))
	// Signatures by the trusted key that do not vouch for this binary on this device.
	pwned := filepath.Join(dir, "pwned")
	script := filepath.Join(dir, "evil.sh")
	os.WriteFile(script, []byte("#!/bin/sh\necho edge-agent 2.0.0\ntouch "+pwned+"\n"), 0o755)
	k.sign(t, script, sign.BinaryComment("2.0.0", runtime.GOARCH))
	resigned := func(name, comment string) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, full, 0o755)
		k.sign(t, p, comment)
		return p
	}
	otherArch := map[string]string{"amd64": "arm64"}[runtime.GOARCH]
	if otherArch == "" {
		otherArch = "amd64"
	}
	splitCfg := k.config(t, "up-4", "", "update: {trusted_keys: [\""+otherPub.String()+"\"]}\n")
	for name, tc := range map[string]struct {
		args []string
		cfg  string
		why  string
	}{
		"truncated":      {[]string{"--from", short}, cfg, "signature"},
		"untrusted key":  {[]string{"--from", forged}, cfg, "untrusted key"},
		"wrong sha256":   {[]string{"--from", v2, "--sha256", strings.Repeat("0", 64)}, cfg, "sha256"},
		"not edge-agent": {[]string{"--from", notAgent}, cfg, "is it an edge-agent binary"},
		"no signature":   {[]string{"--from", v2, "--sig", filepath.Join(dir, "missing.minisig")}, cfg, "missing.minisig"},
		"missing binary": {[]string{"--from", filepath.Join(dir, "nothing")}, cfg, "nothing"},
		"signed script":  {[]string{"--from", script}, cfg, "not an ELF executable"},
		"bundle purpose": {[]string{"--from", resigned("as-bundle", sign.BundleComment("edge-agent", 2))}, cfg, "another purpose"},
		"plain file sig": {[]string{"--from", resigned("as-file", "file:edge-agent")}, cfg, "another purpose"},
		"other version":  {[]string{"--from", resigned("as-3", sign.BinaryComment("3.0.0", runtime.GOARCH))}, cfg, "reports version 2.0.0 but its signature is for 3.0.0"},
		"other arch":     {[]string{"--from", resigned("as-arch", sign.BinaryComment("2.0.0", otherArch))}, cfg, "signed for " + otherArch},
		"not update key": {[]string{"--from", v2}, splitCfg, "untrusted key"},
	} {
		out, err := exec.Command(exe, append([]string{"update", "--config", tc.cfg}, tc.args...)...).CombinedOutput()
		if err == nil {
			t.Errorf("%s: update succeeded:\n%s", name, out)
			continue
		}
		if !strings.Contains(string(out), tc.why) {
			t.Errorf("%s: %s; want the reason to mention %q", name, bytes.TrimSpace(out), tc.why)
		}
		if sha256File(t, exe) != before {
			t.Fatalf("%s: the binary changed", name)
		}
	}
	if _, err := os.Stat(pwned); !os.IsNotExist(err) {
		t.Errorf("the signed script ran (stat %s: %v)", pwned, err)
	}
	if v := versionOf(t, exe); v != "1.0.0" {
		t.Errorf("binary in place is %s", v)
	}
	leftovers, _ := filepath.Glob(filepath.Join(filepath.Dir(exe), ".*"))
	if len(leftovers) != 0 {
		t.Errorf("refused updates left files: %v", leftovers)
	}
}

func must(b []byte, err error) []byte {
	if err != nil {
		panic(err)
	}
	return b
}

// SIGKILL at random moments of edge-agent update, 15 times: a working binary is always in
// place (old or new), and the next start settles the state (no pending update left after
// it confirms or finds the update never happened).
func TestSelfUpdateSurvivesSIGKILLDuringApply(t *testing.T) {
	k := newUpdateKit(t)
	v1 := k.build(t, "1.0.0", "")
	v2 := k.build(t, "2.0.0", "")
	cfg := k.config(t, "up-5", "", "")
	// How long a whole update takes here, to spread the kills over it.
	exe := install(t, v1)
	began := time.Now()
	applyUpdate(t, exe, v2, cfg)
	whole := time.Since(began)
	seen := map[string]int{}
	for i := range 15 {
		exe := install(t, v1)
		cmd := exec.Command(exe, "update", "--from", v2, "--config", cfg)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Duration(rand.Int64N(int64(whole) * 11 / 10)))
		cmd.Process.Kill()
		cmd.Wait()
		v := versionOf(t, exe)
		seen[v]++
		run := exec.Command(exe, "run", "--config", cfg)
		logs := &testenv.LockedBuffer{}
		run.Stderr = logs
		if err := run.Start(); err != nil {
			t.Fatal(err)
		}
		pending := filepath.Join(filepath.Dir(exe), ".edge-agent.update.json")
		mqtttest.WaitFor(t, 20*time.Second, fmt.Sprintf("round %d: the agent serving with no pending update", i), func() bool {
			_, err := os.Stat(pending)
			return strings.Contains(logs.String(), "edge-agent starting") && os.IsNotExist(err)
		})
		run.Process.Signal(syscall.SIGTERM)
		run.Wait()
		if got := versionOf(t, exe); got != v {
			t.Errorf("round %d: %s before the start, %s after", i, v, got)
		}
	}
	t.Logf("a whole update takes %v; binary in place after the kill: %v", whole, seen)
	if seen["1.0.0"]+seen["2.0.0"] != 15 {
		t.Errorf("versions seen %v", seen)
	}
}

// rolledBack waits until the binary in place is 1.0.0 again with a rolled-back result whose
// reason mentions why, and returns the result.
func rolledBack(t *testing.T, exe, why string, within time.Duration) update.Result {
	t.Helper()
	var res update.Result
	mqtttest.WaitFor(t, within, "the update rolled back ("+why+")", func() bool {
		var ok bool
		res, ok = update.LastResult(exe)
		return ok && res.Outcome == update.OutcomeRolledBack
	})
	if !strings.Contains(res.Reason, why) {
		t.Errorf("rolled back for %q; want the reason to mention %q", res.Reason, why)
	}
	if v := versionOf(t, exe); v != "1.0.0" {
		t.Errorf("binary in place is %s; want 1.0.0 restored", v)
	}
	return res
}

// Under the service manager (the unit's way: guard before each start, exit 75 after a
// selfupdate command) a new binary that exits at once, before any of its own update code
// runs, is reverted by the previous binary's guard: 1.0.0 restarts into 2.0.0, which exits
// twice, and the third start's guard restores 1.0.0, which becomes ready again.
func TestSelfUpdateGuardRevertsABinaryThatExitsAtOnce(t *testing.T) {
	k := newUpdateKit(t)
	exe := install(t, k.build(t, "1.0.0", ""))
	bad := k.build(t, "2.0.0", "exit")
	broker := testenv.MosquittoWith(t, testenv.BrokerConfig{})
	statuses := mqtttest.NewConsumer(t, broker.URL, "edge/+/status", "edge/+/events")
	con := newCfgConsole(t, broker.URL, "up-6")
	files := http.NewServeMux()
	files.HandleFunc("/v2", func(w http.ResponseWriter, r *http.Request) { http.ServeFile(w, r, bad) })
	files.HandleFunc("/v2.minisig", func(w http.ResponseWriter, r *http.Request) { http.ServeFile(w, r, bad+".minisig") })
	srv := httptest.NewServer(files)
	defer srv.Close()

	svc := startUnit(t, exe, k.config(t, "up-6", broker.URL, con.line()), unit{restarts: 6, systemd: true, startTimeout: testenv.Patience(30 * time.Second)})
	mqtttest.WaitFor(t, 20*time.Second, "1.0.0 online", func() bool {
		return strings.Contains(string(statuses.Status("up-6")), `"state":"online"`)
	})
	r := con.run("up-6", "exit", "selfupdate", fmt.Sprintf(`{"url":%q,"sha256":%q}`, srv.URL+"/v2", sha256File(t, bad)))
	if res, _ := r["result"].(map[string]any); r["status"] != "done" || res["restarting"] != true {
		t.Fatalf("selfupdate: %v", r)
	}
	rolledBack(t, exe, "counted by the previous binary", 60*time.Second)
	mqtttest.WaitFor(t, 30*time.Second, "an update.rolled-back event from 1.0.0", func() bool {
		for _, e := range statuses.Records("events", "up-6") {
			if strings.Contains(string(e), `"type":"update.rolled-back"`) {
				return true
			}
		}
		return false
	})
	// 1.0.0, then 2.0.0 twice (exit status 75 restarts it, then each failure), then 1.0.0.
	if n := svc.startCount(); n != 1+update.MaxStarts+1 {
		t.Errorf("started %d times; want %d", n, 1+update.MaxStarts+1)
	}
	logs := svc.logs.String()
	if strings.Count(logs, "testFault=exit") != update.MaxStarts || !strings.Contains(logs, "exit status 75") {
		t.Errorf("want the agent to exit 75 after the selfupdate and the new binary to exit at once %d times:\n%s", update.MaxStarts, logs)
	}
}

// A new binary stuck in start-up (no READY=1, none of its own code running) is stopped at the
// start timeout, and the guard reverts it after MaxStarts such starts.
func TestSelfUpdateGuardRevertsAWedgedBinary(t *testing.T) {
	k := newUpdateKit(t)
	exe := install(t, k.build(t, "1.0.0", ""))
	wedged := k.build(t, "2.0.0", "wedge")
	cfg := k.config(t, "up-7", "", "")
	applyUpdate(t, exe, wedged, cfg)
	svc := startUnit(t, exe, cfg, unit{restarts: 4, systemd: true, startTimeout: testenv.Patience(3 * time.Second)})
	rolledBack(t, exe, "counted by the previous binary", 60*time.Second)
	mqtttest.WaitFor(t, 30*time.Second, "1.0.0 serving after the restore", func() bool {
		l := svc.logs.String()
		i := strings.LastIndex(l, "edge-agent starting")
		return i >= 0 && strings.Contains(l[i:], "version=1.0.0")
	})
	if n := strings.Count(svc.logs.String(), "no READY=1 within"); n != update.MaxStarts {
		t.Errorf("the start timeout stopped the new binary %d times; want %d", n, update.MaxStarts)
	}
}

// A new binary that is ready but never reaches the configured broker does not confirm: at
// update.confirm_within the previous binary comes back.
func TestSelfUpdateConfirmsOnlyWithTheFleet(t *testing.T) {
	k := newUpdateKit(t)
	exe := install(t, k.build(t, "1.0.0", ""))
	v2 := k.build(t, "2.0.0", "")
	nobody := fmt.Sprintf("tcp://127.0.0.1:%d", testenv.FreePort(t)) // nothing listens there
	cfg := k.config(t, "up-8", nobody, "update: {confirm_within: 5s}\n")
	applyUpdate(t, exe, v2, cfg)
	svc := startService(t, exe, cfg, 0)
	rolledBack(t, exe, "not connected to the broker", 60*time.Second)
	if !strings.Contains(svc.logs.String(), "it confirms the update once it has reached the broker") {
		t.Errorf("the new binary did not say it waits for the broker:\n%s", svc.logs)
	}
	if fl, err := update.ReadFloor(exe); err != nil || fl.Version != "" {
		t.Errorf("floor %+v, %v after a reverted update; want none", fl, err)
	}
}

// The version floor: a binary at or below the running version, or below the last confirmed
// one, is refused unless signed as a downgrade; a downgrade is taken once (a replay is
// refused); a damaged floor refuses every downgrade (agent/update TestDamagedFloorFailsClosed
// has the rest).
func TestSelfUpdateVersionFloor(t *testing.T) {
	k := newUpdateKit(t)
	v1 := k.build(t, "1.0.0", "")
	v2 := k.build(t, "2.0.0", "")
	exe := install(t, v2)
	cfg := k.config(t, "up-9", "", "")
	dir := t.TempDir()
	resigned := func(name, src, comment string) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, must(os.ReadFile(src)), 0o755)
		k.sign(t, p, comment)
		return p
	}
	down1 := resigned("down-1", v1, sign.DowngradeComment("1.0.0", runtime.GOARCH, 1))
	update := func(from string) (string, error) {
		out, err := exec.Command(exe, "update", "--config", cfg, "--from", from).CombinedOutput()
		return string(out), err
	}
	refused := func(what, from, why string) {
		t.Helper()
		before := sha256File(t, exe)
		out, err := update(from)
		if err == nil || !strings.Contains(out, why) {
			t.Errorf("%s: %v %s; want refused mentioning %q", what, err, out, why)
		}
		if sha256File(t, exe) != before {
			t.Fatalf("%s: the binary changed", what)
		}
	}
	confirm := func() {
		t.Helper()
		run := exec.Command(exe, "run", "--config", cfg)
		logs := &testenv.LockedBuffer{}
		run.Stderr = logs
		if err := run.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { run.Process.Signal(syscall.SIGTERM); run.Wait() }()
		mqtttest.WaitFor(t, 30*time.Second, "the update confirmed", func() bool {
			_, err := os.Stat(filepath.Join(filepath.Dir(exe), ".edge-agent.update.json"))
			return os.IsNotExist(err) && strings.Contains(logs.String(), "outcome=confirmed")
		})
	}
	refused("older release", v1, "version 1.0.0 is not above 2.0.0 (the version this device runs)")
	refused("same release", v2, "version 2.0.0 is not above 2.0.0")
	refused("a build with no release version", resigned("dev", v2, sign.BinaryComment("4e6fc0e", runtime.GOARCH)), `"4e6fc0e" is not a release version`)

	if out, err := update(down1); err != nil {
		t.Fatalf("a signed downgrade was refused: %v\n%s", err, out)
	}
	confirm()
	if v := versionOf(t, exe); v != "1.0.0" {
		t.Fatalf("after the downgrade the binary is %s", v)
	}
	if fl, err := updateFloor(exe); err != nil || fl.Version != "1.0.0" || fl.DowngradeSeq != 1 {
		t.Fatalf("floor after the downgrade: %+v, %v", fl, err)
	}
	refused("the same downgrade replayed", down1, "already took downgrade 1")

	// Upgrades go on from the downgraded version.
	if out, err := update(v2); err != nil {
		t.Fatalf("an upgrade after the downgrade was refused: %v\n%s", err, out)
	}
	confirm()
	refused("the old release after the upgrade", v1, "not above 2.0.0")
	refused("the old downgrade after the upgrade", down1, "already took downgrade 1")
	down2 := resigned("down-2", v1, sign.DowngradeComment("1.0.0", runtime.GOARCH, 2))

	floor := filepath.Join(filepath.Dir(exe), ".edge-agent.update-floor.json")
	good := must(os.ReadFile(floor))
	os.WriteFile(floor, []byte("{not json"), 0o644)
	refused("a downgrade with a damaged floor", down2, "found damaged")
	os.WriteFile(floor, good, 0o644)
	if out, err := update(down2); err != nil {
		t.Fatalf("a new downgrade was refused: %v\n%s", err, out)
	}
}

func updateFloor(exe string) (update.Floor, error) { return update.ReadFloor(exe) }
