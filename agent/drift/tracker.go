package drift

import (
	"encoding/binary"
	"fmt"
	"math"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/edge-agent/edge-agent/agent/infer"
	"github.com/edge-agent/edge-agent/models/bundle"
)

// refFeature is one input feature's reference histogram, with an underflow and an overflow
// bin added around it (empty in the reference: it saw nothing outside its own range).
type refFeature struct {
	name      string
	edges     []float64
	bins      int
	uniform   bool // equal-width bins: a value's bin is computed, not searched
	lo, hi    float64
	inv       float64  // bins / (hi − lo)
	counts    []uint64 // bins+2: underflow, the reference's bins, overflow
	mean, std float64
}

func newRefFeature(fs bundle.FeatureStats) (refFeature, error) {
	b := len(fs.Counts)
	if b == 0 || len(fs.Edges) != b+1 {
		return refFeature{}, fmt.Errorf("feature %q: %d edges for %d counts (want counts+1)", fs.Name, len(fs.Edges), b)
	}
	var total uint64
	for _, c := range fs.Counts {
		total += c
	}
	if total == 0 {
		return refFeature{}, fmt.Errorf("feature %q: empty histogram", fs.Name)
	}
	for i, e := range fs.Edges {
		if !finite(e) || (i > 0 && e <= fs.Edges[i-1]) {
			return refFeature{}, fmt.Errorf("feature %q: edges must be finite and increasing", fs.Name)
		}
	}
	r := refFeature{name: fs.Name, edges: fs.Edges, bins: b, lo: fs.Edges[0], hi: fs.Edges[b], mean: fs.Mean, std: fs.Std}
	r.counts = make([]uint64, b+2)
	copy(r.counts[1:], fs.Counts)
	width := (r.hi - r.lo) / float64(b)
	r.uniform = true
	for k, e := range fs.Edges {
		if math.Abs(e-(r.lo+width*float64(k))) > 1e-9*(r.hi-r.lo) {
			r.uniform = false
		}
	}
	r.inv = float64(b) / (r.hi - r.lo)
	return r, nil
}

// bin is x's index in counts. Bins are [e_k, e_k+1), the last one closed, as edgectl bundle
// pack fills them.
func (r *refFeature) bin(x float64) int {
	switch {
	case x < r.lo:
		return 0
	case x > r.hi:
		return r.bins + 1
	case r.uniform:
		return 1 + min(int((x-r.lo)*r.inv), r.bins-1)
	}
	lo, hi := 0, len(r.edges) // the first edge above x
	for lo < hi {
		mid := int(uint(lo+hi) >> 1)
		if r.edges[mid] > x {
			hi = mid
		} else {
			lo = mid + 1
		}
	}
	return min(lo, r.bins) // lo−1 is x's bin, +1 for the underflow bin
}

// featureAcc is a window's histogram of one feature on the reference's bins.
type featureAcc struct {
	counts  []uint64
	n       uint64
	sum, sq float64
}

// window accumulates one tumbling window of results.
type window[S any] struct {
	n          int
	start, end int64 // Unix nanoseconds
	feats      []featureAcc
	classes    []uint64 // predicted top-1 class counts, MaxClasses+1 (the last: higher indices)
	classN     int
	confSum    float64
	confN      int
	samples    []Sample[S]
	kept       int
	keptBytes  int
	nextKeep   int // the frame number (1-based) of the next frame to keep; 0: none
}

// stat is one monitored statistic with its hysteresis state.
type stat struct {
	feature, statistic string
	threshold          float64
	value              float64
	evaluated          uint64
	above, below       int
	alert              bool
}

// tracker monitors one model version. What every frame touches comes first, so that it
// shares few cache lines: the lock, the window, the input layout.
type tracker[S any] struct {
	off bool // not monitored (no reference, outputs-only monitoring off)
	mu  sync.Mutex
	w   window[S]

	// Inputs: the model's first input tensor read as the reference was computed (per
	// channel of an NHWC image, per element of a small vector, else as one distribution),
	// pixels sampled with a fixed stride.
	feats     []refFeature // nil: inputs not monitored
	dtype     infer.DType
	quant     infer.Quant
	elems     int
	chans     int // values per pixel (features per sampled position)
	pixels    int // positions
	stride    int // positions between samples
	size      int // results per window (cfg.Window)
	keepEvery int // frames between kept frames
	keep      func(dst *S, src S)

	key        Key
	cfg        Config
	used       atomic.Int64 // the monitor's clock at the last window, for eviction
	refSamples int

	// Outputs: class frequencies on at most ClassBins bins.
	classMap    []int32   // class index (MaxClasses: any higher) → bin; nil until a baseline exists
	classBins   []int     // bin → class index, -1 for the shared bin
	baseClasses []float64 // baseline frequency per bin
	baseSource  string
	baseSamples int
	agg         []uint64 // scratch: a window's counts per bin
	baseConf    float64
	baseConfN   int
	haveConf    bool

	windows uint64
	stats   []stat // 2 per feature (psi, ks), then class_psi, confidence_drop
	raised  int
}

