package store

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The crash tests run this test binary again as a child (TestCrashHelper) that changes a
// store while the parent kills it with SIGKILL, then check what Open makes of the remains.
const (
	envHelper   = "EDGE_STORE_CRASH_HELPER" // "points" or "loop"
	envRoot     = "EDGE_STORE_CRASH_ROOT"
	envTarget   = "EDGE_STORE_CRASH_AT" // points: the crash point to stop at, "" none
	pointPrefix = "CRASHPOINT "
	crashModel  = "m"
)

// The store every crash test starts from: 0.1.0 and 1.0.0 installed, 1.0.0 active with
// 0.1.0 as previous; Keep 2, so activating 2.0.0 prunes 0.1.0.
const (
	vOld  = "0.1.0"
	vCur  = "1.0.0"
	vNext = "2.0.0"
)

func TestCrashHelper(t *testing.T) {
	mode := os.Getenv(envHelper)
	if mode == "" {
		t.Skip("the child process of TestCrashPoints and TestCrashRandom")
	}
	die := func(err error) {
		fmt.Fprintln(os.Stderr, "crash helper:", err)
		os.Exit(2)
	}
	s, err := Open(os.Getenv(envRoot), Options{Keep: 2, Logger: quiet})
	if err != nil {
		die(err)
	}
	switch mode {
	case "points":
		target := os.Getenv(envTarget)
		seen := map[string]int{}
		s.crashPoint = func(name string) {
			seen[name]++
			id := fmt.Sprintf("%s#%d", name, seen[name])
			fmt.Fprintf(os.Stdout, "%s%s\n", pointPrefix, id)
			if id == target {
				time.Sleep(time.Minute) // the parent kills us here
				die(errors.New("not killed at " + id))
			}
		}
		if err := installVersion(s, crashModel, vNext, 3); err != nil {
			die(err)
		}
		if err := s.Activate(crashModel, vNext, "crash test"); err != nil {
			die(err)
		}
	case "loop":
		fmt.Println("READY")
		for end := time.Now().Add(time.Minute); time.Now().Before(end); {
			vs, err := s.Versions(crashModel)
			if err != nil {
				die(err)
			}
			seq := vs[0].Sequence + 1
			v := fmt.Sprintf("%d.0.0", seq)
			if err := installVersion(s, crashModel, v, seq); err != nil {
				die(err)
			}
			if err := s.Activate(crashModel, v, "crash loop"); err != nil {
				die(err)
			}
		}
		die(errors.New("not killed within a minute"))
	default:
		die(fmt.Errorf("unknown mode %q", mode))
	}
	s.Close()
}

// setupCrashStore builds the starting store. With fill, the history is padded to just
// under MaxHistoryBytes so that the child's first event trims it.
func setupCrashStore(t *testing.T, root string, fill bool) {
	t.Helper()
	s, err := Open(root, Options{Keep: 2, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	for _, step := range []error{
		installVersion(s, crashModel, vOld, 1),
		installVersion(s, crashModel, vCur, 2),
		s.Activate(crashModel, vOld, "setup"),
		s.Activate(crashModel, vCur, "setup"),
		s.Close(),
	} {
		if step != nil {
			t.Fatal(step)
		}
	}
	if !fill {
		return
	}
	path := filepath.Join(root, "history", crashModel+".jsonl")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	// The child's first event is over 100 bytes: stop 90 bytes short of the bound.
	target := MaxHistoryBytes - 90
	filler := func(pad int) []byte {
		e, _ := json.Marshal(Event{At: time.Unix(1, 0).UTC(), Name: crashModel, Event: "filler", Reason: strings.Repeat("f", pad)})
		return append(e, '\n')
	}
	var buf bytes.Buffer
	line := filler(200)
	for len(b)+buf.Len()+len(line) < target-400 {
		buf.Write(line)
	}
	one := filler(1) // filler(n) is len(one)+n-1 bytes
	buf.Write(filler(target - len(b) - buf.Len() - len(one) + 1))
	if got := len(b) + buf.Len(); got != target {
		t.Fatalf("filled history to %d bytes; want %d", got, target)
	}
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(buf.Bytes()); err != nil {
		t.Fatal(err)
	}
}

// child is a running TestCrashHelper.
type child struct {
	cmd    *exec.Cmd
	lines  chan string
	stderr bytes.Buffer
	seen   []string // crash points printed so far
	done   bool
}

func startChild(t *testing.T, mode, root, target string) *child {
	t.Helper()
	c := &child{cmd: exec.Command(os.Args[0], "-test.run=^TestCrashHelper$", "-test.count=1"), lines: make(chan string, 16)}
	c.cmd.Env = append(os.Environ(), envHelper+"="+mode, envRoot+"="+root, envTarget+"="+target)
	c.cmd.Stderr = &c.stderr
	out, err := c.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			c.lines <- sc.Text()
		}
		io.Copy(io.Discard, out)
		close(c.lines)
	}()
	t.Cleanup(func() { c.kill() })
	return c
}

