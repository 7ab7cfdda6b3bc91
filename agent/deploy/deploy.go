// Package deploy owns the model lifecycle: a bundle is verified and unpacked into the store's
// staging area, installed, loaded and canary-checked while the current version keeps
// serving, swapped in atomically, watched during a probation period, and either committed or
// rolled back by itself with an event saying why. Manual rollback to any kept version goes
// the same way. Every step is recorded in the store's history, which survives restarts.
//
// deploy imports the bundle, signature and store packages and agent/pipeline's Serving type;
// the agent injects how a version is loaded (engine and processing), so deploy never imports
// a stage package.
package deploy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/edge-agent/edge-agent/agent/infer"
	"github.com/edge-agent/edge-agent/agent/pipeline"
	"github.com/edge-agent/edge-agent/models/bundle"
	"github.com/edge-agent/edge-agent/models/store"
)

// Swapper is what deploy needs from the pipeline.
type Swapper interface {
	Swap(name string, s *pipeline.Serving) (*pipeline.Serving, error)
	SetExperiment(name string, x *pipeline.Experiment) (*pipeline.Experiment, error)
	Stats() []pipeline.ModelStats
}

// Loader loads an installed version from its directory: the model file and its processing
// as the manifest declares them.
type Loader func(name string, m bundle.Manifest, dir string) (*pipeline.Serving, error)

// Probation decides when a freshly activated version is trusted.
type Probation struct {
	Inferences       int           // results after which the version passes (default 100)
	Duration         time.Duration // or time after which it passes (default 60s)
	MinSamples       int           // results needed before a rate can fail it (default 10)
	MaxErrorRate     float64       // frames that failed (any stage) ÷ attempts (default 0.2)
	MaxNonFiniteRate float64       // NaN/Inf outputs ÷ attempts (default 0.01)
}

func (p Probation) withDefaults() Probation {
	if p.Inferences <= 0 {
		p.Inferences = 100
	}
	if p.Duration <= 0 {
		p.Duration = 60 * time.Second
	}
	if p.MinSamples <= 0 {
		p.MinSamples = 10
	}
	if p.MaxErrorRate <= 0 {
		p.MaxErrorRate = 0.2
	}
	if p.MaxNonFiniteRate <= 0 {
		p.MaxNonFiniteRate = 0.01
	}
	return p
}

// Event is something that happened to a model version (logged, recorded in the store's
// history, and handed to Options.Events for the status page and MQTT).
type Event struct {
	Time    time.Time `json:"ts"`
	Model   string    `json:"model"`
	Version string    `json:"version"`
	Type    string    `json:"type"` // installed, activated, canary-failed, refused, rolled-back, probation-passed
	Reason  string    `json:"reason,omitempty"`
}

// Options configure a Manager.
type Options struct {
	Store    *store.Store
	Verify   func(manifest, sig []byte) (keyID string, err error)
	Load     Loader
	Pipeline Swapper
	// Served lists the model names this device serves (configured without a fixed path).
	Served       []string
	AgentVersion string
	Probation    Probation
	// Inbox is a folder watched for dropped bundles ("" = none); Poll its period (1s).
	Inbox  string
	Poll   time.Duration
	Logger *slog.Logger
	Now    func() time.Time
	Events func(Event)
	// Limits passed to the bundle reader.
	Limits bundle.OpenOptions
}

// Errors for decisions.
var (
	ErrNotServed  = errors.New("model is not configured on this device")
	ErrDowngrade  = errors.New("bundle is not newer than every release installed before")
	ErrAgentOld   = errors.New("bundle needs a newer agent")
	ErrNoPrevious = errors.New("no version to roll back to")
)

// Manager runs the lifecycle. Lifecycle operations are serialised.
type Manager struct {
	opt Options
	log *slog.Logger
	now func() time.Time

	mu        sync.Mutex // serialises install/activate/rollback
	pmu       sync.Mutex
	probation map[string]*trial
}

// trial is a version on probation with the one it replaced kept loaded for a fast rollback.
type trial struct {
	version, prevVersion string
	prev                 *pipeline.Serving
	started              time.Time
	base                 pipeline.ModelStats
}

// New creates a manager.
func New(opt Options) *Manager {
	if opt.Logger == nil {
		opt.Logger = slog.Default()
	}
	if opt.Now == nil {
		opt.Now = time.Now
	}
	if opt.Poll <= 0 {
		opt.Poll = time.Second
	}
	opt.Probation = opt.Probation.withDefaults()
	opt.Limits.Verify = opt.Verify
	opt.Limits.Now = opt.Now
	return &Manager{opt: opt, log: opt.Logger, now: opt.Now, probation: map[string]*trial{}}
}

