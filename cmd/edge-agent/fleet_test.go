//go:build cgo

package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/edge-agent/edge-agent/internal/mqtttest"
	"github.com/edge-agent/edge-agent/internal/testenv"
)

func buildAgent(t testing.TB) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "edge-agent")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// A result printed on stdout was stored first (the outbox is the first sink). Killing the
// agent with SIGKILL at random moments (after 5..34 printed results and up to 50 ms more),
// 20 times, must lose none of them: all reach the
// broker, with the content that was printed, and sequence numbers never repeat.
func TestKill9LosesNoAcknowledgedResult(t *testing.T) {
	bin := buildAgent(t)
	broker := testenv.MosquittoWith(t, testenv.BrokerConfig{Persist: true})
	sub := mqtttest.NewConsumer(t, broker.URL, "edge/+/results", "edge/+/status")
	cfg := filepath.Join(t.TempDir(), "config.yaml")
	os.WriteFile(cfg, []byte(`device: kill-test
state_dir: `+t.TempDir()+`
log: {level: warn}
mqtt: {broker: `+broker.URL+`, backoff_min: 50ms, backoff_max: 200ms, batch_wait: 20ms, gzip: true}
sources:
  - {name: sweep, kind: synthetic, rate: 3000, synthetic: {wave: sine, phase: true, offset: -3.14159}}
models:
  - {name: sin, path: `+testenv.Data(t, "sin_model.tflite")+`, sources: [sweep], output: {kind: regression, regression: {names: [y]}}}
`), 0o644)

	printed := map[uint64]json.RawMessage{}
	var order []uint64
	var prevMax uint64
	for round := range 20 {
		cmd := exec.Command(bin, "run", "--config", cfg)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, _ := cmd.StdoutPipe()
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		lines := make(chan []byte, 1<<16)
		go func() {
			defer close(lines)
			sc := bufio.NewScanner(out)
			for sc.Scan() { // a line cut by the kill has no newline and is not returned complete
				lines <- bytes.Clone(sc.Bytes())
			}
		}()
		// Every complete line counts, the first included: it is recorded, and the round's
		// range of sequence numbers comes only from lines that were read.
		var roundMin, roundMax uint64
		recorded := 0
		record := func(l []byte) {
			var r struct{ Seq uint64 }
			if err := json.Unmarshal(l, &r); err != nil || r.Seq == 0 {
				return // the last line may be cut mid-write; Scanner returns its prefix at EOF
			}
			if _, dup := printed[r.Seq]; dup {
				t.Fatalf("round %d: seq %d printed twice", round, r.Seq)
			}
			printed[r.Seq] = l
			order = append(order, r.Seq)
			if recorded == 0 || r.Seq < roundMin {
				roundMin = r.Seq
			}
			roundMax = max(roundMax, r.Seq)
			recorded++
		}
		// The kill lands after a random number of printed results and a random moment more,
		// so every round has results to check however slow the machine is.
		target := 5 + rand.IntN(30)
		timeout := time.After(30 * time.Second)
		for recorded < target {
			select {
			case l, ok := <-lines:
				if !ok {
					cmd.Wait()
					t.Fatalf("round %d: the agent closed stdout after %d of %d results; stderr:\n%s", round, recorded, target, stderr.String())
				}
				record(l)
			case <-timeout:
				cmd.Process.Kill()
				cmd.Wait()
				t.Fatalf("round %d: %d of %d results within 30s; stderr:\n%s", round, recorded, target, stderr.String())
			}
		}
		time.Sleep(time.Duration(rand.IntN(50)) * time.Millisecond) // a random moment to kill at
		cmd.Process.Signal(syscall.SIGKILL)
		for l := range lines {
			record(l)
		}
		cmd.Wait()
		if recorded == 0 {
			t.Fatalf("round %d: no complete result record on stdout before the kill; stderr:\n%s", round, stderr.String())
		}
		if roundMin <= prevMax {
			t.Fatalf("round %d: seq %d after a restart; the previous run had reached %d (sequence numbers repeated)", round, roundMin, prevMax)
		}
		prevMax = roundMax
	}

	// One more run, undisturbed, sends whatever the killed runs left in the outbox.
	session := func() string {
		var st struct{ State, Session string }
		json.Unmarshal(sub.Status("kill-test"), &st)
		return st.State + "/" + st.Session
	}
	before := session()
	cmd := exec.Command(bin, "run", "--config", cfg)
	cmd.Stdout = io.Discard
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(testenv.Patience(60 * time.Second))
	for sub.Missing("results", "kill-test", order) > 0 {
		if time.Now().After(deadline) {
			missing := sub.Missing("results", "kill-test", order)
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("%d of %d acknowledged results never reached the broker; agent stderr:\n%s", missing, len(order), stderr.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Its own online status shows it is up (and handles SIGTERM) before it is stopped.
	mqtttest.WaitFor(t, 20*time.Second, "the final run's online status", func() bool {
		s := session()
		return s != before && strings.HasPrefix(s, "online/")
	})
	cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Errorf("final run: %v\n%s", err, stderr.String())
	}
	for _, s := range order {
		got, _ := sub.Record("results", "kill-test", s)
		var a, b map[string]any
		json.Unmarshal(printed[s], &a)
		json.Unmarshal(got, &b)
		if !reflect.DeepEqual(a, b) {
			t.Fatalf("seq %d: printed %s\nreceived %s", s, printed[s], got)
		}
	}
	t.Logf("20 kill -9 rounds: %d results acknowledged, all delivered with identical content; %d duplicates in %d messages",
		len(order), sub.Duplicates("results", "kill-test"), sub.Messages())
}
