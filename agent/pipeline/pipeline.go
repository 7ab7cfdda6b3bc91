// Package pipeline moves frames one way: source queue → per-model queue → preprocess → infer →
// postprocess → Result → Sink. It owns the goroutines that do so (a dispatcher per source, a
// few workers per model), their bounded queues (drop-oldest, counted) and the per-model
// statistics. Models are held behind an atomic pointer so a new version can replace a serving
// one without dropping an inference: in-flight work finishes on the old one.
//
// pipeline declares the small interfaces it consumes (Preprocessor, Model, Postprocessor,
// Sink); agent/agent.go plugs the stage packages in. It imports agent/infer (types),
// agent/postprocess (its output type), agent/result and hal/sensor, and no other stage.
package pipeline

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/edge-agent/edge-agent/agent/infer"
	"github.com/edge-agent/edge-agent/agent/postprocess"
	"github.com/edge-agent/edge-agent/agent/result"
	"github.com/edge-agent/edge-agent/hal/sensor"
)

// Preprocessor turns a frame into input tensors, reusing dst's buffers when it can.
type Preprocessor interface {
	Apply(f sensor.Frame, dst []infer.Tensor) ([]infer.Tensor, error)
}

// Model runs inference (agent/infer.Model satisfies it).
type Model interface {
	Info() infer.ModelInfo
	Infer(ctx context.Context, in []infer.Tensor) ([]infer.Tensor, error)
}

// Postprocessor reads output tensors.
type Postprocessor interface {
	Apply(out []infer.Tensor) (postprocess.Output, error)
}

// Sink receives results. Put returns once the result is accepted (for the outbox: stored);
// it may assign r.Seq. It is called from several workers at once.
type Sink interface {
	Put(ctx context.Context, r *result.Result) error
}

// Serving is one version of a model with its processing.
type Serving struct {
	Version string
	Model   Model
	Pre     Preprocessor
	Post    Postprocessor
}

// ModelConfig configures how a model is served.
type ModelConfig struct {
	Name    string
	Sources []string // source names feeding this model
	Workers int      // concurrent inferences (default 1)
	Queue   int      // frames waiting for this model (default 4); older ones are dropped
}

// Options of a pipeline.
type Options struct {
	Device string
	Sink   Sink
	Logger *slog.Logger
	Now    func() time.Time
	// DrainTimeout bounds how long Run waits for queued frames after the sources stop.
	DrainTimeout time.Duration
	// Observer, when set, sees every frame a model served (see Observer; SetObserver).
	Observer Observer
}

// Observer sees every frame a model version served successfully: primary versions and A/B
// candidates, not shadow runs. Observe runs on the worker, so it must return at once: do
// O(features) work without allocating, or copy what it keeps into a bounded buffer.
type Observer interface {
	Observe(o Observation)
}

// Observation is one served frame, passed by value: built on the worker's stack, it costs
// neither an allocation nor the write barriers of a heap copy. Inputs and Outputs are the
// worker's buffers, valid only during the call (copy what is kept); Frame, Output and Result
// share data others read, so they must not be modified.
type Observation struct {
	Model   string
	Serving *Serving // the version that served the frame
	Variant string
	Frame   sensor.Frame
	Inputs  []infer.Tensor
	Outputs []infer.Tensor
	Output  postprocess.Output
	Result  *result.Result
}

// Pipeline joins sources to models to a sink.
type Pipeline struct {
	opt     Options
	log     *slog.Logger
	now     func() time.Time
	models  map[string]*modelEntry
	order   []string
	sources map[string]*sensor.Queue
	subs    map[string][]string // source → models
	started atomic.Bool
	// observer is Options.Observer or SetObserver's: one atomic load per frame, nil when unset.
	observer atomic.Pointer[Observer]
}

type modelEntry struct {
	cfg     ModelConfig
	states  sync.Pool // *workerState for Process callers, so their input buffers are reused
	serving atomic.Pointer[Serving]
	exp     atomic.Pointer[experiment] // an A/B or shadow experiment, or nil
	tap     atomic.Pointer[tap]        // a capture for retraining (capture command), or nil
	queue   *sensor.Queue
	stats   modelStats
}

// New creates an empty pipeline.
func New(opt Options) *Pipeline {
	if opt.Logger == nil {
		opt.Logger = slog.Default()
	}
	if opt.Now == nil {
		opt.Now = time.Now
	}
	if opt.DrainTimeout <= 0 {
		opt.DrainTimeout = 10 * time.Second
	}
	p := &Pipeline{opt: opt, log: opt.Logger, now: opt.Now, models: map[string]*modelEntry{},
		sources: map[string]*sensor.Queue{}, subs: map[string][]string{}}
	p.SetObserver(opt.Observer)
	return p
}