func (m *Manager) event(e Event) {
	e.Time = m.now().UTC()
	lvl := slog.LevelInfo
	if e.Type == "canary-failed" || e.Type == "rolled-back" || e.Type == "refused" {
		lvl = slog.LevelWarn
	}
	m.log.Log(context.Background(), lvl, "model "+e.Type, "model", e.Model, "version", e.Version, "reason", e.Reason)
	// The store records installs and activations itself.
	if e.Model != "" && e.Type != "installed" && e.Type != "activated" {
		if err := m.opt.Store.Record(e.Model, e.Version, e.Type, e.Reason); err != nil {
			m.log.Warn("record history", "err", err)
		}
	}
	if m.opt.Events != nil {
		m.opt.Events(e)
	}
}

// InstallFile verifies a bundle file, installs it and activates it. The serving version is
// untouched unless every check passes. A verified bundle of the active version (same name,
// version and sequence) succeeds without doing anything, so a deploy sent twice is harmless.
func (m *Manager) InstallFile(ctx context.Context, path string) (bundle.Manifest, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	man, err := m.install(ctx, path)
	if err != nil {
		m.event(Event{Model: man.Name, Version: man.Version, Type: "refused", Reason: fmt.Sprintf("%s: %v", filepath.Base(path), err)})
		return man, err
	}
	return man, nil
}

func (m *Manager) install(ctx context.Context, path string) (bundle.Manifest, error) {
	f, err := os.Open(path)
	if err != nil {
		return bundle.Manifest{}, fmt.Errorf("open bundle: %w", err)
	}
	defer f.Close()
	dir, err := m.opt.Store.Stage()
	if err != nil {
		return bundle.Manifest{}, err
	}
	b, err := bundle.Open(f, dir, m.opt.Limits)
	if err != nil {
		m.opt.Store.Discard(dir)
		return bundle.Manifest{}, fmt.Errorf("bundle %s: %w", filepath.Base(path), err)
	}
	man := b.Manifest
	if m.alreadyActive(man) {
		// A deploy sent again (a rollout resumed after a restart, a retried command) finds
		// its version serving: nothing to do, and it is not a downgrade.
		m.opt.Store.Discard(dir)
		m.log.Info("bundle is the active version already; nothing to do", "model", man.Name, "version", man.Version, "sequence", man.Sequence)
		return man, nil
	}
	if err := m.admit(man); err != nil {
		m.opt.Store.Discard(dir)
		return man, err
	}
	raw, _ := json.MarshalIndent(man, "", "  ")
	if err := os.WriteFile(filepath.Join(dir, bundle.ManifestName), raw, 0o640); err != nil {
		m.opt.Store.Discard(dir)
		return man, fmt.Errorf("keep manifest: %w", err)
	}
	// Load and canary-check from the staging folder: a version that fails is never
	// installed, so nothing changes. The loaded model survives the rename below (the runtime
	// maps the file, not the path).
	start := m.now()
	s, err := m.load(ctx, man.Name, man, dir)
	if err != nil {
		m.opt.Store.Discard(dir)
		m.event(Event{Model: man.Name, Version: man.Version, Type: "canary-failed", Reason: err.Error()})
		return man, err
	}
	meta := store.VersionMeta{Name: man.Name, Version: man.Version, Sequence: man.Sequence, KeyID: b.KeyID, Installed: m.now().UTC(), Files: len(man.Files)}
	if err := m.opt.Store.Install(dir, meta); err != nil {
		closeServing(s)
		m.opt.Store.Discard(dir)
		return man, err
	}
	m.event(Event{Model: man.Name, Version: man.Version, Type: "installed", Reason: "signed by " + b.KeyID})
	return man, m.commit(man.Name, s, "install", start)
}

