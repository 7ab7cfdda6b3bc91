// Package agent wires edge-agent together; it is the one place that knows every part.
//
//	hal/sensor kinds ──▶ Runner (retry, backoff, drop-oldest queue)
//	        │
//	        ▼
//	pipeline: per-model queue ─▶ preprocess ─▶ infer (agent/infer/tflite) ─▶ postprocess ─▶ Result
//	        │                                                                        │
//	        ▼                                                                        ▼
//	agent/health (conditions: engine, models, delegates, sources)             Sink: stdout JSON lines
//
// Start order: detect hardware, open the engine, load models (a model that fails is reported
// and the others still serve), build sources, start the pipeline's workers (sinks first), then
// the sources. Stop order on cancel: sources stop, queued frames drain (bounded), models close.
// Errors from a callee are wrapped with its name ("load model %q: ...").
package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/edge-agent/edge-agent/agent/config"
	"github.com/edge-agent/edge-agent/agent/deploy"
	"github.com/edge-agent/edge-agent/agent/health"
	"github.com/edge-agent/edge-agent/agent/infer"
	"github.com/edge-agent/edge-agent/agent/link"
	"github.com/edge-agent/edge-agent/agent/pipeline"
	"github.com/edge-agent/edge-agent/agent/postprocess"
	"github.com/edge-agent/edge-agent/agent/preprocess"
	"github.com/edge-agent/edge-agent/agent/result"
	"github.com/edge-agent/edge-agent/agent/status"
	"github.com/edge-agent/edge-agent/hal/accel"
	"github.com/edge-agent/edge-agent/hal/board"
	"github.com/edge-agent/edge-agent/hal/sensor"
	"github.com/edge-agent/edge-agent/models/bundle"
	"github.com/edge-agent/edge-agent/models/sign"
	"github.com/edge-agent/edge-agent/models/store"
)

// Version is the agent's version, set at link time (-X .../agent.Version=...).
var Version = "dev"

// Options are what the caller (cmd/edge-agent, tests) supplies besides the config.
type Options struct {
	Logger *slog.Logger
	// Stdout receives results as JSON lines when the config asks for it (default os.Stdout).
	Stdout io.Writer
	// Sinks receive every result too (tests; the outbox later).
	Sinks []pipeline.Sink
	// HealthEvery is how often source health is refreshed (default 2s).
	HealthEvery time.Duration
	// NoFleet builds the agent without the outbox and the MQTT link, for commands that act
	// on the model store beside a running daemon (edge-agent models ...).
	NoFleet bool
	// LogLevel, when set, is the level of Logger's handler; the config command changes it
	// live (log.level).
	LogLevel *slog.LevelVar
	// Executable is the binary the selfupdate command replaces (cmd/edge-agent sets it);
	// empty refuses the command.
	Executable string
}

// ErrReload is Run's result when a config command changed settings that apply at start:
// the agent stopped cleanly and the caller should build and run it again (cmd/edge-agent
// does, in the same process).
var ErrReload = errors.New("agent stopped to reload its settings")

// ErrExec is Run's result after a selfupdate command installed a new binary: the agent
// stopped cleanly and the caller should execute the binary again (cmd/edge-agent does, in
// place, so the service keeps its process id).
var ErrExec = errors.New("agent stopped to run its new binary")

// Agent is a running edge-agent.
type Agent struct {
	cfg *config.Config
	// security is what the device trusts, worked out once from cfg (trust.go).
	security status.Security
	log      *slog.Logger
	health   *health.Tracker
	hw       accel.Report
	board    board.Info
	engine   infer.Engine
	pipe     *pipeline.Pipeline
	runners  []*sensor.Runner
	models   map[string]infer.Model
	every    time.Duration
	deploy   *deploy.Manager // nil when no model is served from bundles
	store    *store.Store
	fleet    *fleet // nil with Options.NoFleet
	// base is the config as the file gave it, before the fleet's overrides.
	base     *config.Config
	logLevel *slog.LevelVar
	// reload asks Run to stop and return the error it carries: ErrReload (config command)
	// or ErrExec (selfupdate command).
	reload chan error
	exe    string        // Options.Executable
	drift  *driftMonitor // nil when drift monitoring is off
	// downloading holds a token while a deploy command downloads a bundle.
	downloading chan struct{}
	// allowed is deploy.allowed_urls: where commands may make the device download from.
	allowed deploy.AllowList
}

