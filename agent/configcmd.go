package agent

import "github.com/edge-agent/edge-agent/agent/command"

// configHandler adds the config command.
func (a *Agent) configHandler(h map[string]command.Handler) {}