// admit applies the rules a verified manifest must still pass on this device.
func (m *Manager) admit(man bundle.Manifest) error {
	if !m.served(man.Name) {
		return fmt.Errorf("%w: %q (add it under models: without a path to serve it from bundles)", ErrNotServed, man.Name)
	}
	if man.MinAgentVersion != "" && m.opt.AgentVersion != "" && bundle.CompareVersions(m.opt.AgentVersion, man.MinAgentVersion) < 0 {
		return fmt.Errorf("%w: it needs %s, this agent is %s", ErrAgentOld, man.MinAgentVersion, m.opt.AgentVersion)
	}
	// Anti-rollback against the highest sequence ever installed, not the active one: after a
	// rollback an old bundle replayed must still be refused. Unknown means refuse.
	hi, err := m.opt.Store.Highest(man.Name)
	if err != nil {
		return fmt.Errorf("%w: %v: refusing to install %s %s (sequence %d) while it cannot be checked against older releases; fix the model store (or restore %s/highest from a backup)",
			ErrDowngrade, err, man.Name, man.Version, man.Sequence, m.opt.Store.Root())
	}
	if man.Sequence <= hi {
		return fmt.Errorf("%w: sequence %d (version %s) is not above %d, the highest ever installed for %s: release it again with a higher sequence (a rollback release too), or go back to a kept version with rollback",
			ErrDowngrade, man.Sequence, man.Version, hi, man.Name)
	}
	return nil
}

// alreadyActive tells whether a verified manifest names the active version exactly: same
// model, version and sequence.
func (m *Manager) alreadyActive(man bundle.Manifest) bool {
	if !m.served(man.Name) {
		return false
	}
	p, ok, err := m.opt.Store.Active(man.Name)
	return err == nil && ok && p.Version == man.Version && p.Sequence == man.Sequence
}

func (m *Manager) served(name string) bool {
	for _, s := range m.opt.Served {
		if s == name {
			return true
		}
	}
	return false
}

// readManifest reads the manifest kept beside an installed version.
func readManifest(dir string) (bundle.Manifest, error) {
	var man bundle.Manifest
	b, err := os.ReadFile(filepath.Join(dir, bundle.ManifestName))
	if err != nil {
		return man, err
	}
	return man, json.Unmarshal(b, &man)
}

// activate loads an installed version, canary-checks it and swaps it in, keeping the old one
// for probation. Callers hold m.mu.
func (m *Manager) activate(ctx context.Context, name, version, reason string) error {
	dir := m.opt.Store.Path(name, version)
	man, err := readManifest(dir)
	if err != nil {
		return fmt.Errorf("activate %s@%s: manifest: %w", name, version, err)
	}
	start := m.now()
	s, err := m.load(ctx, name, man, dir)
	if err != nil {
		m.event(Event{Model: name, Version: version, Type: "canary-failed", Reason: err.Error()})
		return err
	}
	return m.commit(name, s, reason, start)
}

// commit swaps a loaded, checked version in, moves the active pointer and starts its
// probation with the replaced version kept loaded. Callers hold m.mu.
func (m *Manager) commit(name string, s *pipeline.Serving, reason string, start time.Time) error {
	version := s.Version
	m.endTrial(name) // a version still on probation is superseded
	old, err := m.opt.Pipeline.Swap(name, s)
	if err != nil {
		closeServing(s)
		return err
	}
	if err := m.opt.Store.Activate(name, version, reason); err != nil {
		m.opt.Pipeline.Swap(name, old)
		closeServing(s)
		return err
	}
	m.event(Event{Model: name, Version: version, Type: "activated", Reason: fmt.Sprintf("%s (load, canary and swap took %v)", reason, m.now().Sub(start).Round(time.Millisecond))})
	prevVersion := ""
	if old != nil {
		prevVersion = old.Version
	}
	m.pmu.Lock()
	m.probation[name] = &trial{version: version, prevVersion: prevVersion, prev: old, started: m.now(), base: m.stats(name)}
	m.pmu.Unlock()
	return nil
}

// load loads a version and runs its canary checks; on failure nothing is left open.
func (m *Manager) load(ctx context.Context, name string, man bundle.Manifest, dir string) (*pipeline.Serving, error) {
	s, err := m.opt.Load(name, man, dir)
	if err != nil {
		return nil, fmt.Errorf("%w: load: %v", ErrCanary, err)
	}
	im, ok := s.Model.(infer.Model)
	if !ok {
		closeServing(s)
		return nil, fmt.Errorf("%w: the loaded model cannot be checked (not an inference model)", ErrCanary)
	}
	if err := CheckTensors(im.Info(), man); err != nil {
		closeServing(s)
		return nil, err
	}
	if err := RunGolden(ctx, im, man.Golden); err != nil {
		closeServing(s)
		return nil, err
	}
	return s, nil
}

func closeServing(s *pipeline.Serving) {
	if s == nil {
		return
	}
	if c, ok := s.Model.(infer.Model); ok {
		c.Close() // waits for in-flight inferences
	}
}

