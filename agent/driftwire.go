package agent

// The drift monitor's wiring (docs/drift.md):
//
//	pipeline worker ──Observation──▶ driftObserver ──▶ drift.Monitor: per-version windows, O(features)
//	drift.Monitor's goroutine ──▶ references: manifest.json of the version in the model store
//	                          └─▶ alerts: log, drift.alert / drift.cleared events (fleet.emit),
//	                              the drifting window's kept frames ──▶ outbox "samples"

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/edge-agent/edge-agent/agent/drift"
	"github.com/edge-agent/edge-agent/agent/pipeline"
	"github.com/edge-agent/edge-agent/agent/result"
	"github.com/edge-agent/edge-agent/hal/sensor"
	"github.com/edge-agent/edge-agent/models/bundle"
)

// DriftScore is one monitored statistic's latest value, for the status page and /metrics.
type DriftScore struct {
	Model     string  `json:"model"`
	Version   string  `json:"version"`
	Feature   string  `json:"feature"`   // input feature or image channel name; "classes" or "confidence" for outputs
	Statistic string  `json:"statistic"` // "psi", "ks", "class_psi", "confidence_drop"
	Value     float64 `json:"value"`
	Threshold float64 `json:"threshold"`
	Alert     bool    `json:"alert"`   // the alert is raised (with hysteresis)
	Windows   uint64  `json:"windows"` // windows evaluated so far
}

// maxKeptFramePixels bounds a source picture kept with a frame for a drift capture: a larger
// one would hold megabytes per kept frame (the model's input tensor is kept all the same).
const maxKeptFramePixels = 640 * 480

// driftMonitor is the drift monitor's type: for the frames it keeps for a capture, it keeps
// what the samples stream needs besides the tensors.
type driftMonitor = drift.Monitor[driftMeta]

// driftMeta is a frame as a drift capture keeps it: the source frame (read-only data,
// shared) and the result. Result points at the pipeline's result while the frame is
// observed; a kept copy owns its own (keepMeta).
type driftMeta struct {
	Frame  sensor.Frame
	Result *result.Result
}

// driftObserver hands every served frame to the monitor.
type driftObserver struct{ mon *driftMonitor }

// Observe runs on the pipeline's workers.
func (d *driftObserver) Observe(o pipeline.Observation) {
	if o.Serving == nil || o.Result == nil {
		return
	}
	in := drift.Input[driftMeta]{
		Key:   drift.Key{Model: o.Model, Version: o.Serving.Version},
		Model: o.Serving.Model, Time: o.Result.TS,
		Inputs: o.Inputs, Outputs: o.Outputs, Meta: driftMeta{Frame: o.Frame, Result: o.Result},
	}
	// Scored items come highest first.
	switch out := &o.Output; {
	case len(out.Classes) > 0:
		in.Class, in.Classified = out.Classes[0].Index, true
		in.Score, in.Scored = out.Classes[0].Score, true
	case len(out.Detections) > 0:
		in.Score, in.Scored = out.Detections[0].Score, true
	}
	d.mon.Observe(&in)
}

// keepMeta copies a kept frame's record into a slot, reusing it. It runs on the worker while
// the frame is observed, before the sinks write to the result (the outbox numbers it), so
// the copy is the result as served.
func keepMeta(dst *driftMeta, src driftMeta) {
	r := dst.Result
	if r == nil {
		r = new(result.Result)
	}
	*r = *src.Result
	dst.Frame, dst.Result = src.Frame, r
	if img := dst.Frame.Image; img != nil && img.Bounds().Dx()*img.Bounds().Dy() > maxKeptFramePixels {
		dst.Frame.Image = nil
	}
}

// setupDrift builds the drift monitor (agent/drift) from the config and makes it the
// pipeline's observer.
func (a *Agent) setupDrift() error {
	d := a.cfg.Drift
	if !d.On() {
		return nil
	}
	mon := drift.New(drift.Options[driftMeta]{
		Config: drift.Config{
			Window: d.Window, PSI: d.PSI, KS: d.KS, KSAlpha: d.KSAlpha, ClassPSI: d.ClassPSI,
			ConfidenceDrop: d.ConfidenceDrop, Hysteresis: d.Hysteresis, ClearRatio: d.ClearRatio,
			MaxCaptures: d.MaxCaptures, Pixels: d.Pixels, OutputsOnly: d.OutputsOnly(),
		},
		Reference: a.driftReference,
		Alert:     a.driftAlert,
		Keep:      keepMeta,
		Logger:    a.log,
	})
	a.pipe.SetObserver(&driftObserver{mon: mon})
	a.drift = mon
	return nil
}

// runDrift runs the drift monitor's goroutines until ctx ends; wg tracks them.
func (a *Agent) runDrift(ctx context.Context, wg *sync.WaitGroup) {
	if a.drift == nil {
		return
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		a.drift.Run(ctx)
	}()
}

// DriftScores are the drift monitor's latest figures (nil when it is off).
func (a *Agent) DriftScores() []DriftScore {
	mon := a.drift
	if mon == nil {
		return nil
	}
	var out []DriftScore
	for _, s := range mon.Scores() {
		out = append(out, DriftScore{Model: s.Model, Version: s.Version, Feature: s.Feature, Statistic: s.Statistic,
			Value: s.Value, Threshold: s.Threshold, Alert: s.Alert, Windows: s.Windows})
	}
	return out
}

