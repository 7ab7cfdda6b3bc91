package agent

import "github.com/edge-agent/edge-agent/agent/command"

// captureHandler adds the capture command.
func (a *Agent) captureHandler(h map[string]command.Handler) {}