// SetObserver sets (or, with nil, removes) the observer of served frames; the agent builds
// the drift monitor after the pipeline. Frames already being processed may still reach the
// previous one.
func (p *Pipeline) SetObserver(o Observer) {
	if o == nil {
		p.observer.Store(nil)
		return
	}
	p.observer.Store(&o)
}

// Observer is the observer of served frames, or nil.
func (p *Pipeline) Observer() Observer {
	if o := p.observer.Load(); o != nil {
		return *o
	}
	return nil
}

// ErrUnknownModel is returned for a model name the pipeline does not serve.
var ErrUnknownModel = errors.New("unknown model")

// AddSource registers a source's queue (the pipeline is its only consumer).
func (p *Pipeline) AddSource(name string, q *sensor.Queue) {
	p.sources[name] = q
}

// AddModel registers a model; s may be nil when the model failed to load (it is then listed
// with no version and frames for it are dropped and counted until one is set with Swap).
func (p *Pipeline) AddModel(cfg ModelConfig, s *Serving) error {
	if p.started.Load() {
		return errors.New("pipeline: AddModel after Run")
	}
	if _, dup := p.models[cfg.Name]; dup {
		return fmt.Errorf("pipeline: model %q added twice", cfg.Name)
	}
	cfg.Workers = max(cfg.Workers, 1)
	if cfg.Queue <= 0 {
		cfg.Queue = 4
	}
	e := &modelEntry{cfg: cfg, queue: sensor.NewQueue(cfg.Queue)}
	e.states.New = func() any { return new(workerState) }
	if s != nil {
		e.serving.Store(s)
	}
	p.models[cfg.Name] = e
	p.order = append(p.order, cfg.Name)
	for _, src := range cfg.Sources {
		p.subs[src] = append(p.subs[src], cfg.Name)
	}
	return nil
}

// Swap makes s the serving version of a model and returns the previous one. Workers pick the
// new version for their next frame; inferences already running finish on the old one, so
// the caller may close the old model (its Close waits for them).
func (p *Pipeline) Swap(name string, s *Serving) (*Serving, error) {
	e, ok := p.models[name]
	if !ok {
		return nil, fmt.Errorf("%w %q", ErrUnknownModel, name)
	}
	return e.serving.Swap(s), nil
}

// Serving returns the current version of a model (nil if none).
func (p *Pipeline) Serving(name string) *Serving {
	if e, ok := p.models[name]; ok {
		return e.serving.Load()
	}
	return nil
}

// ErrNoVersion means the model has no loaded version to serve.
var ErrNoVersion = errors.New("model has no loaded version")

// Process runs one frame through a model synchronously (the predict command and API use it).
// It is safe for concurrent use.
func (p *Pipeline) Process(ctx context.Context, model string, f sensor.Frame) (*result.Result, error) {
	e, ok := p.models[model]
	if !ok {
		return nil, fmt.Errorf("%w %q", ErrUnknownModel, model)
	}
	w := e.states.Get().(*workerState)
	defer e.states.Put(w)
	return p.process(ctx, e, f, w)
}

// workerState holds buffers a worker reuses between frames.
type workerState struct {
	in       []infer.Tensor
	shadowIn []infer.Tensor // the shadow candidate's input (its preprocessing may differ)
}

func (p *Pipeline) process(ctx context.Context, e *modelEntry, f sensor.Frame, w *workerState) (*result.Result, error) {
	s := e.serving.Load()
	if s == nil {
		e.stats.noVersion.Add(1)
		return nil, fmt.Errorf("model %q: %w", e.cfg.Name, ErrNoVersion)
	}
	x := e.exp.Load()
	variant, arm := "", (*arm)(nil)
	if x != nil {
		s, variant, arm = x.route(e.cfg.Name, f, s)
	}
	res, po, err := p.run(ctx, e, s, variant, f, w)
	if arm != nil {
		if err != nil {
			arm.errors.Add(1)
		} else {
			arm.stats.results.Add(1)
			arm.stats.observe(time.Duration(res.LatencyUS) * time.Microsecond)
		}
	}
	if err != nil {
		return nil, err
	}
	if x != nil && x.Shadow {
		x.shadow(ctx, f, po, w, p.now)
	}
	return res, nil
}

