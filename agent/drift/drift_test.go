package drift_test

// The monitor's own tests: the statistics against values worked out by hand, and streams
// drawn from known distributions (seeded) through the real Monitor. The end-to-end test with
// a real agent, a real model, a bundle packed by edgectl and a real broker is in
// agent/drift_test.go.

import (
	"context"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"slices"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/edge-agent/edge-agent/agent/drift"
	"github.com/edge-agent/edge-agent/agent/infer"
	"github.com/edge-agent/edge-agent/internal/testenv"
	"github.com/edge-agent/edge-agent/models/bundle"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func near(got, want, tol float64) bool { return math.Abs(got-want) <= tol }

// PSI worked out by hand: p = (.1 .2 .3 .4) against q = (.25 .25 .25 .25):
// −.15·ln(.4) − .05·ln(.8) + .05·ln(1.2) + .15·ln(1.6) = .137444 + .011157 + .009116 + .070501.
// An empty bin counts as 1e-4: p = (0 .5 .5), q = (.2 .4 .4):
// (1e-4 − .2)·ln(1e-4/.2) + 2·.1·ln(1.25) = 1.519420 + .044629.
func TestPSIHandComputed(t *testing.T) {
	for _, c := range []struct {
		name     string
		obs, exp []float64
		want     float64
	}{
		{"shifted", []float64{10, 20, 30, 40}, []float64{25, 25, 25, 25}, 0.228218},
		{"empty bin", []float64{0, 5, 5}, []float64{2, 4, 4}, 1.564049},
		{"same shape, other scale", []float64{1, 2, 3}, []float64{100, 200, 300}, 0},
		{"symmetric", []float64{25, 25, 25, 25}, []float64{10, 20, 30, 40}, 0.228218},
	} {
		if got := drift.PSI(c.obs, c.exp); !near(got, c.want, 1e-5) {
			t.Errorf("%s: PSI(%v, %v) = %.6f; want %.6f", c.name, c.obs, c.exp, got, c.want)
		}
	}
	if got := drift.PSI([]uint64{1, 2}, []float64{1, 2, 3}); !math.IsNaN(got) {
		t.Errorf("PSI over different bins = %v; want NaN", got)
	}
	if got := drift.PSI([]uint64{0, 0}, []uint64{1, 2}); !math.IsNaN(got) {
		t.Errorf("PSI of an empty window = %v; want NaN", got)
	}
}

// KS worked out by hand: cumulative proportions (.25 .5 1) against (.5 .75 1) differ by
// at most .25; all mass at opposite ends differs by 1.
func TestBinnedKSHandComputed(t *testing.T) {
	for _, c := range []struct {
		obs, exp []uint64
		want     float64
	}{
		{[]uint64{1, 1, 2}, []uint64{2, 1, 1}, 0.25},
		{[]uint64{0, 0, 4}, []uint64{4, 0, 0}, 1},
		{[]uint64{3, 3, 3}, []uint64{1, 1, 1}, 0},
		{[]uint64{0, 1, 0, 0}, []uint64{1, 1, 1, 1}, 0.5}, // (0 1 1 1) vs (.25 .5 .75 1)
	} {
		if got := drift.BinnedKS(c.obs, c.exp); !near(got, c.want, 1e-12) {
			t.Errorf("BinnedKS(%v, %v) = %v; want %v", c.obs, c.exp, got, c.want)
		}
	}
	// c(0.01) = √(ln(200)/2) = 1.627624; √((500+1000)/(500·1000)) = 0.0547723.
	if got := drift.KSCritical(0.01, 500, 1000); !near(got, 0.089148, 1e-6) {
		t.Errorf("KSCritical(0.01, 500, 1000) = %.6f; want 0.089148", got)
	}
	// c(0.05) = √(ln(40)/2) = 1.358102; √(1/100).
	if got := drift.KSCritical(0.05, 100, 0); !near(got, 0.1358102, 1e-6) {
		t.Errorf("KSCritical(0.05, 100, ∞) = %.7f; want 0.1358102", got)
	}
}

// The binned statistic never exceeds the exact two-sample KS statistic of the raw samples
// (computed here by sorting), so the critical value stays conservative.
func TestBinnedKSNeverExceedsExact(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for trial := range 50 {
		a := make([]float64, 200+trial)
		b := make([]float64, 300)
		for i := range a {
			a[i] = rng.NormFloat64() + float64(trial%5)*0.2
		}
		for i := range b {
			b[i] = rng.NormFloat64()
		}
		edges := []float64{-3, -2, -1, -0.5, 0, 0.5, 1, 2, 3}
		ha, hb := histogram(a, edges), histogram(b, edges)
		binned, exact := drift.BinnedKS(ha, hb), exactKS(a, b)
		if binned > exact+1e-12 {
			t.Fatalf("trial %d: binned KS %.4f > exact %.4f", trial, binned, exact)
		}
	}
}

// histogram counts values below edges[0], in each [e_k, e_k+1) and above the last edge.
func histogram(v, edges []float64) []uint64 {
	h := make([]uint64, len(edges)+1)
	for _, x := range v {
		h[sort.Search(len(edges), func(i int) bool { return edges[i] > x })]++
	}
	return h
}

func exactKS(a, b []float64) float64 {
	a, b = append([]float64(nil), a...), append([]float64(nil), b...)
	sort.Float64s(a)
	sort.Float64s(b)
	var d float64
	i, j := 0, 0
	for i < len(a) && j < len(b) {
		x := min(a[i], b[j])
		for i < len(a) && a[i] <= x {
			i++
		}
		for j < len(b) && b[j] <= x {
			j++
		}
		d = max(d, math.Abs(float64(i)/float64(len(a))-float64(j)/float64(len(b))))
	}
	return d
}

// The test population: four features and a 4-class classifier.
var classFreq = []float64{0.4, 0.3, 0.2, 0.1}

type population struct {
	rng   *rand.Rand
	shift float64   // added to f0, in units of its std (1)
	freq  []float64 // predicted-class frequencies
	score float64   // mean top-1 score
}

func (p *population) features() []float64 {
	return []float64{p.rng.NormFloat64() + p.shift, 5 + 2*p.rng.NormFloat64(), p.rng.Float64(), p.rng.ExpFloat64()}
}

func (p *population) class() int {
	u, acc := p.rng.Float64(), 0.0
	for i, f := range p.freq {
		if acc += f; u < acc {
			return i
		}
	}
	return len(p.freq) - 1
}

// reference computes what `edgectl bundle pack` computes: per feature mean, std and a
// 20-bin equal-width histogram from the minimum to the maximum.
func reference(n int, seed uint64) *bundle.Reference {
	p := &population{rng: rand.New(rand.NewPCG(seed, seed)), freq: classFreq}
	names := []string{"f0", "f1", "f2", "f3"}
	vals := make([][]float64, 4)
	for range n {
		for i, v := range p.features() {
			vals[i] = append(vals[i], v)
		}
	}
	ref := &bundle.Reference{Samples: n, Classes: classFreq}
	for i, v := range vals {
		ref.Features = append(ref.Features, featureStats(names[i], v, 20))
	}
	return ref
}

func featureStats(name string, v []float64, bins int) bundle.FeatureStats {
	lo, hi := v[0], v[0]
	var sum float64
	for _, x := range v {
		lo, hi, sum = min(lo, x), max(hi, x), sum+x
	}
	mean := sum / float64(len(v))
	var sq float64
	for _, x := range v {
		sq += (x - mean) * (x - mean)
	}
	fs := bundle.FeatureStats{Name: name, Mean: mean, Std: math.Sqrt(sq / float64(len(v))), Counts: make([]uint64, bins)}
	for b := 0; b <= bins; b++ {
		fs.Edges = append(fs.Edges, lo+(hi-lo)*float64(b)/float64(bins))
	}
	for _, x := range v {
		fs.Counts[min(int((x-lo)/(hi-lo)*float64(bins)), bins-1)]++
	}
	return fs
}

// feeder drives a monitor with frames of a population; Meta is the frame number.
type feeder struct {
	t     *testing.T
	m     *drift.Monitor[int]
	key   drift.Key
	frame int
	clock time.Time
}

func (f *feeder) frames(p *population, n int) {
	for range n {
		f.frame++
		f.clock = f.clock.Add(10 * time.Millisecond)
		v := p.features()
		in := infer.FromFloat32([]int{1, 4}, []float32{float32(v[0]), float32(v[1]), float32(v[2]), float32(v[3])})
		score := min(1, max(0, p.score+0.05*p.rng.NormFloat64()))
		f.m.Observe(&drift.Input[int]{Key: f.key, Time: f.clock, Inputs: []infer.Tensor{in},
			Class: p.class(), Classified: true, Score: score, Scored: true, Meta: f.frame})
	}
}

func scoresOf(m *drift.Monitor[int]) map[string]drift.Score {
	out := map[string]drift.Score{}
	for _, s := range m.Scores() {
		out[s.Feature+"/"+s.Statistic] = s
	}
	return out
}

// alerts collects what the monitor delivers.
type alerts struct {
	mu  sync.Mutex
	all []drift.Alert[int]
}

func (a *alerts) add(_ context.Context, al drift.Alert[int]) {
	a.mu.Lock()
	a.all = append(a.all, al)
	a.mu.Unlock()
}

// list is what has been delivered so far (the monitor may still be adding).
func (a *alerts) list() []drift.Alert[int] {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.all)
}