func newTracker[S any](k Key, cfg Config, ref *bundle.Reference, inputs []infer.TensorInfo, keep func(dst *S, src S)) (*tracker[S], []string) {
	t := &tracker[S]{key: k, cfg: cfg, keep: keep, size: cfg.Window}
	if ref == nil && !cfg.OutputsOnly {
		t.off = true
		return t, nil
	}
	var notes []string
	if ref != nil && len(ref.Features) > 0 {
		if err := t.setInputs(ref, inputs); err != nil {
			notes = append(notes, "inputs not monitored: "+err.Error())
			t.feats = nil
		}
	}
	if ref != nil && len(ref.Classes) > 0 {
		if err := t.setClassReference(ref); err != nil {
			notes = append(notes, "class frequencies compared with the first window instead of the reference: "+err.Error())
		}
	}
	for _, f := range t.feats {
		ks := cfg.KS
		if ks == 0 {
			ks = KSCritical(cfg.KSAlpha, cfg.Window, t.refSamples)
		}
		t.stats = append(t.stats,
			stat{feature: f.name, statistic: StatPSI, threshold: cfg.PSI},
			stat{feature: f.name, statistic: StatKS, threshold: ks})
	}
	t.stats = append(t.stats,
		stat{feature: FeatureClasses, statistic: StatClassPSI, threshold: cfg.ClassPSI},
		stat{feature: FeatureConfidence, statistic: StatConfidenceDrop, threshold: cfg.ConfidenceDrop})
	t.w.feats = make([]featureAcc, len(t.feats))
	for i, f := range t.feats {
		t.w.feats[i].counts = make([]uint64, len(f.counts))
	}
	t.w.classes = make([]uint64, MaxClasses+1)
	t.keepEvery = max(1, cfg.Window/max(1, cfg.MaxCaptures))
	t.w.nextKeep = t.firstKeep()
	return t, notes
}

// firstKeep is the frame number of a window's first kept frame (0, never reached: none).
func (t *tracker[S]) firstKeep() int {
	if t.cfg.MaxCaptures == 0 {
		return 0
	}
	return 1
}

// setInputs lays the model's first input out as edgectl bundle pack did and matches the
// reference's features to it.
func (t *tracker[S]) setInputs(ref *bundle.Reference, inputs []infer.TensorInfo) error {
	if len(inputs) == 0 {
		return fmt.Errorf("the model's input tensors are unknown")
	}
	in := inputs[0]
	if in.DType.Size() == 0 || in.DType == infer.Bool {
		return fmt.Errorf("input tensor of type %s is not numeric", in.DType)
	}
	n := in.Elements()
	t.dtype, t.quant, t.elems = in.DType, in.Quant, n
	switch {
	case len(in.Shape) == 4 && in.Shape[3] <= 4 && in.Shape[3] > 0: // NHWC image: per channel
		t.chans = in.Shape[3]
		t.pixels = n / t.chans
		t.stride = pixelStride(t.pixels, in.Shape[2], t.cfg.Pixels)
	case n <= 64: // a feature vector: per element
		t.chans, t.pixels, t.stride = n, 1, 1
	default: // a large flat input: one distribution
		t.chans, t.pixels = 1, n
		t.stride = pixelStride(n, 0, t.cfg.Pixels)
	}
	if len(ref.Features) != t.chans {
		return fmt.Errorf("the reference has %d input features, the model's input %s%v gives %d", len(ref.Features), in.DType, in.Shape, t.chans)
	}
	for _, fs := range ref.Features {
		f, err := newRefFeature(fs)
		if err != nil {
			return fmt.Errorf("reference %w", err)
		}
		t.feats = append(t.feats, f)
	}
	t.refSamples = ref.Samples
	return nil
}