// New builds the agent from a validated config. It fails only for configuration errors (a
// source whose settings are wrong); a model that cannot load is reported and skipped.
func New(cfg *config.Config, opt Options) (*Agent, error) {
	log := opt.Logger
	if log == nil {
		log = slog.Default()
	}
	base := cfg
	cfg, ovErr := applyOverrides(cfg, log)
	if opt.LogLevel != nil {
		var lvl slog.Level
		if lvl.UnmarshalText([]byte(cfg.Log.Level)) == nil {
			opt.LogLevel.Set(lvl)
		}
	}
	a := &Agent{
		cfg:         cfg,
		base:        base,
		logLevel:    opt.LogLevel,
		exe:         opt.Executable,
		reload:      make(chan error, 1),
		downloading: make(chan struct{}, 1),
		log:         log,
		health:      health.New(nil),
		hw:          accel.Detect(cfg.HostRoot),
		board:       board.Read(cfg.HostRoot),
		models:      map[string]infer.Model{},
		every:       opt.HealthEvery,
	}
	allowed, err := deploy.ParseAllowList(cfg.Deploy.AllowedURLs)
	if err != nil {
		return nil, fmt.Errorf("deploy.allowed_urls: %w", err)
	}
	a.allowed = allowed
	if a.every <= 0 {
		a.every = 2 * time.Second
	}
	var conds []health.Condition
	a.security, conds = trust(cfg)
	log.Info("trust", "commands", a.security.Commands, "command_keys", a.security.Keys[config.RoleCommands],
		"bundle_keys", a.security.Keys[config.RoleBundles], "update_keys", a.security.Keys[config.RoleUpdate])
	for _, c := range conds {
		log.Warn("security: "+c.Message, "code", c.Code)
		a.health.Set(c)
	}
	if ovErr != nil {
		a.health.Set(health.Condition{Code: "config-overrides", Severity: health.Warning, Component: "config", Message: ovErr.Error()})
	}
	eng, err := infer.Engines.New(cfg.Engine)
	if err != nil {
		a.health.Set(health.Condition{Code: "engine", Severity: health.Error, Component: "infer", Message: err.Error()})
		log.Error("no inference engine: models will not load", "engine", cfg.Engine, "err", err)
	}
	a.engine = eng

	var sinks []pipeline.Sink
	if !opt.NoFleet {
		// The outbox comes first: a result reaches the other sinks numbered and stored.
		f, err := openFleet(cfg, log, a.health)
		if err != nil {
			return nil, err
		}
		a.fleet = f
		f.status = a.statusFields
		sinks = append(sinks, f.sink())
	}
	sinks = append(sinks, opt.Sinks...)
	if *cfg.Stdout {
		w := opt.Stdout
		if w == nil {
			w = os.Stdout
		}
		sinks = append(sinks, pipeline.NewWriterSink(w))
	}
	a.pipe = pipeline.New(pipeline.Options{
		Device:       cfg.Device,
		Sink:         fanout(sinks),
		Logger:       log,
		DrainTimeout: cfg.ShutdownTimeout,
	})

	deps := sensor.Deps{MQTT: link.DialSubscriber, Root: cfg.HostRoot}
	for i, s := range cfg.Sources {
		src, err := sensor.Kinds.New(s, deps)
		if err != nil {
			a.Close()
			return nil, fmt.Errorf("sources[%d]: %w", i, err)
		}
		r := sensor.NewRunner(s, src, sensor.RunnerOptions{Logger: log.With("source", s.Name)})
		a.runners = append(a.runners, r)
		a.pipe.AddSource(s.Name, r.Queue())
	}

	var served []string
	for _, m := range cfg.Models {
		if m.Path == "" { // served from signed bundles: restored from the store below
			served = append(served, m.Name)
			if err := a.pipe.AddModel(pipeline.ModelConfig{Name: m.Name, Sources: m.Sources, Workers: m.Workers, Queue: m.Queue}, nil); err != nil {
				a.Close()
				return nil, err
			}
			continue
		}
		serving, err := a.loadModel(m)
		code := "model/" + m.Name
		if err != nil {
			log.Error("model not loaded; the other models keep serving", "model", m.Name, "path", m.Path, "err", err)
			a.health.Set(health.Condition{Code: code, Severity: health.Error, Component: "infer", Message: err.Error()})
		} else {
			info := serving.Model.Info()
			log.Info("model loaded", "model", m.Name, "version", m.Version, "delegate", info.Delegate,
				"threads", info.Threads, "inputs", shapes(info.Inputs), "outputs", shapes(info.Outputs))
			if info.Fallback != "" {
				log.Warn("delegate fallback", "model", m.Name, "requested", m.Delegate, "using", info.Delegate, "reason", info.Fallback)
				a.health.Set(health.Condition{Code: "delegate/" + m.Name, Severity: health.Warning, Component: "infer",
					Message: fmt.Sprintf("%s runs on %s: %s", m.Name, info.Delegate, info.Fallback)})
			}
		}
		if err := a.pipe.AddModel(pipeline.ModelConfig{Name: m.Name, Sources: m.Sources, Workers: m.Workers, Queue: m.Queue}, serving); err != nil {
			a.Close()
			return nil, err
		}
	}
	if len(served) > 0 {
		if err := a.startDeploy(served); err != nil {
			a.Close()
			return nil, err
		}
	}
	if a.fleet != nil && cfg.MQTT.Broker != "" {
		if err := a.startCommands(); err != nil {
			a.Close()
			return nil, err
		}
	}
	if err := a.setupDrift(); err != nil {
		a.Close()
		return nil, err
	}
	if err := a.setupStatus(opt); err != nil {
		a.Close()
		return nil, err
	}
	return a, nil
}

