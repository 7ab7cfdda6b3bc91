package agent

import (
	"context"
	"sync"
)

// setupStatus builds the local HTTP server (agent/status) from the config.
func (a *Agent) setupStatus(opt Options) error { return nil }

// runStatus serves until ctx ends; wg tracks its goroutines.
func (a *Agent) runStatus(ctx context.Context, wg *sync.WaitGroup) {}