// pixelStride is the step between sampled positions so that about budget of them are read:
// the smallest step ≥ positions/budget that shares no factor with the image width, so the
// samples do not line up in a few columns.
func pixelStride(positions, width, budget int) int {
	s := max(1, (positions+budget-1)/budget)
	for s > 1 && width > 1 && gcd(s, width) != 1 {
		s++
	}
	return s
}

func gcd(a, b int) int {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}

// setClassReference takes the bundle's class frequencies as the baseline.
func (t *tracker[S]) setClassReference(ref *bundle.Reference) error {
	if len(ref.Classes) > MaxClasses {
		return fmt.Errorf("%d classes is more than the %d counted", len(ref.Classes), MaxClasses)
	}
	var total float64
	for _, f := range ref.Classes {
		if !finite(f) || f < 0 {
			return fmt.Errorf("class frequencies must be finite and ≥ 0")
		}
		total += f
	}
	if total <= 0 {
		return fmt.Errorf("class frequencies are all zero")
	}
	t.setClassBins(ref.Classes, len(ref.Classes))
	t.baseSource, t.baseSamples = "bundle", ref.Samples
	return nil
}

// setClassBins picks the PSI's bins from baseline weights per class index (those below k
// have their own bin if there are few enough, else the ClassBins−1 heaviest do) and sets the
// baseline frequencies on them.
func (t *tracker[S]) setClassBins(weights []float64, k int) {
	idx := make([]int, 0, k)
	for i := 0; i < k; i++ {
		if weights[i] > 0 || k < ClassBins {
			idx = append(idx, i)
		}
	}
	if len(idx) >= ClassBins {
		sort.SliceStable(idx, func(a, b int) bool { return weights[idx[a]] > weights[idx[b]] })
		idx = idx[:ClassBins-1]
		sort.Ints(idx)
	}
	other := len(idx)
	t.classMap = make([]int32, MaxClasses+1)
	for i := range t.classMap {
		t.classMap[i] = int32(other)
	}
	t.classBins = append(idx, -1)
	t.baseClasses = make([]float64, other+1)
	for b, c := range idx {
		t.classMap[c] = int32(b)
	}
	var total float64
	for i := 0; i < len(weights) && i <= MaxClasses; i++ {
		t.baseClasses[t.classMap[i]] += weights[i]
		total += weights[i]
	}
	for b := range t.baseClasses {
		t.baseClasses[b] /= total
	}
	t.agg = make([]uint64, other+1)
}

// observe accounts one frame; at a window's end it evaluates it and returns the alerts it
// raised or cleared (done true).
func (t *tracker[S]) observe(in *Input[S]) (alerts []Alert[S], done bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	w := &t.w
	// Times are kept as numbers: storing a time.Time (it holds a pointer) would make the
	// caller's Input escape to the heap.
	if w.n == 0 {
		w.start = in.Time.UnixNano()
	}
	w.end = in.Time.UnixNano()
	w.n++
	if t.feats != nil && len(in.Inputs) > 0 {
		t.addInputs(in.Inputs[0])
	}
	if in.Classified {
		i := in.Class
		if i < 0 || i >= MaxClasses {
			i = MaxClasses
		}
		w.classes[i]++
		w.classN++
	}
	if in.Scored {
		w.confSum += in.Score
		w.confN++
	}
	t.keepSample(in)
	if w.n < t.size {
		return nil, false
	}
	alerts = t.evaluate()
	t.reset()
	return alerts, true
}

// addInputs histograms the sampled values of the first input tensor. It is the monitor's
// inner loop: one pass per channel over the sampled positions, with the bin computed in
// place for equal-width bins (what edgectl bundle pack writes) and the sums in registers.
func (t *tracker[S]) addInputs(x infer.Tensor) {
	if x.DType != t.dtype || len(x.Data) != t.elems*t.dtype.Size() {
		return // not the tensor the reference describes
	}
	d, dt := x.Data, t.dtype
	q := t.quant.Quantised()
	scale, zero := float64(t.quant.Scale), float64(t.quant.ZeroPoint)
	n, step := t.pixels*t.chans, t.stride*t.chans
	for c := 0; c < t.chans; c++ {
		rf, acc := &t.feats[c], &t.w.feats[c]
		counts := acc.counts
		lo, hi, inv, last, over, uniform := rf.lo, rf.hi, rf.inv, rf.bins-1, rf.bins+1, rf.uniform
		var cnt uint64
		var sum, sq float64
		for i := c; i < n; i += step {
			var v float64
			switch dt {
			case infer.Float32:
				v = float64(math.Float32frombits(binary.LittleEndian.Uint32(d[4*i:])))
			case infer.UInt8:
				v = float64(d[i])
			default:
				v = x.Float(i)
			}
			if q {
				v = scale * (v - zero)
			}
			if v-v != 0 { // NaN or ±Inf: not a value to compare
				continue
			}
			var b int
			switch {
			case v < lo:
				b = 0
			case v > hi:
				b = over
			case uniform:
				b = 1 + min(int((v-lo)*inv), last)
			default:
				b = rf.bin(v)
			}
			counts[b]++
			cnt++
			sum += v
			sq += v * v
		}
		acc.n += cnt
		acc.sum += sum
		acc.sq += sq
	}
}

