package agent

// Damaged files: the outbox and the state store are bbolt files. One that is damaged must not
// stop the agent: it is moved aside (PATH.damaged-<UTC>), a new one takes its place with what
// could be salvaged from the old, and a health condition and an event say what happened and
// what to do (docs/operations.md#damaged-files).

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/edge-agent/edge-agent/agent/health"
	"github.com/edge-agent/edge-agent/agent/result"
	"github.com/edge-agent/edge-agent/internal/boltcheck"
)

// moveAside renames a damaged file out of the way.
func moveAside(log *slog.Logger, what, path string, cause error) (string, error) {
	moved, err := boltcheck.MoveAside(path, time.Now())
	if err != nil {
		return "", fmt.Errorf("%s: %w (and %v)", what, cause, err)
	}
	log.Error(what+" damaged: moved aside; a new one is started with what can be salvaged", "file", path, "moved_to", moved, "err", cause)
	return moved, nil
}

// reportDamaged raises the warning condition code ("outbox-damaged"; the event's type is the
// same with a dot) for a damaged file of component.
func (f *fleet) reportDamaged(code, component, message string, data map[string]any) {
	f.health.Set(health.Condition{Code: code, Severity: health.Warning, Component: component, Message: message})
	f.emit(result.Event{Type: strings.ReplaceAll(code, "-", "."), Severity: "warning", Component: component, Message: message, Data: data})
}

// recognise names the outbox stream a salvaged record belongs to, by its schema; "" for one
// that is not a whole record of this agent (a damaged page).
func recognise(data []byte) string {
	var r struct {
		Schema string `json:"schema"`
	}
	if json.Unmarshal(data, &r) != nil {
		return ""
	}
	switch r.Schema {
	case result.Schema:
		return streamResults
	case result.EventSchema:
		return streamEvents
	case SampleSchema:
		return streamSamples
	}
	return ""
}
