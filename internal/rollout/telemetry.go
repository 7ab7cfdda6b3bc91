package rollout

// What the engine reads from the devices' topics (docs/mqtt.md), reduced to the fields the
// gates need. The same reduced form travels between serve instances as an observation.

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/edge-agent/edge-agent/agent/command"
)

// Schemas of what serve instances publish.
const (
	RecordSchema      = "edgectl/rollout/v1"
	ObservationSchema = "edgectl/rollout-obs/v1"
	StateSchema       = "edgectl/serve-state/v1"
)

// maxPayload bounds a decoded (gunzipped) telemetry message.
const maxPayload = 16 << 20

// Observation kinds.
const (
	KindReply   = "reply"
	KindEvent   = "event"
	KindMetrics = "metrics"
)

// Observation is one piece of telemetry about a device of a rollout: a command reply, a
// deploy event, or the rollout model's figures from a metrics message. An instance that
// receives telemetry for a rollout another instance owns forwards it in this form to
// <prefix>/fleet/serve/<owner>/obs.
type Observation struct {
	Schema  string `json:"schema"`
	From    string `json:"from,omitempty"` // the forwarding instance
	Rollout string `json:"rollout"`
	Device  string `json:"device"`
	Kind    string `json:"kind"`
	// reply
	ID     string `json:"id,omitempty"`
	Status string `json:"status,omitempty"`
	Reason string `json:"reason,omitempty"`
	// event (deploy.*) and metrics
	Type    string    `json:"type,omitempty"`
	Model   string    `json:"model,omitempty"`
	Version string    `json:"version,omitempty"`
	Message string    `json:"message,omitempty"`
	TS      time.Time `json:"ts,omitzero"`
	// metrics of Model: cumulative counters and the latest latency percentiles
	Results uint64  `json:"results,omitempty"`
	Errors  uint64  `json:"errors,omitempty"`
	P95MS   float64 `json:"p95_ms,omitempty"`
	P99MS   float64 `json:"p99_ms,omitempty"`
}

// gunzip returns p, decompressed when it starts with the gzip magic bytes.
func gunzip(p []byte) ([]byte, error) {
	if !bytes.HasPrefix(p, []byte{0x1f, 0x8b}) {
		return p, nil
	}
	zr, err := gzip.NewReader(bytes.NewReader(p))
	if err != nil {
		return nil, fmt.Errorf("gzip: %w", err)
	}
	b, err := io.ReadAll(io.LimitReader(zr, maxPayload+1))
	if err != nil {
		return nil, fmt.Errorf("gzip: %w", err)
	}
	if len(b) > maxPayload {
		return nil, fmt.Errorf("gzip: more than %d bytes unpacked", maxPayload)
	}
	return b, nil
}

// parseReply reads a cmd/reply message; ok is false for replies to commands that are not a
// rollout's.
func parseReply(dev string, p []byte) (Observation, bool) {
	p, err := gunzip(p)
	if err != nil {
		return Observation{}, false
	}
	var r command.Reply
	if json.Unmarshal(p, &r) != nil {
		return Observation{}, false
	}
	rid, _, ok := ParseCommandID(r.ID)
	if !ok {
		return Observation{}, false
	}
	return Observation{Schema: ObservationSchema, Rollout: rid, Device: dev, Kind: KindReply, ID: r.ID, Status: r.Status, Reason: clip(r.Reason), TS: r.TS}, true
}

// parseEvents reads an events batch and returns its deploy.* events.
func parseEvents(dev string, p []byte) []Observation {
	p, err := gunzip(p)
	if err != nil {
		return nil
	}
	var env struct {
		Events []struct {
			Type    string    `json:"type"`
			Model   string    `json:"model"`
			Version string    `json:"version"`
			Message string    `json:"message"`
			TS      time.Time `json:"ts"`
		} `json:"events"`
	}
	if json.Unmarshal(p, &env) != nil {
		return nil
	}
	var out []Observation
	for _, e := range env.Events {
		if strings.HasPrefix(e.Type, "deploy.") {
			out = append(out, Observation{Schema: ObservationSchema, Device: dev, Kind: KindEvent, Type: e.Type, Model: e.Model, Version: e.Version, Message: clip(e.Message), TS: e.TS})
		}
	}
	return out
}

// modelFigures are the fields of the agent's per-model statistics (agent/pipeline
// ModelStats, under models[] in a metrics message) the gates read.
type modelFigures struct {
	Name        string   `json:"name"`
	Version     string   `json:"version"`
	Results     uint64   `json:"results"`
	PreErrors   uint64   `json:"preprocess_errors"`
	InferErrors uint64   `json:"infer_errors"`
	PostErrors  uint64   `json:"postprocess_errors"`
	P95         *float64 `json:"latency_p95_ms"`
	P99         float64  `json:"latency_p99_ms"`
}

// parseMetrics reads a metrics message and returns one observation per model.
func parseMetrics(dev string, p []byte) []Observation {
	p, err := gunzip(p)
	if err != nil {
		return nil
	}
	var m struct {
		TS     time.Time      `json:"ts"`
		Models []modelFigures `json:"models"`
	}
	if json.Unmarshal(p, &m) != nil {
		return nil
	}
	out := make([]Observation, 0, len(m.Models))
	for _, f := range m.Models {
		o := Observation{Schema: ObservationSchema, Device: dev, Kind: KindMetrics, Model: f.Name, Version: f.Version, TS: m.TS,
			Results: f.Results, Errors: f.PreErrors + f.InferErrors + f.PostErrors, P99MS: f.P99}
		if f.P95 != nil {
			o.P95MS = *f.P95
		}
		out = append(out, o)
	}
	return out
}

// latencyMS is the latency the p95 gate compares: the p95 when the agent reports it, else
// the p99, which is never below it.
func (o Observation) latencyMS() (float64, string) {
	if o.P95MS > 0 {
		return o.P95MS, "p95"
	}
	return o.P99MS, "p99"
}

// CommandID is the id of command n of rollout id.
func CommandID(rollout string, n int) string { return "ro-" + rollout + "-" + strconv.Itoa(n) }

// ParseCommandID splits a rollout command id (ro-<rollout>-<n>).
func ParseCommandID(id string) (rollout string, n int, ok bool) {
	rest, ok := strings.CutPrefix(id, "ro-")
	if !ok {
		return "", 0, false
	}
	i := strings.LastIndexByte(rest, '-')
	if i <= 0 {
		return "", 0, false
	}
	n, err := strconv.Atoi(rest[i+1:])
	if err != nil || n < 0 {
		return "", 0, false
	}
	return rest[:i], n, true
}

// ownerOf is the instance named in a rollout id (<8 hex digits>-<instance>).
func ownerOf(rollout string) string {
	if len(rollout) > 9 && rollout[8] == '-' {
		return rollout[9:]
	}
	return ""
}

// Record is what the owner of a rollout publishes, retained, at <prefix>/fleet/rollouts/<id>:
// enough for the other instances to know whose devices they are.
type Record struct {
	Schema  string    `json:"schema"`
	ID      string    `json:"id"`
	Owner   string    `json:"owner"`
	Model   string    `json:"model"`
	Version string    `json:"version"`
	State   string    `json:"state"`
	Phase   string    `json:"phase,omitempty"`
	Stage   int       `json:"stage"`
	Devices []string  `json:"devices"`
	Updated time.Time `json:"updated"`
}

func (r Record) active() bool { return r.State == StateRunning }