// keepSample copies every (Window/MaxCaptures)-th frame of the window, reusing the slots'
// buffers, within maxKeptBytes.
func (t *tracker[S]) keepSample(in *Input[S]) {
	w := &t.w
	if w.n != w.nextKeep || in.NoMeta {
		return
	}
	w.nextKeep += t.keepEvery
	if w.kept >= t.cfg.MaxCaptures {
		return
	}
	size := tensorBytes(in.Inputs) + tensorBytes(in.Outputs)
	if w.keptBytes+size > maxKeptBytes {
		return
	}
	if w.kept == len(w.samples) {
		w.samples = append(w.samples, Sample[S]{})
	}
	s := &w.samples[w.kept]
	s.Inputs = copyTensors(s.Inputs, in.Inputs)
	s.Outputs = copyTensors(s.Outputs, in.Outputs)
	if t.keep != nil {
		t.keep(&s.Meta, in.Meta)
	} else {
		s.Meta = in.Meta
	}
	w.kept++
	w.keptBytes += size
}

func tensorBytes(ts []infer.Tensor) int {
	n := 0
	for _, t := range ts {
		n += len(t.Data)
	}
	return n
}

// copyTensors copies src into dst's buffers (grown when needed).
func copyTensors(dst, src []infer.Tensor) []infer.Tensor {
	for len(dst) < len(src) {
		dst = append(dst, infer.Tensor{})
	}
	dst = dst[:len(src)]
	for i, t := range src {
		dst[i].DType = t.DType
		dst[i].Shape = append(dst[i].Shape[:0], t.Shape...)
		dst[i].Data = append(dst[i].Data[:0], t.Data...)
	}
	return dst
}

// reset empties the window, keeping its buffers.
func (t *tracker[S]) reset() {
	w := &t.w
	w.n, w.classN, w.confN, w.confSum, w.kept, w.keptBytes = 0, 0, 0, 0, 0, 0
	w.nextKeep = t.firstKeep()
	for i := range w.feats {
		f := &w.feats[i]
		clear(f.counts)
		f.n, f.sum, f.sq = 0, 0, 0
	}
	clear(w.classes)
}