func (m *Manager) stats(name string) pipeline.ModelStats {
	for _, st := range m.opt.Pipeline.Stats() {
		if st.Name == name {
			return st
		}
	}
	return pipeline.ModelStats{Name: name}
}

// Rollback activates a kept version ("" = the previous one) after the same canary checks.
func (m *Manager) Rollback(ctx context.Context, name, version string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if version == "" {
		p, ok, err := m.opt.Store.Active(name)
		if err != nil {
			return err
		}
		if !ok || p.Previous == "" {
			return fmt.Errorf("%w: %s has no previous version", ErrNoPrevious, name)
		}
		version = p.Previous
	}
	if err := m.activate(ctx, name, version, "manual rollback"); err != nil {
		return err
	}
	m.event(Event{Model: name, Version: version, Type: "rolled-back", Reason: "manual rollback"})
	return nil
}

// Restore serves each configured model's active version at start, falling back to the
// previous version when the active one fails its canary.
func (m *Manager) Restore(ctx context.Context) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, name := range m.opt.Served {
		p, ok, err := m.opt.Store.Active(name)
		if err != nil || !ok {
			m.log.Info("no active version yet; drop a bundle into the inbox or run edge-agent models install", "model", name, "err", err)
			continue
		}
		err = m.activate(ctx, name, p.Version, "restore at start")
		if err != nil && p.Previous != "" {
			m.log.Error("active version does not load; trying the previous one", "model", name, "version", p.Version, "err", err)
			err = m.activate(ctx, name, p.Previous, "restore: "+p.Version+" failed its canary")
		}
		if err != nil {
			m.log.Error("model not served", "model", name, "err", err)
			continue
		}
		m.endTrial(name) // a restored version already passed probation before
	}
}

// Run watches the inbox and the versions on probation until ctx ends.
func (m *Manager) Run(ctx context.Context) {
	t := time.NewTicker(min(m.opt.Poll, 200*time.Millisecond))
	defer t.Stop()
	var seen map[string]int64
	lastInbox := time.Time{}
	for {
		m.checkProbation(ctx)
		if m.opt.Inbox != "" && m.now().Sub(lastInbox) >= m.opt.Poll {
			lastInbox = m.now()
			seen = m.scanInbox(ctx, seen)
		}
		select {
		case <-ctx.Done():
			m.endAllTrials()
			return
		case <-t.C:
		}
	}
}

// checkProbation passes or rolls back versions on probation.
func (m *Manager) checkProbation(ctx context.Context) {
	m.pmu.Lock()
	names := make([]string, 0, len(m.probation))
	for n := range m.probation {
		names = append(names, n)
	}
	m.pmu.Unlock()
	p := m.opt.Probation
	for _, name := range names {
		m.pmu.Lock()
		tr := m.probation[name]
		m.pmu.Unlock()
		if tr == nil {
			continue
		}
		st := m.stats(name)
		ok := st.Results - tr.base.Results
		// Frames the version could not process count against it, whichever stage failed: a
		// preprocessing spec shipped with the version is as much its fault as its weights.
		failed := (st.PreErrors - tr.base.PreErrors) + (st.InferErrors - tr.base.InferErrors) + (st.PostErrors - tr.base.PostErrors)
		nonFinite := st.NonFinite - tr.base.NonFinite
		total := ok + failed
		var why string
		if total >= uint64(p.MinSamples) {
			if r := float64(failed) / float64(total); r > p.MaxErrorRate {
				why = fmt.Sprintf("error rate %.2f over %d inferences is above %.2f", r, total, p.MaxErrorRate)
			}
			if r := float64(nonFinite) / float64(total); r > p.MaxNonFiniteRate {
				why = fmt.Sprintf("NaN/Inf rate %.2f over %d inferences is above %.2f", r, total, p.MaxNonFiniteRate)
			}
		}
		switch {
		case why != "":
			m.autoRollback(ctx, name, tr, why)
		case total >= uint64(p.Inferences) || m.now().Sub(tr.started) >= p.Duration:
			m.endTrial(name)
			m.event(Event{Model: name, Version: tr.version, Type: "probation-passed", Reason: fmt.Sprintf("%d inferences, %d failed, in %v", total, failed, m.now().Sub(tr.started).Round(time.Second))})
		}
	}
}