// waitFor reads the child's output until line; false if the child ends first or 20 s pass.
func (c *child) waitFor(line string) bool {
	timeout := time.After(20 * time.Second)
	for {
		select {
		case l, ok := <-c.lines:
			if !ok {
				return false
			}
			if id, isPoint := strings.CutPrefix(l, pointPrefix); isPoint {
				c.seen = append(c.seen, id)
			}
			if l == line {
				return true
			}
		case <-timeout:
			return false
		}
	}
}

// kill sends SIGKILL and reaps the child; the kernel has released its flock when it returns.
func (c *child) kill() {
	if c.done {
		return
	}
	c.cmd.Process.Signal(syscall.SIGKILL)
	c.wait()
}

// wait reads the rest of the output and reaps the child.
func (c *child) wait() error {
	c.waitFor("\x00never")
	c.done = true
	return c.cmd.Wait()
}

// crashState opens the store after a crash and checks that it is whole: no leftovers, an
// active pointer naming an installed version, every installed version complete and
// intact, a history that parses, and a store that takes the next install. It returns the
// active pointer and the installed versions.
func crashState(t *testing.T, root string) (Pointer, []string) {
	t.Helper()
	s, err := Open(root, Options{Keep: 2, Logger: quiet})
	if err != nil {
		t.Fatalf("Open after the crash: %v", err)
	}
	defer s.Close()
	checkNoGarbage(t, root)
	checkHistoryFile(t, root, crashModel)
	// Consistency must come from the write order, not from Open's repairs.
	evs, _ := s.History(crashModel, 0)
	for _, e := range evs {
		if e.Event == "pointer repaired" || e.Event == "removed" {
			t.Errorf("Open had to repair: %s %s: %s", e.Event, e.Version, e.Reason)
		}
	}
	p, ok, err := s.Active(crashModel)
	if err != nil || !ok {
		t.Fatalf("Active after the crash got %+v, %v, %v; want a pointer", p, ok, err)
	}
	vs, err := s.Versions(crashModel)
	if err != nil {
		t.Fatal(err)
	}
	var installed []string
	for _, v := range vs {
		installed = append(installed, v.Version)
		if err := checkIntact(root, crashModel, v.Version); err != nil {
			t.Errorf("after the crash: %v", err)
		}
		if v.Version == p.Version && v.Sequence != p.Sequence {
			t.Errorf("pointer sequence got %d; want %d", p.Sequence, v.Sequence)
		}
	}
	// Every directory under versions/m is an installed version: no half-made ones.
	ents, _ := os.ReadDir(filepath.Join(root, "versions", crashModel))
	if len(ents) != len(vs) {
		t.Errorf("versions/%s holds %d entries; want the %d installed %v", crashModel, len(ents), len(vs), installed)
	}
	if !slices.Contains(installed, p.Version) {
		t.Errorf("active %s is not installed (%v)", p.Version, installed)
	}
	if p.Previous != "" && !slices.Contains(installed, p.Previous) {
		t.Errorf("previous %s is not installed (%v)", p.Previous, installed)
	}
	return p, installed
}

