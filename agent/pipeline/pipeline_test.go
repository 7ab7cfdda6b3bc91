package pipeline

// These tests drive the pipeline's own logic (fan-out, bounded queues, swap, drain) with
// small stand-in stages that are named as such; the real stages run end to end in
// agent/agent_test.go and cmd/edge-agent.

import (
	"context"
	"errors"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edge-agent/edge-agent/agent/infer"
	"github.com/edge-agent/edge-agent/agent/postprocess"
	"github.com/edge-agent/edge-agent/agent/result"
	"github.com/edge-agent/edge-agent/hal/sensor"
	"github.com/edge-agent/edge-agent/internal/testenv"
)

// standInPre copies the frame's first value into a float32 tensor.
type standInPre struct{}

func (standInPre) Apply(f sensor.Frame, _ []infer.Tensor) ([]infer.Tensor, error) {
	if len(f.Values) == 0 {
		return nil, errors.New("no values")
	}
	return []infer.Tensor{infer.FromFloat32([]int{1}, []float32{float32(f.Values[0])})}, nil
}

// standInModel adds its version offset and can be slowed down; it counts in-flight calls.
type standInModel struct {
	add      float32
	delay    time.Duration
	inflight atomic.Int32
	calls    atomic.Int32
}

func (m *standInModel) Info() infer.ModelInfo { return infer.ModelInfo{Delegate: "cpu"} }
func (m *standInModel) Infer(ctx context.Context, in []infer.Tensor) ([]infer.Tensor, error) {
	m.inflight.Add(1)
	defer m.inflight.Add(-1)
	m.calls.Add(1)
	time.Sleep(m.delay)
	return []infer.Tensor{infer.FromFloat32([]int{1}, []float32{float32(in[0].Float(0)) + m.add})}, nil
}

type standInPost struct{}

func (standInPost) Apply(out []infer.Tensor) (postprocess.Output, error) {
	return postprocess.Output{Outputs: [][]float64{out[0].Floats(infer.Quant{})}}, nil
}

type keep struct {
	mu  sync.Mutex
	all []*result.Result
}

func (k *keep) Put(_ context.Context, r *result.Result) error {
	k.mu.Lock()
	k.all = append(k.all, r)
	k.mu.Unlock()
	return nil
}

func (k *keep) n() int { k.mu.Lock(); defer k.mu.Unlock(); return len(k.all) }

func serving(version string, m *standInModel) *Serving {
	return &Serving{Version: version, Model: m, Pre: standInPre{}, Post: standInPost{}}
}

func TestFanOutToEveryModelAndDrainOnStop(t *testing.T) {
	before := runtime.NumGoroutine()
	sink := &keep{}
	p := New(Options{Device: "d", Sink: sink})
	q := sensor.NewQueue(1000)
	p.AddSource("s", q)
	a, b := &standInModel{}, &standInModel{add: 100}
	p.AddModel(ModelConfig{Name: "a", Sources: []string{"s"}, Queue: 1000}, serving("1", a))
	p.AddModel(ModelConfig{Name: "b", Sources: []string{"s"}, Queue: 1000, Workers: 3}, serving("1", b))
	for i := range 200 {
		q.Push(sensor.Frame{Source: "s", Seq: uint64(i + 1), Values: []float64{float64(i)}})
	}
	q.Close() // the source is finished
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- p.Run(ctx) }()
	cancel() // stop at once: everything already queued must still come out
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if got := sink.n(); got != 400 {
		t.Fatalf("%d results; want 400 (200 frames × 2 models)", got)
	}
	for _, r := range sink.all {
		want := float64(r.FrameSeq - 1)
		if r.Model == "b" {
			want += 100
		}
		if r.Outputs[0][0] != want || r.Device != "d" || r.Version != "1" || r.Schema != result.Schema {
			t.Fatalf("result %+v; want output %v", r, want)
		}
	}
	testenv.WaitGoroutines(t, before, 5*time.Second)
}

