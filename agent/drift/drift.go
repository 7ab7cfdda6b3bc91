// Package drift is the drift monitor: it keeps online statistics of every served model
// version's inputs and outputs over tumbling windows of N results and compares each window
// with the version's reference (the bundle manifest's models/bundle Reference, computed by
// `edgectl bundle pack` from sample inputs):
//
//   - each input feature (vector inputs) or image channel: population stability index (PSI)
//     on the reference histogram's bins, and a two-sample Kolmogorov–Smirnov statistic
//     between the reference histogram and the window's histogram on the same bins;
//   - the predicted classes: PSI of their frequencies against the reference's (or the first
//     window's);
//   - the mean top-1 score: its drop below the first window's.
//
// A statistic raises an alert after Hysteresis consecutive windows above its threshold and
// clears it after Hysteresis consecutive windows at or below ClearRatio × threshold. The
// monitor hands alerts (with their evidence and, for the first alert of a version, the
// frames it kept from the drifting window) to a callback on its own goroutine; docs/drift.md
// describes the statistics, their approximations and the defaults.
//
// Observe runs on the pipeline's workers: it does O(features) work under a per-version lock
// and allocates nothing in steady state; everything else (looking up references, delivering
// alerts) happens on the goroutine Run owns, through bounded queues that drop and count.
//
// drift imports the standard library, agent/infer (tensor types) and models/bundle (the
// reference type) only: no other stage (the caller reads the top-1 class and score out of
// the postprocessed output), not the pipeline, not the outbox or the link.
// agent/driftwire.go joins it to the pipeline and the fleet.
package drift

import (
	"context"
	"log/slog"
	"maps"
	"math"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/edge-agent/edge-agent/agent/infer"
	"github.com/edge-agent/edge-agent/models/bundle"
)

// Defaults and caps of Config.
const (
	DefaultWindow         = 500
	DefaultPSI            = 0.2
	DefaultKSAlpha        = 0.01
	DefaultClassPSI       = 0.2
	DefaultConfidenceDrop = 0.1
	DefaultHysteresis     = 3
	DefaultClearRatio     = 0.8
	DefaultMaxCaptures    = 20
	MaxCaptures           = 100
	DefaultPixels         = 256
	DefaultMaxVersions    = 32
	// MaxClasses bounds the class indices counted one by one; higher ones count as "other".
	MaxClasses = 1024
	// ClassBins bounds the bins of the class PSI: with more classes, the most frequent
	// ClassBins−1 keep their own bin and the rest share one, so that a window of a few
	// hundred results is not spread over a thousand nearly empty bins (whose PSI would be
	// noise).
	ClassBins = 20
	// maxKeptBytes bounds the tensor bytes a window keeps for captures.
	maxKeptBytes = 8 << 20
)

// Statistic names (DriftScore.Statistic, event evidence).
const (
	StatPSI            = "psi"
	StatKS             = "ks"
	StatClassPSI       = "class_psi"
	StatConfidenceDrop = "confidence_drop"
)

// Feature names of the output statistics.
const (
	FeatureClasses    = "classes"
	FeatureConfidence = "confidence"
)

// Config tunes the monitor; zero fields take the defaults above.
type Config struct {
	Window         int     // results per window
	PSI            float64 // input feature PSI threshold
	KS             float64 // fixed KS threshold; 0: the critical value at KSAlpha
	KSAlpha        float64 // significance of the KS test
	ClassPSI       float64 // predicted-class PSI threshold
	ConfidenceDrop float64 // drop of the mean top-1 score (absolute) that counts as drift
	Hysteresis     int     // consecutive windows to raise, and to clear
	ClearRatio     float64 // a raised alert clears at or below ClearRatio × threshold
	MaxCaptures    int     // frames kept per window for captures (negative: none)
	Pixels         int     // image pixels sampled per frame (a fixed stride)
	// OutputsOnly monitors versions without a reference on their outputs (class frequencies
	// and confidence against their first window); otherwise such versions are not monitored.
	OutputsOnly bool
	MaxVersions int // versions tracked at once; the least recently used is forgotten
}