// startDeploy opens the model store and the deploy manager, and serves each bundle-served
// model's active version.
func (a *Agent) startDeploy(served []string) error {
	verifier, err := sign.VerifierFromConfig(a.cfg.Keys(config.RoleBundles))
	if err != nil {
		return fmt.Errorf("bundles.trusted_keys: %w", err)
	}
	st, err := store.Open(a.cfg.ModelsDir, store.Options{Keep: a.cfg.KeepVersions})
	if err != nil {
		return fmt.Errorf("model store: %w", err)
	}
	if err := os.MkdirAll(a.cfg.Inbox, 0o750); err != nil {
		st.Close()
		return fmt.Errorf("inbox: %w", err)
	}
	a.store = st
	byName := map[string]config.Model{}
	for _, m := range a.cfg.Models {
		byName[m.Name] = m
	}
	a.deploy = deploy.New(deploy.Options{
		Store:  st,
		Verify: bundle.VerifyWith(verifier),
		Load: func(name string, man bundle.Manifest, dir string) (*pipeline.Serving, error) {
			return LoadServing(a.engine, BundleModel(byName[name], man, dir), a.hw, a.log)
		},
		Pipeline:     a.pipe,
		Served:       served,
		AgentVersion: Version,
		Probation:    deploy.Probation(a.cfg.Probation),
		Inbox:        a.cfg.Inbox,
		Logger:       a.log,
		Events: func(e deploy.Event) {
			if a.fleet != nil {
				sev := "info"
				switch e.Type {
				case "refused", "canary-failed", "rolled-back", "probation-failed":
					sev = "warning"
				}
				a.fleet.emit(result.Event{TS: e.Time, Type: "deploy." + e.Type, Severity: sev, Component: "deploy",
					Model: e.Model, Version: e.Version, Message: strings.TrimSpace(e.Type + " " + e.Reason)})
				a.fleet.link.RefreshStatus() // the retained status lists the models' versions
			}
			code := "deploy/" + e.Model
			switch e.Type {
			case "refused", "canary-failed", "rolled-back", "probation-failed":
				a.health.Set(health.Condition{Code: code, Severity: health.Warning, Component: "deploy", Message: fmt.Sprintf("%s %s: %s", e.Type, e.Version, e.Reason)})
			case "probation-passed":
				a.health.Clear(code)
			}
		},
	})
	if a.engine == nil {
		return nil // models cannot load; the engine condition says why
	}
	a.deploy.Restore(context.Background())
	return nil
}

