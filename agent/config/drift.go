package config

// Drift configures the drift monitor (docs/drift.md). Zero fields take the defaults.
//
//	drift:
//	  enabled: true        # unset: versions whose bundle has reference statistics; true: also the
//	                       # others, on their outputs only; false: off
//	  window: 500          # results per window
//	  psi: 0.2             # input feature PSI threshold
//	  ks_alpha: 0.01       # KS threshold: the critical value at this significance ...
//	  ks: 0                # ... unless a fixed KS threshold is given here
//	  class_psi: 0.2       # predicted-class PSI threshold
//	  confidence_drop: 0.1 # drop of the mean top-1 score below the first window's
//	  hysteresis: 3        # windows in a row to raise, and to clear
//	  clear_ratio: 0.8     # clear at or below clear_ratio × threshold
//	  max_captures: 20     # frames of the drifting window stored as samples (-1: none; at most 100)
//	  pixels: 256          # image pixels sampled per frame
type Drift struct {
	Enabled        *bool   `yaml:"enabled"`
	Window         int     `yaml:"window"`
	PSI            float64 `yaml:"psi"`
	KSAlpha        float64 `yaml:"ks_alpha"`
	KS             float64 `yaml:"ks"`
	ClassPSI       float64 `yaml:"class_psi"`
	ConfidenceDrop float64 `yaml:"confidence_drop"`
	Hysteresis     int     `yaml:"hysteresis"`
	ClearRatio     float64 `yaml:"clear_ratio"`
	MaxCaptures    int     `yaml:"max_captures"`
	Pixels         int     `yaml:"pixels"`
}

// Drift limits.
const (
	MaxDriftCaptures = 100
	minDriftWindow   = 50 // below it the statistics are mostly noise
	maxDriftWindow   = 1_000_000
)

func (d *Drift) applyDefaults() {
	set := func(v *float64, def float64) {
		if *v == 0 {
			*v = def
		}
	}
	if d.Window == 0 {
		d.Window = 500
	}
	set(&d.PSI, 0.2)
	set(&d.KSAlpha, 0.01)
	set(&d.ClassPSI, 0.2)
	set(&d.ConfidenceDrop, 0.1)
	set(&d.ClearRatio, 0.8)
	if d.Hysteresis == 0 {
		d.Hysteresis = 3
	}
	if d.MaxCaptures == 0 {
		d.MaxCaptures = 20
	}
	if d.Pixels == 0 {
		d.Pixels = 256
	}
}

// On reports whether the monitor runs at all.
func (d *Drift) On() bool { return d.Enabled == nil || *d.Enabled }

// OutputsOnly reports whether versions without reference statistics are monitored on their
// outputs (only when enabled is set to true).
func (d *Drift) OutputsOnly() bool { return d.Enabled != nil && *d.Enabled }

func (d *Drift) validate(bad func(field, format string, a ...any)) {
	if d.Window < minDriftWindow || d.Window > maxDriftWindow {
		bad("drift.window", "%d is outside %d..%d results", d.Window, minDriftWindow, maxDriftWindow)
	}
	for _, t := range []struct {
		field string
		v     float64
	}{{"drift.psi", d.PSI}, {"drift.class_psi", d.ClassPSI}, {"drift.confidence_drop", d.ConfidenceDrop}} {
		if !(t.v > 0 && t.v < 100) {
			bad(t.field, "%v must be a positive threshold", t.v)
		}
	}
	if !(d.KSAlpha > 0 && d.KSAlpha < 0.5) {
		bad("drift.ks_alpha", "%v must be a significance level between 0 and 0.5 (e.g. 0.01)", d.KSAlpha)
	}
	if !(d.KS >= 0 && d.KS < 1) {
		bad("drift.ks", "%v must be within 0..1 (0: the critical value at ks_alpha)", d.KS)
	}
	if !(d.ClearRatio > 0 && d.ClearRatio <= 1) {
		bad("drift.clear_ratio", "%v must be within 0..1 (an alert clears at or below clear_ratio × threshold)", d.ClearRatio)
	}
	if d.Hysteresis < 1 || d.Hysteresis > 100 {
		bad("drift.hysteresis", "%d is outside 1..100 windows", d.Hysteresis)
	}
	if d.MaxCaptures < -1 || d.MaxCaptures > MaxDriftCaptures {
		bad("drift.max_captures", "%d is outside 1..%d (-1: capture nothing)", d.MaxCaptures, MaxDriftCaptures)
	}
	if d.Pixels < 16 || d.Pixels > 1<<20 {
		bad("drift.pixels", "%d is outside 16..%d", d.Pixels, 1<<20)
	}
}