func (c Config) withDefaults() Config {
	def := func(v *float64, d float64) {
		if *v == 0 {
			*v = d
		}
	}
	if c.Window == 0 {
		c.Window = DefaultWindow
	}
	def(&c.PSI, DefaultPSI)
	def(&c.KSAlpha, DefaultKSAlpha)
	def(&c.ClassPSI, DefaultClassPSI)
	def(&c.ConfidenceDrop, DefaultConfidenceDrop)
	def(&c.ClearRatio, DefaultClearRatio)
	if c.Hysteresis == 0 {
		c.Hysteresis = DefaultHysteresis
	}
	switch {
	case c.MaxCaptures == 0:
		c.MaxCaptures = DefaultMaxCaptures
	case c.MaxCaptures < 0:
		c.MaxCaptures = 0
	}
	c.MaxCaptures = min(c.MaxCaptures, MaxCaptures)
	if c.Pixels == 0 {
		c.Pixels = DefaultPixels
	}
	if c.MaxVersions == 0 {
		c.MaxVersions = DefaultMaxVersions
	}
	return c
}

// Key is a monitored model version.
type Key struct {
	Model   string `json:"model"`
	Version string `json:"version"`
}

// ModelInfo is what the monitor reads of a model: its input tensors (shape, quantisation).
type ModelInfo interface {
	Info() infer.ModelInfo
}

// Input is one served frame. Everything in it is borrowed for the call: the monitor copies
// what it keeps. It holds values, not pointers to the caller's variables, so that a caller
// can build it on its stack without an allocation per frame.
type Input[S any] struct {
	Key     Key
	Model   ModelInfo // read once per version; nil: shapes from Inputs, no quantisation
	Time    time.Time
	Inputs  []infer.Tensor
	Outputs []infer.Tensor
	// Class is a classifier's top-1 class (when Classified); Score is the top-1 score of a
	// classifier or the best detection's score of a detector (when Scored).
	Class      int
	Classified bool
	Score      float64
	Scored     bool
	// Meta is the caller's record of the frame, copied with Options.Keep when the frame is
	// kept for a capture.
	Meta S
	// NoMeta says Meta is not set: the frame cannot be kept.
	NoMeta bool
}

// Sample is a frame kept from a window: copies of its tensors and the caller's record.
type Sample[S any] struct {
	Inputs  []infer.Tensor
	Outputs []infer.Tensor
	Meta    S
}

// WindowInfo locates a window.
type WindowInfo struct {
	Size  int       `json:"size"`  // results in the window
	Index uint64    `json:"index"` // 1-based, per version
	Start time.Time `json:"start"` // first result's time
	End   time.Time `json:"end"`   // last result's time
}

// Summary describes one side of a comparison.
type Summary struct {
	Source  string    `json:"source"`            // "bundle" (the manifest's reference), "first-window" or "window"
	Samples int       `json:"samples"`           // observations it summarises
	Mean    float64   `json:"mean"`              // feature mean, or mean top-1 score
	Std     float64   `json:"std,omitempty"`     // feature standard deviation
	Classes []float64 `json:"classes,omitempty"` // class frequencies on the PSI's bins
}

// Evidence is why an alert was raised or cleared.
type Evidence struct {
	Feature   string  `json:"feature"`
	Statistic string  `json:"statistic"`
	Value     float64 `json:"value"`
	Threshold float64 `json:"threshold"`
	// ClearBelow is the level the statistic must stay at or below to clear.
	ClearBelow float64 `json:"clear_below"`
	// Consecutive is how many windows in a row were above (raise) or below (clear).
	Consecutive int        `json:"consecutive"`
	Window      WindowInfo `json:"window"`
	Reference   Summary    `json:"reference"`
	Observed    Summary    `json:"observed"`
	// Classes names the class PSI's bins (class indices; -1 is "every other class").
	Classes []int `json:"class_bins,omitempty"`
}

// Alert is a raised or cleared alert.
type Alert[S any] struct {
	Key      Key
	Raised   bool // false: cleared
	Evidence Evidence
	// Samples are the frames kept from the window, on the alert that made the version go
	// from no raised alert to one (at most MaxCaptures).
	Samples []Sample[S]
}

// Score is a statistic's latest value.
type Score struct {
	Key
	Feature   string
	Statistic string
	Value     float64
	Threshold float64
	Alert     bool
	Windows   uint64
}