// BundleModel is the configuration of a version served from a bundle: the device's settings
// (sources, workers, threads, delegate) with the manifest's model file and processing.
func BundleModel(m config.Model, man bundle.Manifest, dir string) config.Model {
	m.Path = filepath.Join(dir, filepath.FromSlash(man.Model))
	m.Version = man.Version
	m.Spec = man.Processing
	if lf := m.Spec.Output.LabelsFile; lf != "" {
		m.Spec.Output.LabelsFile = filepath.Join(dir, filepath.FromSlash(lf))
	}
	if g := m.Spec.Output.Embedding.Gallery; g != "" {
		m.Spec.Output.Embedding.Gallery = filepath.Join(dir, filepath.FromSlash(g))
	}
	if (m.Delegate == "" || m.Delegate == infer.DelegateAuto) && man.Delegate != "" {
		m.Delegate = man.Delegate
	}
	return m
}

// Deploy is the deploy manager (nil when no model is served from bundles).
func (a *Agent) Deploy() *deploy.Manager { return a.deploy }

// loadModel loads one configured model with its processing.
func (a *Agent) loadModel(m config.Model) (*pipeline.Serving, error) {
	if a.engine == nil {
		return nil, infer.ErrNoEngine
	}
	s, err := LoadServing(a.engine, m, a.hw, a.log)
	if err != nil {
		return nil, err
	}
	a.models[m.Name] = s.Model.(infer.Model)
	return s, nil
}

// LoadServing loads a model file and builds its pre- and post-processing from the spec.
// The predict command uses it too, so a prediction goes through exactly the daemon's path.
func LoadServing(eng infer.Engine, m config.Model, hw accel.Report, log *slog.Logger) (*pipeline.Serving, error) {
	threads := m.Threads
	if threads == 0 {
		// Share the CPUs between the model's workers: each worker's interpreter runs its own
		// thread pool, and oversubscribed pools spin against each other (measured: p99 of
		// the sin model 18 ms with 2 workers × 2 threads on 2 cores).
		threads = max(1, min(4, runtime.NumCPU()/max(m.Workers, 1)))
	}
	model, err := eng.LoadFile(m.Path, infer.Options{
		Threads:          threads,
		Pool:             m.Workers,
		Delegate:         m.Delegate,
		EdgeTPUAvailable: hw.HasEdgeTPU(),
		GPUAvailable:     slices.ContainsFunc(hw.GPU, func(g accel.GPU) bool { return g.Usable }),
		Logf: func(f string, a ...any) {
			if log != nil {
				log.Debug(fmt.Sprintf(f, a...), "model", m.Name)
			}
		},
	})
	if err != nil {
		return nil, err
	}
	info := model.Info()
	pre, err := preprocess.New(m.Spec, info.Inputs)
	if err != nil {
		model.Close()
		return nil, fmt.Errorf("model %q: %w", m.Name, err)
	}
	post, err := postprocess.NewFor(m.Spec.Output, info.Inputs, info.Outputs, os.ReadFile)
	if err != nil {
		model.Close()
		return nil, fmt.Errorf("model %q: %w", m.Name, err)
	}
	return &pipeline.Serving{Version: m.Version, Model: model, Pre: pre, Post: post}, nil
}

func shapes(ts []infer.TensorInfo) []string {
	out := make([]string, len(ts))
	for i, t := range ts {
		out[i] = fmt.Sprintf("%s%v", t.DType, t.Shape)
	}
	return out
}

