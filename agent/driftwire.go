package agent

import (
	"context"
	"sync"
)

// setupDrift builds the drift monitor (agent/drift) from the config.
func (a *Agent) setupDrift() error { return nil }

// runDrift runs the drift monitor's goroutines until ctx ends; wg tracks them.
func (a *Agent) runDrift(ctx context.Context, wg *sync.WaitGroup) {}