// Options of a Monitor.
type Options[S any] struct {
	Config
	// Reference returns a version's reference statistics, nil when it has none. It runs on
	// Run's goroutine (it may read files).
	Reference func(Key) (*bundle.Reference, error)
	// Alert receives every raise and clear, on Run's goroutine.
	Alert func(ctx context.Context, a Alert[S])
	// Keep copies the caller's record of a kept frame into dst, reusing dst's storage, and
	// deep enough that it stays valid after the frame moves on; nil copies the value.
	Keep   func(dst *S, src S)
	Logger *slog.Logger
}

// Queue bounds: versions waiting to be looked up, alerts waiting to be delivered.
const (
	requestQueue = 16
	alertQueue   = 64
)

// Monitor is the drift monitor. Observe is safe for concurrent use.
type Monitor[S any] struct {
	cfg Config
	opt Options[S]
	log *slog.Logger

	// trackers is replaced, never modified, under mu: Observe reads it without a lock.
	trackers atomic.Pointer[snapshot[S]]
	mu       sync.Mutex // serialises changes to trackers and pending
	pending  map[Key]bool

	requests chan request
	alerts   chan Alert[S]
	clock    atomic.Int64 // increases at every window, for least-recently-used eviction

	unseen, alertsDropped, requestsDropped atomic.Uint64
}

type request struct {
	key    Key
	inputs []infer.TensorInfo
}

// New builds a monitor; Run must run for versions to be looked up and alerts delivered.
func New[S any](opt Options[S]) *Monitor[S] {
	opt.Config = opt.Config.withDefaults()
	log := opt.Logger
	if log == nil {
		log = slog.Default()
	}
	m := &Monitor[S]{
		cfg: opt.Config, opt: opt, log: log, pending: map[Key]bool{},
		requests: make(chan request, requestQueue),
		alerts:   make(chan Alert[S], alertQueue),
	}
	m.trackers.Store(&snapshot[S]{byKey: map[Key]*tracker[S]{}})
	return m
}

// Config is the monitor's configuration with defaults applied.
func (m *Monitor[S]) Config() Config { return m.cfg }

// Observe accounts one served frame. A version seen for the first time is looked up on
// Run's goroutine; its frames are not counted until then.
func (m *Monitor[S]) Observe(in *Input[S]) {
	t := m.trackers.Load().find(in.Key)
	if t == nil {
		m.request(in.Key, in.Model, in.Inputs)
		return
	}
	if t.off {
		return
	}
	if alerts, done := t.observe(in); done {
		t.used.Store(m.clock.Add(1))
		m.deliver(alerts)
	}
}

// request asks Run to look a new version up, once.
func (m *Monitor[S]) request(k Key, model ModelInfo, inputs []infer.Tensor) {
	m.unseen.Add(1)
	m.mu.Lock()
	// Registered since the caller looked (Register stores under mu), already asked for, or
	// too many asked for at once.
	if m.trackers.Load().byKey[k] != nil || m.pending[k] || len(m.pending) >= requestQueue {
		m.mu.Unlock()
		return
	}
	m.pending[k] = true
	m.mu.Unlock()
	var infos []infer.TensorInfo
	if model != nil {
		infos = model.Info().Inputs
	} else {
		for _, t := range inputs {
			infos = append(infos, infer.TensorInfo{DType: t.DType, Shape: append([]int(nil), t.Shape...), Bytes: len(t.Data)})
		}
	}
	select {
	case m.requests <- request{key: k, inputs: infos}:
	default:
		m.requestsDropped.Add(1)
		m.mu.Lock()
		delete(m.pending, k)
		m.mu.Unlock()
	}
}

// deliver queues alerts for Run without waiting.
func (m *Monitor[S]) deliver(as []Alert[S]) {
	for _, a := range as {
		select {
		case m.alerts <- a:
		default:
			m.alertsDropped.Add(1)
		}
	}
}

// Run looks new versions up and delivers alerts until ctx ends.
func (m *Monitor[S]) Run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case r := <-m.requests:
			m.Register(r.key, r.inputs)
		case a := <-m.alerts:
			if m.opt.Alert != nil {
				m.opt.Alert(ctx, a)
			}
		}
	}
}