// evaluate computes the window's statistics, steps the hysteresis and returns the
// transitions. Callers hold t.mu.
func (t *tracker[S]) evaluate() []Alert[S] {
	w := &t.w
	t.windows++
	info := WindowInfo{Size: w.n, Index: t.windows, Start: time.Unix(0, w.start).UTC(), End: time.Unix(0, w.end).UTC()}
	wasRaised := t.raised > 0
	var alerts []Alert[S]
	for i := range t.feats {
		f, acc := &t.feats[i], &w.feats[i]
		if acc.n == 0 {
			continue
		}
		for j, v := range [2]float64{PSI(acc.counts, f.counts), BinnedKS(acc.counts, f.counts)} {
			if raised, run, ok := t.step(2*i+j, v); ok {
				mean := acc.sum / float64(acc.n)
				alerts = append(alerts, t.alert(2*i+j, raised, run, info,
					Summary{Source: "bundle", Samples: t.refSamples, Mean: f.mean, Std: f.std},
					Summary{Source: "window", Samples: int(acc.n), Mean: mean, Std: math.Sqrt(math.Max(0, acc.sq/float64(acc.n)-mean*mean))}))
			}
		}
	}
	ci, fi := 2*len(t.feats), 2*len(t.feats)+1
	if w.classN > 0 {
		if t.classMap == nil { // the first window is the baseline
			weights := make([]float64, MaxClasses+1)
			for i, c := range w.classes {
				weights[i] = float64(c)
			}
			t.setClassBins(weights, MaxClasses)
			t.baseSource, t.baseSamples = "first-window", w.classN
		} else {
			clear(t.agg)
			for i, c := range w.classes {
				if c > 0 {
					t.agg[t.classMap[i]] += c
				}
			}
			if raised, run, ok := t.step(ci, PSI(t.agg, t.baseClasses)); ok {
				obs := make([]float64, len(t.agg))
				for b, c := range t.agg {
					obs[b] = float64(c) / float64(w.classN)
				}
				a := t.alert(ci, raised, run, info,
					Summary{Source: t.baseSource, Samples: t.baseSamples, Classes: append([]float64(nil), t.baseClasses...)},
					Summary{Source: "window", Samples: w.classN, Classes: obs})
				a.Evidence.Classes = append([]int(nil), t.classBins...)
				alerts = append(alerts, a)
			}
		}
	}
	if w.confN > 0 {
		mean := w.confSum / float64(w.confN)
		if !t.haveConf {
			t.baseConf, t.baseConfN, t.haveConf = mean, w.confN, true
		} else if raised, run, ok := t.step(fi, t.baseConf-mean); ok {
			alerts = append(alerts, t.alert(fi, raised, run, info,
				Summary{Source: "first-window", Samples: t.baseConfN, Mean: t.baseConf},
				Summary{Source: "window", Samples: w.confN, Mean: mean}))
		}
	}
	if !wasRaised && t.raised > 0 && w.kept > 0 {
		for i := range alerts {
			if alerts[i].Raised {
				alerts[i].Samples = w.samples[:w.kept]
				w.samples = nil // handed over; the next window keeps new ones
				break
			}
		}
	}
	return alerts
}

// step records a statistic's window value and steps its hysteresis: ok reports a
// transition (raised or cleared) after run consecutive windows.
func (t *tracker[S]) step(i int, v float64) (raised bool, run int, ok bool) {
	s := &t.stats[i]
	if !finite(v) {
		return false, 0, false
	}
	s.value = v
	s.evaluated++
	k := t.cfg.Hysteresis
	if !s.alert {
		if v > s.threshold {
			s.above++
		} else {
			s.above = 0
		}
		if s.above >= k {
			run = s.above
			s.alert, s.above, s.below = true, 0, 0
			t.raised++
			return true, run, true
		}
		return false, 0, false
	}
	if v <= t.cfg.ClearRatio*s.threshold {
		s.below++
	} else {
		s.below = 0
	}
	if s.below >= k {
		run = s.below
		s.alert, s.above, s.below = false, 0, 0
		t.raised--
		return false, run, true
	}
	return false, 0, false
}

func (t *tracker[S]) alert(i int, raised bool, run int, info WindowInfo, ref, obs Summary) Alert[S] {
	s := &t.stats[i]
	return Alert[S]{Key: t.key, Raised: raised, Evidence: Evidence{
		Feature: s.feature, Statistic: s.statistic, Value: s.value, Threshold: s.threshold,
		ClearBelow: t.cfg.ClearRatio * s.threshold, Consecutive: run, Window: info, Reference: ref, Observed: obs,
	}}
}

// frames is how many frames the tracker counted, the current window's included.
func (t *tracker[S]) frames() uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.windows*uint64(t.cfg.Window) + uint64(t.w.n)
}

// scores appends the statistics evaluated at least once.
func (t *tracker[S]) scores(out []Score) []Score {
	if t.off {
		return out
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, s := range t.stats {
		if s.evaluated == 0 {
			continue
		}
		out = append(out, Score{Key: t.key, Feature: s.feature, Statistic: s.statistic, Value: s.value,
			Threshold: s.threshold, Alert: s.alert, Windows: s.evaluated})
	}
	return out
}

func (t *tracker[S]) describeInputs() string {
	if t.feats == nil {
		return "not monitored"
	}
	return fmt.Sprintf("%d features vs the bundle reference (%d samples), %d of %d positions per frame", len(t.feats), t.refSamples, (t.pixels+t.stride-1)/t.stride, t.pixels)
}

func (t *tracker[S]) describeOutputs() string {
	src := "the first window"
	if t.baseSource == "bundle" {
		src = "the bundle reference"
	}
	return "predicted classes vs " + src + ", top-1 score vs the first window"
}