func (a *alerts) find(raised bool, feature, stat string) (drift.Alert[int], bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, al := range a.all {
		if al.Raised == raised && al.Evidence.Feature == feature && al.Evidence.Statistic == stat {
			return al, true
		}
	}
	return drift.Alert[int]{}, false
}

func (a *alerts) wait(t *testing.T, raised bool, feature, stat string) drift.Alert[int] {
	t.Helper()
	deadline := time.Now().Add(testenv.Patience(10 * time.Second))
	for {
		if al, ok := a.find(raised, feature, stat); ok {
			return al
		}
		if time.Now().After(deadline) {
			t.Fatalf("no alert (raised %v) for %s %s within 10s; got %d others", raised, feature, stat, len(a.list()))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func newMonitor(t *testing.T, cfg drift.Config, ref *bundle.Reference) (*feeder, *alerts) {
	t.Helper()
	testenv.NoGoroutineLeaks(t)
	var got alerts
	m := drift.New(drift.Options[int]{Config: cfg, Alert: got.add, Logger: quiet,
		Reference: func(drift.Key) (*bundle.Reference, error) { return ref, nil }})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); m.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	key := drift.Key{Model: "m", Version: "1.0.0"}
	m.Register(key, []infer.TensorInfo{{DType: infer.Float32, Shape: []int{1, 4}, Bytes: 16}})
	return &feeder{t: t, m: m, key: key, clock: time.Date(2026, 11, 24, 10, 0, 0, 0, time.UTC)}, &got
}

// A long stream drawn from the reference distribution: 200 windows of 500 results. The raw
// per-window exceedance rate of each statistic is measured and reported; with hysteresis no
// alert is raised.
func TestNoFalseAlarmsOnTheReferenceDistribution(t *testing.T) {
	const windows = 200
	f, got := newMonitor(t, drift.Config{}, reference(5000, 7))
	p := &population{rng: rand.New(rand.NewPCG(11, 12)), freq: classFreq, score: 0.8}
	above := map[string]int{}
	for w := range windows {
		f.frames(p, drift.DefaultWindow)
		for name, s := range scoresOf(f.m) {
			if s.Windows != uint64(w+1) && !(name == "classes/class_psi" || name == "confidence/confidence_drop") {
				t.Fatalf("%s evaluated %d windows after %d", name, s.Windows, w+1)
			}
			if s.Value > s.Threshold {
				above[name]++
			}
			if s.Alert {
				t.Fatalf("window %d: %s alert raised at %.4f (threshold %.4f) on the reference distribution", w+1, name, s.Value, s.Threshold)
			}
		}
	}
	names := make([]string, 0)
	for name := range scoresOf(f.m) {
		names = append(names, name)
	}
	sort.Strings(names)
	total := 0
	for _, name := range names {
		s := scoresOf(f.m)[name]
		total += above[name]
		t.Logf("%-28s threshold %.4f  raw false-alarm rate %d/%d windows (%.2f%%)", name, s.Threshold, above[name], s.Windows, 100*float64(above[name])/float64(s.Windows))
	}
	t.Logf("all %d statistics: raw %d exceedances in %d statistic-windows (%.3f%%); with hysteresis (%d windows in a row) 0 alerts",
		len(names), total, len(names)*windows, 100*float64(total)/float64(len(names)*windows), drift.DefaultHysteresis)
	if len(names) != 10 {
		t.Errorf("statistics %v; want psi and ks for 4 features, class_psi and confidence_drop", names)
	}
	// KS at alpha 0.01 (binned: conservative) and PSI at 0.2 exceed rarely: allow 2% per
	// statistic, far above their expected rate, far below what a broken statistic gives.
	for name, n := range above {
		if n > windows/50 {
			t.Errorf("%s above its threshold in %d of %d windows of the reference distribution", name, n, windows)
		}
	}
	if all := got.list(); len(all) != 0 {
		t.Errorf("alerts delivered: %+v", all)
	}
}

// A mean shift of 0.5 std on f0 and a class-prior shift, aligned on windows 6..10, raise
// the KS alert of f0 and the class alert at the third shifted window (window 8), with their
// evidence and the frames kept from window 8; nothing else raises; after the stream returns
// (window 11 on) both clear.
func TestShiftRaisesThenClears(t *testing.T) {
	f, got := newMonitor(t, drift.Config{}, reference(5000, 7))
	const w = drift.DefaultWindow
	ref := &population{rng: rand.New(rand.NewPCG(21, 22)), freq: classFreq, score: 0.8}
	shifted := &population{rng: rand.New(rand.NewPCG(31, 32)), shift: 0.5, freq: []float64{0.1, 0.2, 0.3, 0.4}, score: 0.8}
	f.frames(ref, 5*w)
	for i := range 5 {
		f.frames(shifted, w)
		s := scoresOf(f.m)
		wantRaised := i >= 2 // hysteresis 3: windows 6, 7 above, raised at 8
		for _, name := range []string{"f0/ks", "classes/class_psi"} {
			if s[name].Alert != wantRaised {
				t.Fatalf("after shifted window %d (window %d): %s alert %v at %.4f (threshold %.4f); want %v",
					i+1, 6+i, name, s[name].Alert, s[name].Value, s[name].Threshold, wantRaised)
			}
		}
		for _, name := range []string{"f1/psi", "f1/ks", "f2/psi", "f2/ks", "f3/psi", "f3/ks", "confidence/confidence_drop"} {
			if s[name].Alert {
				t.Errorf("window %d: %s raised at %.4f; only f0 and the classes shifted", 6+i, name, s[name].Value)
			}
		}
	}
	ks := got.wait(t, true, "f0", drift.StatKS)
	e := ks.Evidence
	if e.Window.Index != 8 || e.Window.Size != w || e.Consecutive != 3 || e.Value <= e.Threshold || !near(e.Threshold, drift.KSCritical(0.01, w, 5000), 1e-12) {
		t.Errorf("ks evidence %+v; want window 8 of %d, 3 in a row, value above the critical value", e, w)
	}
	if !e.Window.End.After(e.Window.Start) || e.Window.End.Sub(e.Window.Start) != (w-1)*10*time.Millisecond {
		t.Errorf("window time range %v..%v; want %d frames 10ms apart", e.Window.Start, e.Window.End, w)
	}
	if e.Reference.Source != "bundle" || e.Reference.Samples != 5000 || !near(e.Reference.Mean, 0, 0.05) || !near(e.Reference.Std, 1, 0.05) {
		t.Errorf("reference summary %+v; want the bundle's N(0,1) from 5000 samples", e.Reference)
	}
	if !near(e.Observed.Mean, 0.5, 0.15) || e.Observed.Samples != w {
		t.Errorf("observed summary %+v; want mean near 0.5 over %d values", e.Observed, w)
	}
	cls := got.wait(t, true, "classes", drift.StatClassPSI)
	if cls.Evidence.Window.Index != 8 || len(cls.Evidence.Reference.Classes) != 5 || !near(cls.Evidence.Reference.Classes[0], 0.4, 1e-9) ||
		!near(cls.Evidence.Observed.Classes[3], 0.4, 0.07) || len(cls.Evidence.Classes) != 5 || cls.Evidence.Classes[4] != -1 {
		t.Errorf("class evidence %+v; want the reference 0.4/0.3/0.2/0.1 against about 0.1/0.2/0.3/0.4 on 4 bins + other", cls.Evidence)
	}
	// The samples come with the first raised alert of window 8: every 25th frame of it.
	var kept []drift.Sample[int]
	for _, al := range got.list() {
		if len(al.Samples) > 0 {
			if kept != nil {
				t.Errorf("samples delivered twice")
			}
			kept = al.Samples
		}
	}
	if len(kept) != drift.DefaultMaxCaptures {
		t.Fatalf("kept %d samples; want %d", len(kept), drift.DefaultMaxCaptures)
	}
	for i, s := range kept {
		if want := 7*w + 1 + i*(w/drift.DefaultMaxCaptures); s.Meta != want {
			t.Errorf("sample %d is frame %d; want %d (window 8, every %dth)", i, s.Meta, want, w/drift.DefaultMaxCaptures)
		}
		if len(s.Inputs) != 1 || len(s.Inputs[0].Data) != 16 || s.Inputs[0].Float(0) < -5 {
			t.Errorf("sample %d input %+v", i, s.Inputs)
		}
	}

	// Back to the reference distribution from window 11: the class alert clears exactly
	// three windows later; f0's KS within ten.
	for i := range 10 {
		f.frames(ref, w)
		if s := scoresOf(f.m); i == 2 && s["classes/class_psi"].Alert {
			t.Errorf("class alert still raised at window %d (value %.4f)", 11+i, s["classes/class_psi"].Value)
		}
	}
	for name, s := range scoresOf(f.m) {
		if s.Alert {
			t.Errorf("%s still raised 10 windows after the stream returned (value %.4f, clears at %.4f)", name, s.Value, s.Threshold*drift.DefaultClearRatio)
		}
	}
	cl := got.wait(t, false, "f0", drift.StatKS)
	if cl.Evidence.Consecutive != 3 || cl.Evidence.Value > cl.Evidence.ClearBelow || cl.Evidence.Window.Index < 13 {
		t.Errorf("clear evidence %+v; want 3 windows in a row at or below %.4f, at window 13 or later", cl.Evidence, cl.Evidence.ClearBelow)
	}
	got.wait(t, false, "classes", drift.StatClassPSI)
}

// A version without a reference is not monitored unless OutputsOnly; then its classes and
// confidence are compared with its first window: a class-prior shift and a confidence drop
// of 0.2 raise, the inputs are not looked at.
func TestOutputsOnlyAgainstTheFirstWindow(t *testing.T) {
	f, _ := newMonitor(t, drift.Config{Window: 200, Hysteresis: 2}, nil)
	f.frames(&population{rng: rand.New(rand.NewPCG(1, 1)), freq: classFreq, score: 0.8}, 2000)
	if s := f.m.Scores(); len(s) != 0 {
		t.Fatalf("a version without a reference, OutputsOnly off: scores %+v; want none", s)
	}

	f, got := newMonitor(t, drift.Config{Window: 200, Hysteresis: 2, OutputsOnly: true}, nil)
	f.frames(&population{rng: rand.New(rand.NewPCG(1, 1)), freq: classFreq, score: 0.8}, 5*200)
	s := scoresOf(f.m)
	if len(s) != 2 || s["classes/class_psi"].Windows != 4 || s["confidence/confidence_drop"].Windows != 4 || s["classes/class_psi"].Alert {
		t.Fatalf("scores %+v; want class_psi and confidence_drop over 4 windows after the first, no alert", s)
	}
	f.frames(&population{rng: rand.New(rand.NewPCG(2, 2)), shift: 3, freq: []float64{0.1, 0.1, 0.1, 0.7}, score: 0.6}, 2*200)
	s = scoresOf(f.m)
	if !s["classes/class_psi"].Alert || !s["confidence/confidence_drop"].Alert || !near(s["confidence/confidence_drop"].Value, 0.2, 0.03) {
		t.Errorf("after the shift: %+v; want both raised, the drop near 0.2", s)
	}
	cls := got.wait(t, true, "classes", drift.StatClassPSI)
	if cls.Evidence.Reference.Source != "first-window" || cls.Evidence.Reference.Samples != 200 {
		t.Errorf("class baseline %+v; want the first window of 200", cls.Evidence.Reference)
	}
}

// Images are monitored per channel of the NHWC input, sampling pixels with a stride: a
// shift of the green channel alone raises its alerts and no other.
func TestImageChannels(t *testing.T) {
	testenv.NoGoroutineLeaks(t)
	rng := rand.New(rand.NewPCG(5, 5))
	const h, w = 16, 16
	img := func(gShift float64) infer.Tensor {
		v := make([]float32, h*w*3)
		for i := range v {
			v[i] = float32(rng.NormFloat64())
			if i%3 == 1 {
				v[i] += float32(gShift)
			}
		}
		return infer.FromFloat32([]int{1, h, w, 3}, v)
	}
	// The reference: 400 frames, every pixel.
	chans := make([][]float64, 3)
	for range 400 {
		x := img(0)
		for i := range x.Len() {
			chans[i%3] = append(chans[i%3], x.Float(i))
		}
	}
	ref := &bundle.Reference{Samples: 400}
	for c, name := range []string{"r", "g", "b"} {
		ref.Features = append(ref.Features, featureStats(name, chans[c], 20))
	}
	var got alerts
	m := drift.New(drift.Options[int]{Config: drift.Config{Window: 100, Hysteresis: 2, Pixels: 32}, Alert: got.add, Logger: quiet,
		Reference: func(drift.Key) (*bundle.Reference, error) { return ref, nil }})
	key := drift.Key{Model: "cam", Version: "2"}
	m.Register(key, []infer.TensorInfo{{DType: infer.Float32, Shape: []int{1, h, w, 3}, Bytes: h * w * 3 * 4}})
	feed := func(n int, shift float64) {
		for range n {
			m.Observe(&drift.Input[int]{Key: key, Inputs: []infer.Tensor{img(shift)}, NoMeta: true})
		}
	}
	feed(300, 0)
	feed(200, 0.5)
	for _, s := range m.Scores() {
		if want := s.Feature == "g"; s.Alert != want {
			t.Errorf("%s %s alert %v at %.4f (threshold %.4f); want %v", s.Feature, s.Statistic, s.Alert, s.Value, s.Threshold, want)
		}
	}
}

// Observe allocates nothing in steady state, window ends and kept samples included.
func TestObserveAllocatesNothing(t *testing.T) {
	f, _ := newMonitor(t, drift.Config{Window: 100}, reference(2000, 3))
	p := &population{rng: rand.New(rand.NewPCG(9, 9)), freq: classFreq, score: 0.8}
	in := &drift.Input[int]{Key: f.key, Inputs: []infer.Tensor{infer.NewTensor(infer.Float32, []int{1, 4})},
		Class: 1, Classified: true, Score: 0.8, Scored: true}
	step := func() { // the population's own draws allocate nothing either
		in.Inputs[0].SetFloat(0, p.rng.NormFloat64())
		in.Inputs[0].SetFloat(1, 5+2*p.rng.NormFloat64())
		in.Inputs[0].SetFloat(2, p.rng.Float64())
		in.Inputs[0].SetFloat(3, p.rng.ExpFloat64())
		in.Meta++
		f.m.Observe(in)
	}
	for range 300 { // the first windows set the baselines and fill the sample slots
		step()
	}
	if n := testing.AllocsPerRun(1000, step); n != 0 {
		t.Errorf("Observe: %.2f allocations per frame; want 0", n)
	}
}

// A reference that does not match the model's input leaves the inputs unmonitored (the
// outputs still are), and at most MaxVersions versions are tracked.
func TestMismatchAndBounds(t *testing.T) {
	testenv.NoGoroutineLeaks(t)
	ref := reference(1000, 1)
	m := drift.New(drift.Options[int]{Config: drift.Config{Window: 100, MaxVersions: 2}, Logger: quiet,
		Reference: func(drift.Key) (*bundle.Reference, error) { return ref, nil }})
	for _, v := range []string{"1", "2", "3"} {
		m.Register(drift.Key{Model: "m", Version: v}, []infer.TensorInfo{{DType: infer.Float32, Shape: []int{1, 3}, Bytes: 12}})
	}
	if st := m.Stats(); st.Versions != 2 {
		t.Errorf("versions tracked %d; want 2 (MaxVersions)", st.Versions)
	}
	key := drift.Key{Model: "m", Version: "3"}
	p := &population{rng: rand.New(rand.NewPCG(4, 4)), freq: classFreq, score: 0.8}
	for range 300 {
		v := p.features()
		m.Observe(&drift.Input[int]{Key: key, Inputs: []infer.Tensor{infer.FromFloat32([]int{1, 3}, []float32{float32(v[0]), 0, 0})},
			Class: p.class(), Classified: true, Score: 0.9, Scored: true})
	}
	for _, s := range m.Scores() {
		if s.Feature != drift.FeatureClasses && s.Feature != drift.FeatureConfidence {
			t.Errorf("score %+v: a 3-value input does not match the 4-feature reference; want outputs only", s)
		}
	}
	if len(m.Scores()) != 2 {
		t.Errorf("scores %+v; want class_psi and confidence_drop", m.Scores())
	}
}

// A version seen first by Observe is looked up on Run's goroutine, then monitored.
func TestNewVersionLookedUpByRun(t *testing.T) {
	testenv.NoGoroutineLeaks(t)
	lookups := make(chan drift.Key, 4)
	m := drift.New(drift.Options[int]{Config: drift.Config{Window: 50}, Logger: quiet,
		Reference: func(k drift.Key) (*bundle.Reference, error) { lookups <- k; return reference(500, 2), nil }})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); m.Run(ctx) }()
	defer func() { cancel(); <-done }()
	key := drift.Key{Model: "m", Version: "9"}
	p := &population{rng: rand.New(rand.NewPCG(4, 4)), freq: classFreq, score: 0.8}
	deadline := time.Now().Add(testenv.Patience(10 * time.Second))
	for len(m.Scores()) == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("no scores 10s after the version's first frame; stats %+v", m.Stats())
		}
		v := p.features()
		m.Observe(&drift.Input[int]{Key: key, Inputs: []infer.Tensor{infer.FromFloat32([]int{1, 4}, []float32{float32(v[0]), float32(v[1]), float32(v[2]), float32(v[3])})}, NoMeta: true})
	}
	if k := <-lookups; k != key || len(lookups) != 0 {
		t.Errorf("looked up %v (+%d more); want %v once", k, len(lookups), key)
	}
	if st := m.Stats(); st.Unseen == 0 || st.Versions != 1 {
		t.Errorf("stats %+v; want frames seen before the look-up counted, one version", st)
	}
}