func (m *Manager) autoRollback(ctx context.Context, name string, tr *trial, why string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.pmu.Lock()
	if m.probation[name] != tr {
		m.pmu.Unlock()
		return
	}
	delete(m.probation, name)
	m.pmu.Unlock()
	if tr.prev == nil {
		m.event(Event{Model: name, Version: tr.version, Type: "probation-failed", Reason: why + "; no previous version to roll back to"})
		return
	}
	bad, err := m.opt.Pipeline.Swap(name, tr.prev)
	if err != nil {
		m.log.Error("rollback swap", "model", name, "err", err)
		return
	}
	closeServing(bad)
	if err := m.opt.Store.Activate(name, tr.prevVersion, "auto-rollback: "+why); err != nil {
		m.log.Error("rollback pointer", "model", name, "err", err)
	}
	m.event(Event{Model: name, Version: tr.prevVersion, Type: "rolled-back", Reason: fmt.Sprintf("%s %s: %s", name, tr.version, why)})
}

// endTrial ends a probation and closes the version it kept loaded for a rollback (it no
// longer serves: either the trial passed, or a newer activation superseded it).
func (m *Manager) endTrial(name string) {
	m.pmu.Lock()
	tr := m.probation[name]
	delete(m.probation, name)
	m.pmu.Unlock()
	if tr != nil {
		closeServing(tr.prev)
	}
}

// CloseServing closes every version the manager loaded into the pipeline (at shutdown,
// after the pipeline has drained).
func (m *Manager) CloseServing() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.endAllTrials()
	for _, name := range m.opt.Served {
		if x, err := m.opt.Pipeline.SetExperiment(name, nil); err == nil && x != nil {
			closeServing(x.Candidate)
		}
		if s, err := m.opt.Pipeline.Swap(name, nil); err == nil {
			closeServing(s)
		}
	}
}

func (m *Manager) endAllTrials() {
	m.pmu.Lock()
	names := make([]string, 0, len(m.probation))
	for n := range m.probation {
		names = append(names, n)
	}
	m.pmu.Unlock()
	for _, n := range names {
		m.endTrial(n)
	}
}

// scanInbox installs bundles dropped into the inbox once their size is stable across two
// scans. A processed file is removed; a refused one is moved to inbox/failed with a
// .reason file beside it.
func (m *Manager) scanInbox(ctx context.Context, seen map[string]int64) map[string]int64 {
	entries, err := os.ReadDir(m.opt.Inbox)
	if err != nil {
		m.log.Warn("inbox", "dir", m.opt.Inbox, "err", err)
		return seen
	}
	next := map[string]int64{}
	for _, e := range entries {
		name := e.Name()
		if e.IsDir() || strings.HasPrefix(name, ".") {
			continue
		}
		if model, ok := strings.CutSuffix(name, ".rollback"); ok {
			m.rollbackRequest(ctx, model, filepath.Join(m.opt.Inbox, name))
			continue
		}
		if !isBundleName(name) {
			continue
		}
		info, err := e.Info()
		if err != nil {
			continue
		}
		if prev, ok := seen[name]; !ok || prev != info.Size() {
			next[name] = info.Size() // still arriving, or new: look again next scan
			continue
		}
		path := filepath.Join(m.opt.Inbox, name)
		if _, err := m.InstallFile(ctx, path); err != nil {
			failed := filepath.Join(m.opt.Inbox, "failed")
			os.MkdirAll(failed, 0o750)
			os.Rename(path, filepath.Join(failed, name))
			os.WriteFile(filepath.Join(failed, name+".reason"), []byte(err.Error()+"\n"), 0o640)
			continue
		}
		os.Remove(path)
	}
	return next
}

// rollbackRequest handles NAME.rollback dropped into the inbox (by `edge-agent models
// rollback` while the daemon runs): its content is the version, empty for the previous one.
// The outcome replaces the request as NAME.rollback.done or NAME.rollback.failed.
func (m *Manager) rollbackRequest(ctx context.Context, model, path string) {
	b, err := os.ReadFile(path)
	if err != nil || len(b) > 256 {
		return
	}
	os.Remove(path)
	version := strings.TrimSpace(string(b))
	outcome, text := ".done", "rolled back"
	if err := m.Rollback(ctx, model, version); err != nil {
		outcome, text = ".failed", err.Error()
	}
	os.WriteFile(path+outcome, []byte(text+"\n"), 0o640)
}

func isBundleName(n string) bool {
	for _, ext := range []string{".tar", ".tar.gz", ".tgz", ".bundle"} {
		if strings.HasSuffix(n, ext) {
			return true
		}
	}
	return false
}
