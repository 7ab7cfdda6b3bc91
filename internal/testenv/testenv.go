// Package testenv finds the real test inputs the project's tests use (the repository's own
// testdata folder) and starts the real processes they talk to (Mosquitto). A missing input or
// program fails the test with what to do; it never skips.
package testenv

import (
	"bytes"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Root is the repository root (the directory holding go.mod).
func Root(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		if dir == filepath.Dir(dir) {
			t.Fatal("testenv: go.mod not found above the test's directory")
		}
		dir = filepath.Dir(dir)
	}
}

// DataDir returns the repository's testdata folder (real models and inputs, each listed with
// its origin and licence in testdata/README.md), failing the test when it is absent: skipping
// would hide that a checkout lost its fixtures.
func DataDir(t testing.TB) string {
	t.Helper()
	d := filepath.Join(Root(t), "testdata")
	if st, err := os.Stat(d); err != nil || !st.IsDir() {
		t.Fatalf("test data folder %s is missing: it is part of the repository; restore it with `git checkout -- testdata`", d)
	}
	return d
}

// Data returns the path of a file in the repository's testdata folder, failing the test when
// it is absent.
func Data(t testing.TB, name string) string {
	t.Helper()
	p := filepath.Join(DataDir(t), name)
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("test data %s is missing (%v): it is part of the repository (testdata/README.md lists every file); restore it with `git checkout -- testdata`", p, err)
	}
	return p
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Broker is a Mosquitto process a test started on its own port.
type Broker struct {
	Port int
	URL  string // tcp://127.0.0.1:port
	conf string
	cmd  *exec.Cmd
	t    testing.TB
	log  LockedBuffer // the broker's log (log_dest stderr), across restarts
}

// Mosquitto starts a real Mosquitto broker on a free loopback port with extra config lines
// (listener and persistence are set here) and stops it when the test ends. A missing
// mosquitto binary fails the test with the command that installs it.
func Mosquitto(t testing.TB, extra ...string) *Broker {
	t.Helper()
	bin, err := exec.LookPath("mosquitto")
	if err != nil {
		if _, serr := os.Stat("/usr/sbin/mosquitto"); serr != nil {
			t.Fatal("mosquitto is not installed: run scripts/deps.sh (or apt-get install mosquitto)")
		}
		bin = "/usr/sbin/mosquitto"
	}
	b := &Broker{Port: FreePort(t), t: t}
	b.URL = "tcp://127.0.0.1:" + strconv.Itoa(b.Port)
	dir := t.TempDir()
	b.conf = filepath.Join(dir, "mosquitto.conf")
	lines := append([]string{
		"listener " + strconv.Itoa(b.Port) + " 127.0.0.1",
		"allow_anonymous true",
		"persistence false",
		"log_dest stderr",
	}, extra...)
	if err := os.WriteFile(b.conf, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	b.cmd = exec.Command(bin, "-c", b.conf)
	b.Start()
	t.Cleanup(b.Stop)
	return b
}

// Start (re)starts the broker and waits until it accepts connections.
func (b *Broker) Start() {
	b.t.Helper()
	b.cmd = exec.Command(b.cmd.Path, b.cmd.Args[1:]...)
	b.cmd.Stderr = &b.log
	if err := b.cmd.Start(); err != nil {
		b.t.Fatalf("start mosquitto: %v", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		c, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(b.Port), 200*time.Millisecond)
		if err == nil {
			c.Close()
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	b.t.Fatalf("mosquitto did not listen on port %d within 10s; its log:\n%s", b.Port, b.Log())
}

// Stop kills the broker and waits for it.
func (b *Broker) Stop() {
	if b.cmd != nil && b.cmd.Process != nil && b.cmd.ProcessState == nil {
		b.cmd.Process.Kill()
		b.cmd.Wait()
	}
}

// Term stops the broker with SIGTERM, as a service manager would, and waits for it: unlike
// Stop (SIGKILL), Mosquitto then writes its persistence file, so a broker started with
// persistence keeps what it had acknowledged and queued across Start. After 10 s it kills.
func (b *Broker) Term() {
	if b.cmd == nil || b.cmd.Process == nil || b.cmd.ProcessState != nil {
		return
	}
	b.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { b.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		b.cmd.Process.Kill()
		<-done
	}
}

// Pause freezes the broker (SIGSTOP) without closing its connections, as a hung broker or a
// network that silently drops everything would look; Resume (SIGCONT) lets it go on.
func (b *Broker) Pause() {
	if b.cmd != nil && b.cmd.Process != nil && b.cmd.ProcessState == nil {
		b.cmd.Process.Signal(syscall.SIGSTOP)
	}
}

// Resume continues a paused broker.
func (b *Broker) Resume() {
	if b.cmd != nil && b.cmd.Process != nil && b.cmd.ProcessState == nil {
		b.cmd.Process.Signal(syscall.SIGCONT)
	}
}

// Log returns what the broker logged so far (all runs), for failure messages.
func (b *Broker) Log() string { return b.log.String() }

// LockedBuffer collects a process's output while tests read it (safe for concurrent use).
type LockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *LockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *LockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}
