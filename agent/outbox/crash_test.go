package outbox

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/edge-agent/edge-agent/internal/testenv"
)

// The crash test runs this test binary again as a child (TestHelperProcess) that appends
// from several goroutines and prints every seq Append returned; the parent kills it with
// SIGKILL at a random moment and checks the file keeps every printed record.
const (
	envCrashHelper = "EDGE_OUTBOX_CRASH_HELPER" // "1" in the child
	envCrashPath   = "EDGE_OUTBOX_CRASH_PATH"
	envCrashRound  = "EDGE_OUTBOX_CRASH_ROUND"
	crashWriters   = 8
)

// crashData is the record writer w appends as its i-th in round r: the parent derives it
// again from the printed line.
func crashData(r, w, i int) []byte {
	head := fmt.Sprintf("rec-r%d-w%d-i%d-", r, w, i)
	n := len(head) + (r*7+w*13+i*31)%200
	b := make([]byte, n)
	copy(b, head)
	for j := len(head); j < n; j++ {
		b[j] = byte('a' + (i+j)%26)
	}
	return b
}

func TestHelperProcess(t *testing.T) {
	if os.Getenv(envCrashHelper) != "1" {
		t.Skip("the child process of TestCrashKill9")
	}
	die := func(err error) {
		fmt.Fprintln(os.Stderr, "crash helper:", err)
		os.Exit(2)
	}
	round, err := strconv.Atoi(os.Getenv(envCrashRound))
	if err != nil {
		die(err)
	}
	o, err := Open(os.Getenv(envCrashPath), Options{Streams: map[string]Caps{"results": {}}, Logger: quiet})
	if err != nil {
		die(err)
	}
	s := o.Stream("results")
	var mu sync.Mutex // one line per write(2), whole
	say := func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		if _, err := fmt.Fprintf(os.Stdout, format, args...); err != nil {
			die(err)
		}
	}
	say("ready\n")
	var wg sync.WaitGroup
	for w := range crashWriters {
		wg.Go(func() {
			for i := 0; ; i++ {
				seq, err := s.Append(context.Background(), crashData(round, w, i))
				if err != nil {
					die(err)
				}
				say("acked %d %d %d\n", seq, w, i) // os.Stdout is unbuffered
			}
		})
	}
	wg.Wait() // never: the parent kills us
}

type acked struct {
	seq   uint64
	round int
	w, i  int
}

func TestCrashKill9(t *testing.T) {
	testenv.NoGoroutineLeaks(t)
	if os.Getenv(envCrashHelper) != "" {
		t.Skip("in the child")
	}
	path := filepath.Join(t.TempDir(), "outbox.db")
	const rounds = 20
	var all []acked // every record any child was told was stored, across rounds
	maxSeq := uint64(0)
	for r := range rounds {
		printed := runAndKill(t, path, r, 20+rand.N(281)) // 20–300 ms
		if len(printed) == 0 {
			t.Logf("round %d: killed before the first append returned", r)
		}
		all = append(all, printed...)

		o, err := Open(path, Options{Streams: map[string]Caps{"results": {}}, Logger: quiet})
		if err != nil {
			t.Fatalf("round %d: Open after kill -9: %v", r, err)
		}
		s := o.Stream("results")
		stored := map[uint64][]byte{}
		for _, rec := range readAll(t, s, 0) {
			stored[rec.seq] = []byte(rec.data)
		}
		for _, a := range all {
			got, ok := stored[a.seq]
			if !ok {
				t.Errorf("round %d: seq %d (round %d, writer %d, #%d) was acked but is missing", r, a.seq, a.round, a.w, a.i)
				continue
			}
			if want := crashData(a.round, a.w, a.i); !bytes.Equal(got, want) {
				t.Errorf("round %d: seq %d: got %q; want %q", r, a.seq, got, want)
			}
			maxSeq = max(maxSeq, a.seq)
		}
		if st := s.Stats(); st.Count != len(stored) || st.LastSeq < maxSeq {
			t.Errorf("round %d: Stats %+v; want count %d, last seq at least %d", r, st, len(stored), maxSeq)
		}
		seq, err := s.Append(context.Background(), []byte("parent"))
		if err != nil {
			t.Fatalf("round %d: Append after reopening: %v", r, err)
		}
		if seq <= maxSeq {
			t.Errorf("round %d: Append after reopening got seq %d; want more than %d, the largest acked", r, seq, maxSeq)
		}
		maxSeq = seq
		if err := o.Close(); err != nil {
			t.Fatal(err)
		}
		if t.Failed() {
			return
		}
	}
	t.Logf("%d acked records across %d kills, all present", len(all), rounds)
}

// runAndKill starts the helper on path, kills it with SIGKILL delayMs after it is ready,
// and returns what it printed as acked.
func runAndKill(t *testing.T, path string, round, delayMs int) []acked {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$")
	cmd.Env = append(os.Environ(), envCrashHelper+"=1", envCrashPath+"="+path, envCrashRound+"="+strconv.Itoa(round))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ready := make(chan struct{})
	lines := make(chan []acked, 1)
	go func() {
		var got []acked
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			var a acked
			if sc.Text() == "ready" {
				close(ready)
			} else if _, err := fmt.Sscanf(sc.Text(), "acked %d %d %d", &a.seq, &a.w, &a.i); err == nil {
				a.round = round
				got = append(got, a)
			}
		}
		lines <- got
	}()
	select {
	case <-ready:
		time.Sleep(time.Duration(delayMs) * time.Millisecond) // the moment of the crash, not an assertion
	case got := <-lines:
		cmd.Wait()
		t.Fatalf("round %d: the helper exited before it was ready (printed %d acks): %s", round, len(got), stderr.String())
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	got := <-lines // EOF: the child is gone
	err = cmd.Wait()
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("round %d: the helper ended with %v, not by SIGKILL: %s", round, err, stderr.String())
	}
	return got
}