// Run serves until ctx is cancelled; cancellation is a clean stop and returns nil.
func (a *Agent) Run(ctx context.Context) error {
	engine := "none"
	if a.engine != nil {
		engine = a.engine.Name() + " " + a.engine.Version()
	}
	a.log.Info("edge-agent starting", "version", Version, "device", a.cfg.Device, "board", a.board.Model,
		"hardware", a.hw.Summary(), "engine", engine, "models", len(a.cfg.Models), "sources", len(a.cfg.Sources))

	outer := ctx
	ctx, stopRun := context.WithCancel(ctx) // a reload stops everything as a signal would
	defer stopRun()
	srcCtx, stopSources := context.WithCancel(ctx)
	defer stopSources()
	// The fleet (outbox writer side, link) outlives the pipeline's drain: results drained on
	// shutdown are still stored, and the link stops last.
	fleetCtx, stopFleet := context.WithCancel(context.WithoutCancel(ctx))
	defer stopFleet()
	fleetDone := make(chan struct{})
	if a.fleet != nil {
		a.fleet.emit(result.Event{Type: "agent.started", Component: "agent",
			Message: fmt.Sprintf("edge-agent %s started on %s", Version, a.board.Model), Data: map[string]any{"version": Version}})
		go func() {
			defer close(fleetDone)
			a.fleet.run(fleetCtx, a.metrics)
		}()
	} else {
		close(fleetDone)
	}
	var wg sync.WaitGroup
	pipeDone := make(chan error, 1)
	go func() { pipeDone <- a.pipe.Run(ctx) }() // sinks and workers first
	for _, r := range a.runners {               // then the sources
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.Run(srcCtx)
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		a.watchSources(srcCtx)
	}()
	if a.deploy != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a.deploy.Run(srcCtx)
		}()
	}
	a.runDrift(srcCtx, &wg)
	a.runStatus(srcCtx, &wg)

	var restart error
	select {
	case <-ctx.Done():
	case restart = <-a.reload:
		a.log.Info("stopping to start again", "why", restart, "in", reloadDelay)
		select { // let the link send the config command's reply first
		case <-time.After(reloadDelay):
		case <-ctx.Done():
		}
		stopRun()
	}
	stopSources()
	wg.Wait()
	err := <-pipeDone
	if a.fleet != nil {
		a.fleet.emit(result.Event{Type: "agent.stopping", Component: "agent", Message: "edge-agent is stopping (signal or shutdown)"})
	}
	stopFleet()
	<-fleetDone
	a.Close()
	for _, st := range a.pipe.Stats() {
		a.log.Info("model stopped", "model", st.Name, "results", st.Results, "dropped", st.Dropped,
			"errors", st.PreErrors+st.InferErrors+st.PostErrors+st.SinkErrors)
	}
	a.log.Info("edge-agent stopped")
	if err != nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("pipeline: %w", err)
	}
	if restart != nil && outer.Err() == nil {
		return restart
	}
	return nil
}

// Close frees the models and the store. Run calls it on its way out; a caller that built the
// agent without running it (edge-agent models ...) calls it itself.
func (a *Agent) Close() {
	for name, m := range a.models {
		if cerr := m.Close(); cerr != nil {
			a.log.Warn("close model", "model", name, "err", cerr)
		}
	}
	a.models = nil
	if a.deploy != nil {
		a.deploy.CloseServing()
		a.deploy = nil
	}
	if a.store != nil {
		a.store.Close()
		a.store = nil
	}
	if a.fleet != nil {
		if err := a.fleet.close(); err != nil {
			a.log.Warn("close outbox", "err", err)
		}
	}
}

// statusFields are the agent's part of the retained MQTT status message.
func (a *Agent) statusFields() map[string]any {
	models := []map[string]string{}
	for _, st := range a.pipe.Stats() {
		models = append(models, map[string]string{"name": st.Name, "version": st.Version})
	}
	s := map[string]any{"board": a.board.Model, "hardware": a.hw.Summary(), "models": models, "health": a.health.Worst().String(), "agent_version": Version,
		"commands": a.security.Commands}
	if len(a.security.SharedKeyRoles) > 1 {
		s["shared_key_roles"] = a.security.SharedKeyRoles
	}
	if len(a.cfg.MQTT.Groups) > 0 {
		s["groups"] = a.cfg.MQTT.Groups
	}
	return s
}