// driftReference reads a bundle-served version's reference statistics from the manifest the
// store keeps beside it (verified when the bundle was installed). Models with a fixed path
// have none.
func (a *Agent) driftReference(k drift.Key) (*bundle.Reference, error) {
	if a.store == nil || !a.servedFromBundles(k.Model) {
		return nil, nil
	}
	dir := a.store.Path(k.Model, k.Version)
	if dir == "" {
		return nil, nil
	}
	f, err := os.Open(filepath.Join(dir, bundle.ManifestName))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, bundle.MaxManifestBytes+1))
	if err != nil {
		return nil, err
	}
	if len(data) > bundle.MaxManifestBytes {
		return nil, fmt.Errorf("%s is over %d bytes", f.Name(), bundle.MaxManifestBytes)
	}
	var man bundle.Manifest
	if err := json.Unmarshal(data, &man); err != nil {
		return nil, fmt.Errorf("%s: %w", f.Name(), err)
	}
	if man.Name != k.Model || man.Version != k.Version {
		return nil, fmt.Errorf("%s describes %s %s, not %s %s", f.Name(), man.Name, man.Version, k.Model, k.Version)
	}
	return man.Reference, nil
}

func (a *Agent) servedFromBundles(model string) bool {
	for _, m := range a.cfg.Models {
		if m.Name == model {
			return m.Path == ""
		}
	}
	return false
}

// driftAlert logs an alert, sends it to the fleet as an event and stores the frames kept from
// the drifting window as samples. It runs on the monitor's goroutine.
func (a *Agent) driftAlert(ctx context.Context, al drift.Alert[driftMeta]) {
	e := al.Evidence
	what := "input feature " + e.Feature
	switch e.Statistic {
	case drift.StatClassPSI:
		what = "predicted classes"
	case drift.StatConfidenceDrop:
		what = "top-1 score"
	}
	ev := result.Event{Type: "drift.alert", Severity: "warning", Component: "drift",
		Code:  strings.Join([]string{"drift", al.Key.Model, e.Feature, e.Statistic}, "/"),
		Model: al.Key.Model, Version: al.Key.Version,
		Data: map[string]any{
			"feature": e.Feature, "statistic": e.Statistic, "value": e.Value, "threshold": e.Threshold,
			"clear_below": e.ClearBelow, "consecutive": e.Consecutive, "window": e.Window,
			"reference": e.Reference, "observed": e.Observed,
		},
	}
	if e.Classes != nil {
		ev.Data["class_bins"] = e.Classes
	}
	if al.Raised {
		ev.Message = fmt.Sprintf("%s of %s %s drifted: %s %.3g above its threshold %.3g for %d windows of %d results (window %d, %s to %s); it clears at or below %.3g",
			what, al.Key.Model, al.Key.Version, e.Statistic, e.Value, e.Threshold, e.Consecutive, e.Window.Size, e.Window.Index,
			e.Window.Start.UTC().Format("15:04:05.000"), e.Window.End.UTC().Format("15:04:05.000"), e.ClearBelow)
		a.log.Warn("drift alert", "model", al.Key.Model, "version", al.Key.Version, "feature", e.Feature, "statistic", e.Statistic,
			"value", e.Value, "threshold", e.Threshold, "window", e.Window.Index, "samples", len(al.Samples))
	} else {
		ev.Type, ev.Severity = "drift.cleared", "info"
		ev.Message = fmt.Sprintf("%s of %s %s is back: %s %.3g, at or below %.3g for %d windows (window %d)",
			what, al.Key.Model, al.Key.Version, e.Statistic, e.Value, e.ClearBelow, e.Consecutive, e.Window.Index)
		a.log.Info("drift cleared", "model", al.Key.Model, "version", al.Key.Version, "feature", e.Feature, "statistic", e.Statistic,
			"value", e.Value, "window", e.Window.Index)
	}
	if a.fleet == nil {
		return
	}
	a.fleet.emit(ev)
	if len(al.Samples) > 0 {
		a.storeDriftSamples(ctx, al)
	}
}

// storeDriftSamples stores an alert's kept frames in the outbox's samples stream, as the
// capture command does, marked with reason "drift" and the alert that took them.
func (a *Agent) storeDriftSamples(ctx context.Context, al drift.Alert[driftMeta]) {
	e := al.Evidence
	id := fmt.Sprintf("drift-%s-%s-w%d", al.Key.Model, al.Key.Version, e.Window.Index)
	tag := sampleTag{Reason: "drift",
		Drift: map[string]any{"feature": e.Feature, "statistic": e.Statistic, "value": e.Value, "threshold": e.Threshold, "window": e.Window.Index}}
	stored := 0
	for i, s := range al.Samples {
		if s.Meta.Result == nil {
			continue
		}
		data, err := a.sampleJSON(id, i+1, len(al.Samples), pipeline.Sample{Frame: s.Meta.Frame, Inputs: s.Inputs, Outputs: s.Outputs, Result: *s.Meta.Result}, tag)
		if err != nil {
			a.log.Warn("drift sample skipped", "capture", id, "n", i+1, "err", err)
			continue
		}
		if _, err := a.fleet.samples.Append(ctx, data); err != nil {
			a.log.Warn("drift samples not stored", "capture", id, "stored", stored, "of", len(al.Samples), "err", err)
			return
		}
		stored++
	}
	a.log.Info("drift samples stored", "capture", id, "samples", stored)
}
