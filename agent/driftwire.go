package agent

import (
	"context"
	"sync"
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

// setupDrift builds the drift monitor (agent/drift) from the config.
func (a *Agent) setupDrift() error { return nil }

// runDrift runs the drift monitor's goroutines until ctx ends; wg tracks them.
func (a *Agent) runDrift(ctx context.Context, wg *sync.WaitGroup) {}

// DriftScores are the drift monitor's latest figures (nil when it is off).
func (a *Agent) DriftScores() []DriftScore { return nil }
