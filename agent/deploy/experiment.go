package deploy

import (
	"context"
	"errors"
	"fmt"

	"github.com/edge-agent/edge-agent/agent/pipeline"
)

// ErrNoExperiment means promote or abort found no experiment on the model.
var ErrNoExperiment = errors.New("no experiment is running on this model")

// StartExperiment loads an installed version of name as the candidate of an A/B split
// (weight = share of stream keys it serves) or a shadow test, after the same canary checks
// as an activation. The active version keeps serving; an experiment already running is
// replaced.
func (m *Manager) StartExperiment(ctx context.Context, name, version string, weight float64, shadow bool) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.served(name) {
		return fmt.Errorf("%w: %s", ErrNotServed, name)
	}
	dir := m.opt.Store.Path(name, version)
	man, err := readManifest(dir)
	if err != nil {
		return fmt.Errorf("experiment %s@%s: %w (install the version first)", name, version, err)
	}
	s, err := m.load(ctx, name, man, dir)
	if err != nil {
		return fmt.Errorf("experiment %s@%s: %w", name, version, err)
	}
	old, err := m.opt.Pipeline.SetExperiment(name, &pipeline.Experiment{Candidate: s, Weight: weight, Shadow: shadow})
	if err != nil {
		closeServing(s)
		return err
	}
	if old != nil {
		closeServing(old.Candidate)
	}
	mode := fmt.Sprintf("split, %.0f%% of streams", weight*100)
	if shadow {
		mode = "shadow"
	}
	m.event(Event{Model: name, Version: version, Type: "experiment-started", Reason: mode})
	return nil
}

// Promote makes the experiment's candidate the active version (through the usual
// activation: swap, active pointer, probation) and ends the experiment.
func (m *Manager) Promote(ctx context.Context, name string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	old, err := m.opt.Pipeline.SetExperiment(name, nil)
	if err != nil {
		return err
	}
	if old == nil {
		return fmt.Errorf("promote %s: %w", name, ErrNoExperiment)
	}
	version := old.Candidate.Version
	closeServing(old.Candidate) // activate loads and checks it again, as for any activation
	if err := m.activate(ctx, name, version, "promoted from experiment"); err != nil {
		return err
	}
	m.event(Event{Model: name, Version: version, Type: "experiment-promoted"})
	return nil
}

// Abort ends the experiment on name; the active version serves alone.
func (m *Manager) Abort(name string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	old, err := m.opt.Pipeline.SetExperiment(name, nil)
	if err != nil {
		return err
	}
	if old == nil {
		return fmt.Errorf("abort %s: %w", name, ErrNoExperiment)
	}
	closeServing(old.Candidate)
	m.event(Event{Model: name, Version: old.Candidate.Version, Type: "experiment-aborted"})
	return nil
}