// run is one frame through one version.
func (p *Pipeline) run(ctx context.Context, e *modelEntry, s *Serving, variant string, f sensor.Frame, w *workerState) (*result.Result, postprocess.Output, error) {
	start := p.now()
	in, err := s.Pre.Apply(f, w.in)
	if err != nil {
		e.stats.preErrors.Add(1)
		return nil, postprocess.Output{}, fmt.Errorf("model %q: preprocess: %w", e.cfg.Name, err) // err names the frame
	}
	w.in = in
	out, err := s.Model.Infer(ctx, in)
	if err != nil {
		e.stats.inferErrors.Add(1)
		return nil, postprocess.Output{}, fmt.Errorf("model %q: %w", e.cfg.Name, err)
	}
	po, err := s.Post.Apply(out)
	if err != nil {
		e.stats.postErrors.Add(1)
		if errors.Is(err, postprocess.ErrNonFinite) {
			e.stats.nonFinite.Add(1)
		}
		return nil, postprocess.Output{}, fmt.Errorf("model %q: postprocess: %w", e.cfg.Name, err)
	}
	lat := p.now().Sub(start)
	e.stats.observe(lat)
	r := &result.Result{
		Schema:       result.Schema,
		Device:       p.opt.Device,
		Model:        e.cfg.Name,
		Version:      s.Version,
		Variant:      variant,
		TS:           start.UTC(),
		LatencyUS:    lat.Microseconds(),
		Source:       f.Source,
		FrameSeq:     f.Seq,
		Outputs:      po.Outputs,
		Classes:      po.Classes,
		Detections:   po.Detections,
		Values:       po.Values,
		Segmentation: po.Segmentation,
		Embedding:    po.Embedding,
		Poses:        po.Poses,
		InputRef:     f.Ref,
	}
	e.offer(f, in, out, r)
	if o := p.observer.Load(); o != nil {
		(*o).Observe(Observation{Model: e.cfg.Name, Serving: s, Variant: variant, Frame: f, Inputs: in, Outputs: out, Output: po, Result: r})
	}
	return r, po, nil
}

// Run moves frames until ctx is cancelled. Then, with the sources stopping, it keeps taking
// frames from their queues until each is closed (sensor.Runner closes its queue when it
// returns), lets the models' queued frames finish, and returns; all of it bounded by
// DrainTimeout, after which queued frames are abandoned.
func (p *Pipeline) Run(ctx context.Context) error {
	if p.started.Swap(true) {
		return errors.New("pipeline: Run called twice")
	}
	for src := range p.subs {
		if _, ok := p.sources[src]; !ok {
			return fmt.Errorf("pipeline: a model reads source %q, which does not exist", src)
		}
	}
	// Everything downstream outlives ctx until drained or the drain timer fires.
	workCtx, cancelWork := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelWork()
	var workers sync.WaitGroup
	for _, name := range p.order {
		e := p.models[name]
		for range e.cfg.Workers {
			workers.Add(1)
			go func() {
				defer workers.Done()
				p.work(workCtx, e)
			}()
		}
	}
	var dispatchers sync.WaitGroup
	for name, q := range p.sources {
		targets := p.subs[name]
		dispatchers.Add(1)
		go func() {
			defer dispatchers.Done()
			p.dispatch(workCtx, q, targets)
		}()
	}
	<-ctx.Done()
	drained := make(chan struct{})
	go func() {
		dispatchers.Wait()
		for _, e := range p.models {
			e.queue.Close()
		}
		workers.Wait()
		close(drained)
	}()
	select {
	case <-drained:
	case <-time.After(p.opt.DrainTimeout):
		p.log.Warn("pipeline: drain timed out; abandoning queued frames", "timeout", p.opt.DrainTimeout)
		cancelWork()
		<-drained
	}
	return nil
}

// dispatch fans a source's frames out to the queues of the models that read it.
func (p *Pipeline) dispatch(ctx context.Context, q *sensor.Queue, targets []string) {
	for {
		f, ok := q.Pop(ctx)
		if !ok {
			return
		}
		for _, m := range targets {
			p.models[m].queue.Push(f)
		}
	}
}

func (p *Pipeline) work(ctx context.Context, e *modelEntry) {
	var w workerState
	// Repeated identical failures are logged once per interval, not per frame.
	var lastLog time.Time
	for {
		f, ok := e.queue.Pop(ctx)
		if !ok {
			return
		}
		r, err := p.process(ctx, e, f, &w)
		if err == nil {
			err = p.opt.Sink.Put(ctx, r)
			if err != nil {
				e.stats.sinkErrors.Add(1)
				err = fmt.Errorf("model %q: sink: %w", e.cfg.Name, err)
			} else {
				e.stats.results.Add(1)
			}
		}
		if err != nil {
			e.stats.setLastError(err, p.now())
			if now := p.now(); now.Sub(lastLog) > 10*time.Second {
				lastLog = now
				p.log.Error("inference failed", "model", e.cfg.Name, "err", err)
			}
		}
	}
}