// metrics is the periodic telemetry message (docs/mqtt.md).
func (a *Agent) metrics() map[string]any {
	m := map[string]any{"models": a.pipe.Stats(), "sources": a.SourceStats(), "health": a.health.List()}
	if d := a.DriftScores(); d != nil {
		m["drift"] = d
	}
	if a.fleet != nil {
		for k, v := range a.fleet.stats() {
			m[k] = v
		}
	}
	b := board.Read(a.cfg.HostRoot)
	if t, ok := b.CPUTemp(); ok {
		m["cpu_temp_c"] = t
	}
	m["mem_available_bytes"] = b.Memory.AvailableBytes
	return m
}

// FleetStats reports the outbox and the MQTT link (nil without them).
func (a *Agent) FleetStats() map[string]any {
	if a.fleet == nil {
		return nil
	}
	return a.fleet.stats()
}

// watchSources turns runner state into health conditions.
func (a *Agent) watchSources(ctx context.Context) {
	t := time.NewTicker(a.every)
	defer t.Stop()
	for {
		for _, r := range a.runners {
			st := r.Stats()
			code := "source/" + st.Name
			if st.State == sensor.StateBackoff {
				a.health.Set(health.Condition{Code: code, Severity: health.Warning, Component: "sensor",
					Message: fmt.Sprintf("source %s (%s) is failing and being retried: %s", st.Name, st.Kind, st.LastError)})
			} else {
				a.health.Clear(code)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Health is the agent's condition tracker (the status page reads it).
func (a *Agent) Health() *health.Tracker { return a.health }

// Ready reports whether the agent serves: a model has a loaded version (or none is
// configured, as in the packages' default config) and, with the fleet parts, the outbox is
// open to store results.
func (a *Agent) Ready() bool {
	outbox := a.fleet == nil || a.fleet.ob != nil
	if len(a.cfg.Models) == 0 {
		return outbox
	}
	for _, st := range a.pipe.Stats() {
		if st.Version != "" {
			return outbox
		}
	}
	return false
}

// FleetConnected reports whether a broker is configured and, if so, whether this process has
// been online with it (a self-update confirms only then: a binary that cannot reach the fleet
// is reverted while the fleet can still reach the previous one).
func (a *Agent) FleetConnected() (configured, connected bool) {
	if a.fleet == nil || a.fleet.link == nil {
		return false, false
	}
	st := a.fleet.link.Stats()
	if st.State == link.StateOfflineMode {
		return false, false
	}
	return true, st.Connects > 0
}

// Event sends an event to the fleet (dropped without the fleet parts).
func (a *Agent) Event(e result.Event) {
	if a.fleet != nil {
		a.fleet.emit(e)
	}
}

// Pipeline is the agent's pipeline (predict API, stats).
func (a *Agent) Pipeline() *pipeline.Pipeline { return a.pipe }

// SourceStats reports every source's runner statistics.
func (a *Agent) SourceStats() []sensor.RunnerStats {
	out := make([]sensor.RunnerStats, len(a.runners))
	for i, r := range a.runners {
		out[i] = r.Stats()
	}
	return out
}

// Hardware is what accelerator detection found.
func (a *Agent) Hardware() accel.Report { return a.hw }

// fanout sends a result to every sink in order and stops at the first error: a result the
// outbox refused was not accepted, so no later sink (stdout) may report it as if it were.
func fanout(sinks []pipeline.Sink) pipeline.Sink {
	if len(sinks) == 1 {
		return sinks[0]
	}
	return pipeline.FuncSink(func(ctx context.Context, r *result.Result) error {
		for _, s := range sinks {
			if err := s.Put(ctx, r); err != nil {
				return err
			}
		}
		return nil
	})
}