// Register starts monitoring a version whose model takes inputs (Run calls it for versions
// Observe sees; tests and callers that know a version in advance may call it directly). It
// looks up the reference and decides what is monitored; registering a known version again
// starts it afresh.
func (m *Monitor[S]) Register(k Key, inputs []infer.TensorInfo) {
	var ref *bundle.Reference
	var err error
	if m.opt.Reference != nil {
		ref, err = m.opt.Reference(k)
	}
	if err != nil {
		m.log.Warn("drift: cannot read the version's reference statistics; monitoring its outputs only if drift.enabled is true", "model", k.Model, "version", k.Version, "err", err)
		ref = nil
	}
	t, notes := newTracker[S](k, m.cfg, ref, inputs, m.opt.Keep)
	t.used.Store(m.clock.Add(1))
	switch {
	case t.off:
		m.log.Info("drift: version not monitored: it has no reference statistics (pack it with samples, or set drift.enabled: true to monitor its outputs)", "model", k.Model, "version", k.Version)
	default:
		m.log.Info("drift: monitoring", "model", k.Model, "version", k.Version, "window", m.cfg.Window, "inputs", t.describeInputs(), "outputs", t.describeOutputs())
	}
	for _, n := range notes {
		m.log.Warn("drift: "+n, "model", k.Model, "version", k.Version)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.pending, k)
	next := maps.Clone(m.trackers.Load().byKey)
	next[k] = t
	for len(next) > m.cfg.MaxVersions {
		var oldest Key
		first := true
		for key, tr := range next {
			if key != k && (first || tr.used.Load() < next[oldest].used.Load()) {
				oldest, first = key, false
			}
		}
		delete(next, oldest)
	}
	snap := &snapshot[S]{byKey: next, list: []*tracker[S]{t}}
	for key, tr := range next {
		if key != k {
			snap.list = append(snap.list, tr)
		}
	}
	m.trackers.Store(snap)
}

// snapshot is the set of tracked versions at one time.
type snapshot[S any] struct {
	byKey map[Key]*tracker[S]
	list  []*tracker[S] // the same, the latest registered first
}

// find looks the few versions a device usually serves up by comparing keys (their strings
// are usually the very ones registered, which compare at once), then by hashing.
func (s *snapshot[S]) find(k Key) *tracker[S] {
	for i, t := range s.list {
		if i == 4 {
			break
		}
		if t.key == k {
			return t
		}
	}
	return s.byKey[k]
}

// Scores are the latest value of every statistic evaluated at least once, by model,
// version, then feature order.
func (m *Monitor[S]) Scores() []Score {
	all := m.trackers.Load().byKey
	ts := make([]*tracker[S], 0, len(all))
	for _, t := range all {
		ts = append(ts, t)
	}
	sort.Slice(ts, func(i, j int) bool {
		if ts[i].key.Model != ts[j].key.Model {
			return ts[i].key.Model < ts[j].key.Model
		}
		return ts[i].key.Version < ts[j].key.Version
	})
	var out []Score
	for _, t := range ts {
		out = t.scores(out)
	}
	return out
}

// Stats are the monitor's counters.
type Stats struct {
	Observed        uint64 `json:"observed"`         // frames of the tracked versions
	Unseen          uint64 `json:"unseen"`           // frames of versions not yet looked up
	Versions        int    `json:"versions"`         // versions tracked
	AlertsDropped   uint64 `json:"alerts_dropped"`   // alerts lost to a full queue
	RequestsDropped uint64 `json:"requests_dropped"` // look-ups retried later (full queue)
}

// Stats reports the monitor's counters.
func (m *Monitor[S]) Stats() Stats {
	all := m.trackers.Load().byKey
	var observed uint64
	for _, t := range all {
		observed += t.frames()
	}
	return Stats{Observed: observed, Unseen: m.unseen.Load(), Versions: len(all),
		AlertsDropped: m.alertsDropped.Load(), RequestsDropped: m.requestsDropped.Load()}
}

// finite reports whether x is a usable number.
func finite(x float64) bool { return !math.IsNaN(x) && !math.IsInf(x, 0) }