// ModelStats are a model's counters since start.
type ModelStats struct {
	Name        string  `json:"name"`
	Version     string  `json:"version"`
	Delegate    string  `json:"delegate,omitempty"`
	Fallback    string  `json:"fallback,omitempty"`
	Results     uint64  `json:"results"`
	PreErrors   uint64  `json:"preprocess_errors"`
	InferErrors uint64  `json:"infer_errors"`
	PostErrors  uint64  `json:"postprocess_errors"`
	NonFinite   uint64  `json:"non_finite"`
	SinkErrors  uint64  `json:"sink_errors"`
	NoVersion   uint64  `json:"no_version"`
	Dropped     uint64  `json:"dropped"`
	QueueDepth  int     `json:"queue_depth"`
	LatencyP50  float64 `json:"latency_p50_ms"`
	LatencyP95  float64 `json:"latency_p95_ms"`
	LatencyP99  float64 `json:"latency_p99_ms"`
	// Latency is every inference's latency since start, in LatencyBounds buckets (a
	// Prometheus histogram, which a fleet can aggregate; the percentiles above cannot be).
	Latency   Histogram `json:"latency_histogram"`
	LastError string    `json:"last_error,omitempty"`
	// Experiment is the running A/B or shadow experiment, if any.
	Experiment *ExperimentStats `json:"experiment,omitempty"`
}

// LatencyBounds are the upper bounds (seconds) of the latency histogram's buckets: from a
// micro-controller-sized model's 1 ms to a large one's 10 s on a small board.
var LatencyBounds = [...]float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}

// Histogram is a latency histogram: Buckets[i] counts observations at or below
// LatencyBounds[i] (not cumulative); the rest are above the last bound.
type Histogram struct {
	Count      uint64                     `json:"count"`
	SumSeconds float64                    `json:"sum_seconds"`
	Buckets    [len(LatencyBounds)]uint64 `json:"buckets"`
}

type modelStats struct {
	results, preErrors, inferErrors, postErrors, nonFinite, sinkErrors, noVersion atomic.Uint64
	hist                                                                          Histogram // under mu

	mu      sync.Mutex
	lat     [256]float64 // ring of recent latencies in ms (bounded)
	latN    int
	lastErr string
}

func (s *modelStats) observe(d time.Duration) {
	sec := d.Seconds()
	s.mu.Lock()
	s.lat[s.latN%len(s.lat)] = float64(d.Microseconds()) / 1000
	s.latN++
	s.hist.Count++
	s.hist.SumSeconds += sec
	for i, b := range LatencyBounds {
		if sec <= b {
			s.hist.Buckets[i]++
			break
		}
	}
	s.mu.Unlock()
}

func (s *modelStats) histogram() Histogram {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.hist
}

func (s *modelStats) setLastError(err error, at time.Time) {
	s.mu.Lock()
	s.lastErr = at.UTC().Format(time.RFC3339) + " " + err.Error()
	s.mu.Unlock()
}

// latency is a model's (or an arm's) recent latency percentiles in ms.
type latency struct{ p50, p95, p99 float64 }

func (s *modelStats) percentiles() (l latency, lastErr string) {
	s.mu.Lock()
	n := min(s.latN, len(s.lat))
	v := append([]float64(nil), s.lat[:n]...)
	lastErr = s.lastErr
	s.mu.Unlock()
	if n == 0 {
		return latency{}, lastErr
	}
	sort.Float64s(v)
	at := func(q float64) float64 { return v[int(math.Ceil(q*float64(n)))-1] }
	return latency{at(0.5), at(0.95), at(0.99)}, lastErr
}

// Stats reports every model's counters, in the order they were added.
func (p *Pipeline) Stats() []ModelStats {
	out := make([]ModelStats, 0, len(p.order))
	for _, name := range p.order {
		e := p.models[name]
		qs := e.queue.Stats()
		lat, lastErr := e.stats.percentiles()
		st := ModelStats{
			Name: name, Results: e.stats.results.Load(), PreErrors: e.stats.preErrors.Load(),
			InferErrors: e.stats.inferErrors.Load(), PostErrors: e.stats.postErrors.Load(),
			NonFinite: e.stats.nonFinite.Load(), SinkErrors: e.stats.sinkErrors.Load(),
			NoVersion: e.stats.noVersion.Load(), Dropped: qs.Dropped, QueueDepth: qs.Depth,
			LatencyP50: lat.p50, LatencyP95: lat.p95, LatencyP99: lat.p99, LastError: lastErr,
			Latency: e.stats.histogram(),
		}
		if x := e.exp.Load(); x != nil {
			st.Experiment = x.stats()
		}
		if s := e.serving.Load(); s != nil {
			st.Version = s.Version
			info := s.Model.Info()
			st.Delegate, st.Fallback = info.Delegate, info.Fallback
		}
		out = append(out, st)
	}
	return out
}