func TestCrashPoints(t *testing.T) {
	// A run without a crash lists the crash points in the order the child meets them.
	root := t.TempDir()
	setupCrashStore(t, root, true)
	c := startChild(t, "points", root, "")
	if err := c.wait(); err != nil {
		t.Fatalf("child without a crash: %v\n%s", err, c.stderr.Bytes())
	}
	points := c.seen
	t.Logf("%d crash points: %v", len(points), points)
	if len(points) < 6 {
		t.Fatalf("got %d crash points; want at least 6", len(points))
	}
	for _, want := range []string{"install.sync-tree#1", "install.rename#1", "activate.rename#1", "history.trim.rename#1", "remove.rename#1"} {
		if !slices.Contains(points, want) {
			t.Errorf("crash points lack %s", want)
		}
	}
	if p, _ := crashState(t, root); p.Version != vNext || p.Previous != vCur {
		t.Fatalf("without a crash: active %s (previous %s); want %s (previous %s)", p.Version, p.Previous, vNext, vCur)
	}
	installedAt := slices.Index(points, "install.rename#1")  // v2 exists after this point
	activatedAt := slices.Index(points, "activate.rename#1") // v2 is active after this point

	for i, id := range points {
		t.Run(strings.ReplaceAll(id, "#", "_"), func(t *testing.T) {
			root := t.TempDir()
			setupCrashStore(t, root, true)
			c := startChild(t, "points", root, id)
			if !c.waitFor(pointPrefix + id) {
				t.Fatalf("child did not reach %s\n%s", id, c.stderr.Bytes())
			}
			if i == 0 { // the paused child owns the store
				if _, err := Open(root, Options{Logger: quiet}); !errors.Is(err, ErrLocked) {
					t.Errorf("Open while the child owns the store got %v; want %v", err, ErrLocked)
				}
			}
			c.kill()

			p, installed := crashState(t, root)
			state := "broken"
			switch {
			case p.Version == vCur && p.Previous == vOld && slices.Contains(installed, vOld):
				state = "before"
			case p.Version == vNext && p.Previous == vCur:
				state = "after"
			}
			want := "before"
			if i > activatedAt {
				want = "after"
			}
			if state != want {
				t.Errorf("killed at %s: state %s (active %s, previous %s, installed %v); want %s", id, state, p.Version, p.Previous, installed, want)
			}
			if got, want := slices.Contains(installed, vNext), i > installedAt; got != want {
				t.Errorf("killed at %s: %s installed got %v; want %v", id, vNext, got, want)
			}
			// The store goes on working.
			s, err := Open(root, Options{Keep: 2, Logger: quiet})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			if err := installVersion(s, crashModel, "3.0.0", 4); err != nil {
				t.Errorf("install after the crash: %v", err)
			}
			if err := s.Activate(crashModel, "3.0.0", "after the crash"); err != nil {
				t.Errorf("activate after the crash: %v", err)
			}
		})
	}
}

func TestCrashRandom(t *testing.T) {
	root := t.TempDir()
	setupCrashStore(t, root, false)
	seed := uint64(time.Now().UnixNano())
	rng := rand.New(rand.NewPCG(seed, 0))
	t.Logf("seed %d", seed)
	last := Pointer{Version: vCur, Sequence: 2}
	pending := 0 // rounds that ended with a newer version installed but not active
	for round := range 20 {
		c := startChild(t, "loop", root, "")
		if !c.waitFor("READY") {
			t.Fatalf("round %d: child did not start\n%s", round, c.stderr.Bytes())
		}
		time.Sleep(time.Duration(rng.IntN(40_000)) * time.Microsecond)
		c.kill()
		if c.stderr.Len() > 0 {
			t.Fatalf("round %d: child failed: %s", round, c.stderr.Bytes())
		}

		p, installed := crashState(t, root)
		if p.Sequence < last.Sequence {
			t.Errorf("round %d: active went back from %s to %s", round, last.Version, p.Version)
		}
		if p.Previous == "" {
			t.Errorf("round %d: active %s lost its previous version", round, p.Version)
		}
		if installed[0] != p.Version {
			pending++
		}
		last = p
		if t.Failed() {
			t.Fatalf("round %d: stopping", round)
		}
	}
	t.Logf("after 20 kills: active %s (previous %s); %d kills fell between an install and its activation", last.Version, last.Previous, pending)
	if last.Sequence == 2 {
		t.Errorf("no install+activate completed in 20 rounds; the kills did not land inside the loop")
	}
}