func TestFullModelQueueDropsOldestAndCounts(t *testing.T) {
	sink := &keep{}
	p := New(Options{Sink: sink})
	q := sensor.NewQueue(100)
	p.AddSource("s", q)
	slow := &standInModel{delay: 20 * time.Millisecond}
	p.AddModel(ModelConfig{Name: "m", Sources: []string{"s"}, Queue: 2}, serving("1", slow))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- p.Run(ctx) }()
	for i := range 50 {
		q.Push(sensor.Frame{Seq: uint64(i + 1), Values: []float64{1}})
	}
	q.Close()
	// Every frame ends as a result or a drop; wait for that, however slow the machine is.
	deadline := time.Now().Add(testenv.Patience(20 * time.Second))
	for st := p.Stats()[0]; st.Results+st.Dropped < 50 && time.Now().Before(deadline); st = p.Stats()[0] {
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	<-done
	st := p.Stats()[0]
	if st.Dropped == 0 || st.Results+st.Dropped != 50 {
		t.Fatalf("results %d + dropped %d; want 50 in all with some dropped", st.Results, st.Dropped)
	}
}

// Swapping versions under load loses no frame: in-flight inferences finish on the old
// version and the next ones use the new one.
func TestSwapUnderLoadLosesNothing(t *testing.T) {
	sink := &keep{}
	p := New(Options{Sink: sink})
	q := sensor.NewQueue(10000)
	p.AddSource("s", q)
	v1, v2 := &standInModel{delay: time.Millisecond}, &standInModel{add: 1000, delay: time.Millisecond}
	p.AddModel(ModelConfig{Name: "m", Sources: []string{"s"}, Queue: 10000, Workers: 4}, serving("1", v1))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- p.Run(ctx) }()
	for i := range 400 {
		q.Push(sensor.Frame{Seq: uint64(i + 1), Values: []float64{float64(i)}})
	}
	q.Close()
	for sink.n() < 100 {
		time.Sleep(time.Millisecond)
	}
	old, _ := p.Swap("m", serving("2", v2))
	if old.Version != "1" {
		t.Errorf("Swap returned version %q; want 1", old.Version)
	}
	for sink.n() < 400 {
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	<-done
	if v1.inflight.Load() != 0 || v2.inflight.Load() != 0 {
		t.Fatal("inferences still in flight after Run returned")
	}
	var byVersion = map[string]int{}
	for _, r := range sink.all {
		byVersion[r.Version]++
		want := float64(r.FrameSeq - 1)
		if r.Version == "2" {
			want += 1000
		}
		if r.Outputs[0][0] != want {
			t.Fatalf("frame %d on version %s gave %v; want %v", r.FrameSeq, r.Version, r.Outputs[0][0], want)
		}
	}
	if byVersion["1"] == 0 || byVersion["2"] == 0 || byVersion["1"]+byVersion["2"] != 400 {
		t.Fatalf("results by version %v; want both versions and 400 in all", byVersion)
	}
	if p.Stats()[0].InferErrors != 0 {
		t.Fatalf("errors during swap: %+v", p.Stats()[0])
	}
}

func TestProcessErrorsAreCountedNotFatal(t *testing.T) {
	p := New(Options{Sink: &keep{}})
	p.AddModel(ModelConfig{Name: "m"}, serving("1", &standInModel{}))
	p.AddModel(ModelConfig{Name: "empty"}, nil)
	ctx := context.Background()
	if _, err := p.Process(ctx, "m", sensor.Frame{}); err == nil {
		t.Fatal("frame without values accepted")
	}
	if _, err := p.Process(ctx, "empty", sensor.Frame{Values: []float64{1}}); !errors.Is(err, ErrNoVersion) {
		t.Fatalf("model without a version: err = %v; want ErrNoVersion", err)
	}
	if _, err := p.Process(ctx, "nope", sensor.Frame{}); !errors.Is(err, ErrUnknownModel) {
		t.Fatalf("unknown model: err = %v; want ErrUnknownModel", err)
	}
	r, err := p.Process(ctx, "m", sensor.Frame{Values: []float64{41}})
	if err != nil || r.Outputs[0][0] != 41 {
		t.Fatalf("after errors: %v, %+v; want 41", err, r)
	}
	st := p.Stats()
	if st[0].PreErrors != 1 || st[1].NoVersion != 1 {
		t.Fatalf("stats %+v; want 1 preprocess error and 1 no-version", st)
	}
}
