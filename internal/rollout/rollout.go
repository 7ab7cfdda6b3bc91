// Package rollout is the rollout engine of the fleet server (edgectl serve): it deploys a
// model bundle to a fleet in stages, gates each stage on the devices' replies, events and
// metrics, halts and rolls back when a gate fails, and keeps every rollout in a state file so
// that a restarted server carries on where it stopped (docs/fleet-server.md).
//
// It speaks MQTT (docs/mqtt.md) without a client of its own: the caller hands it every
// message of the topics it asks for (Handle, ControlTopics, SharedTopics) and gives it a
// Publisher; cmd/edgectl connects both to the broker with internal/fleetclient.
//
// Imports: the standard library, agent/command (command and reply types) and
// internal/durable. It must not import paho or any other agent package.
package rollout

import (
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"math"
	"regexp"
	"slices"
	"strings"
	"time"
)

// Rollout states and phases.
const (
	StateRunning = "running"
	StateHalted  = "halted"
	StateDone    = "done"

	PhaseDeploying = "deploying" // deploy commands out, waiting for the stage's replies
	PhaseSoaking   = "soaking"   // the stage's devices run the new version; metrics are watched
)

// Limits.
const (
	MaxStages       = 20
	MaxTargets      = 100_000 // devices in one rollout
	MaxRunning      = 64      // rollouts running at once
	MaxKept         = 100     // finished rollouts kept in the state file (the oldest go)
	MaxEvidence     = 20      // evidence lines kept with a halted rollout
	MinFrames       = 10      // frames a device must have run in a soak before its error rate can halt
	DefaultSoak     = time.Minute
	DefaultTimeout  = 10 * time.Minute // a stage's devices must reply done or failed within this
	DefaultMaxError = 0.05
	maxReason       = 1024 // bytes of a device's reason kept
)

// Errors for decisions (the HTTP API maps them to status codes).
var (
	ErrInvalid  = errors.New("invalid rollout request")
	ErrNotFound = errors.New("no such rollout")
	ErrConflict = errors.New("conflict")
	ErrNotReady = errors.New("the rollout engine is not running yet")
)

// Duration is a time.Duration written in JSON as a Go duration string ("30s").
type Duration time.Duration

func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("duration: want a string like \"30s\" or \"10m\"")
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("duration %q: %v", s, err)
	}
	*d = Duration(v)
	return nil
}

// Gates decide whether a rollout goes on after a stage.
type Gates struct {
	// MaxFailures is the number of devices of the whole rollout that may fail (failed reply,
	// no reply within StageTimeout, or a deploy.canary-failed, deploy.probation-failed,
	// deploy.refused or deploy.rolled-back event) before it halts.
	MaxFailures int `json:"max_failures"`
	// MaxErrorRate is the highest share of frames (errors ÷ frames, over the soak, from the
	// metrics' per-model counters) a device may fail with the new version. 0 halts on any
	// error; 1 turns the gate off.
	MaxErrorRate float64 `json:"max_error_rate"`
	// MaxP95LatencyMS is the highest p95 latency a device may report during a soak; 0 is off.
	// Agents that do not report latency_p95_ms are held to their latency_p99_ms, which is
	// never below the p95.
	MaxP95LatencyMS float64 `json:"max_p95_latency_ms"`
	// Soak is how long each stage's devices run before the next stage starts.
	Soak Duration `json:"soak"`
	// StageTimeout is how long a stage's devices have to reply done or failed.
	StageTimeout Duration `json:"stage_timeout"`
}

// GateSpec is Gates as a request gives them: a field left out takes its default.
type GateSpec struct {
	MaxFailures     *int      `json:"max_failures"`
	MaxErrorRate    *float64  `json:"max_error_rate"`
	MaxP95LatencyMS *float64  `json:"max_p95_latency_ms"`
	Soak            *Duration `json:"soak"`
	StageTimeout    *Duration `json:"stage_timeout"`
}

// Resolve applies the defaults and checks the values.
func (g GateSpec) Resolve() (Gates, error) {
	out := Gates{MaxErrorRate: DefaultMaxError, Soak: Duration(DefaultSoak), StageTimeout: Duration(DefaultTimeout)}
	if g.MaxFailures != nil {
		out.MaxFailures = *g.MaxFailures
	}
	if g.MaxErrorRate != nil {
		out.MaxErrorRate = *g.MaxErrorRate
	}
	if g.MaxP95LatencyMS != nil {
		out.MaxP95LatencyMS = *g.MaxP95LatencyMS
	}
	if g.Soak != nil {
		out.Soak = *g.Soak
	}
	if g.StageTimeout != nil {
		out.StageTimeout = *g.StageTimeout
	}
	switch {
	case out.MaxFailures < 0:
		return out, fmt.Errorf("%w: gates.max_failures %d is negative", ErrInvalid, out.MaxFailures)
	case out.MaxErrorRate < 0 || out.MaxErrorRate > 1 || math.IsNaN(out.MaxErrorRate):
		return out, fmt.Errorf("%w: gates.max_error_rate %v is not within 0..1", ErrInvalid, out.MaxErrorRate)
	case out.MaxP95LatencyMS < 0 || math.IsNaN(out.MaxP95LatencyMS):
		return out, fmt.Errorf("%w: gates.max_p95_latency_ms %v is negative (0 turns the gate off)", ErrInvalid, out.MaxP95LatencyMS)
	case out.Soak < 0 || time.Duration(out.Soak) > 7*24*time.Hour:
		return out, fmt.Errorf("%w: gates.soak %v is not within 0..168h", ErrInvalid, time.Duration(out.Soak))
	case time.Duration(out.StageTimeout) < time.Second || time.Duration(out.StageTimeout) > 24*time.Hour:
		return out, fmt.Errorf("%w: gates.stage_timeout %v is not within 1s..24h (commands expire after it, and agents take at most 24h)", ErrInvalid, time.Duration(out.StageTimeout))
	}
	return out, nil
}

// Spec is the body of POST /v1/rollouts.
type Spec struct {
	Bundle  string    `json:"bundle"` // file name in the server's bundle folder
	Group   string    `json:"group,omitempty"`
	Devices []string  `json:"devices,omitempty"`
	All     bool      `json:"all,omitempty"`
	Stages  []float64 `json:"stages"` // cumulative percentages of the targets, increasing, last ≤ 100
	Gates   GateSpec  `json:"gates"`
}

var (
	nameRE     = regexp.MustCompile(`^[A-Za-z0-9._-]{1,128}$`)
	instanceRE = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)
)

// ValidName tells whether s can be a device, group or instance name in a topic and a
// command id: letters, digits, '.', '_' and '-'.
func ValidName(s string) bool { return nameRE.MatchString(s) && s != "." && s != ".." }

// Check validates everything but the bundle, which the server resolves.
func (s Spec) Check() error {
	n := 0
	for _, b := range []bool{s.Group != "", len(s.Devices) > 0, s.All} {
		if b {
			n++
		}
	}
	if n != 1 {
		return fmt.Errorf("%w: give exactly one target: \"group\": G, \"devices\": [IDs] or \"all\": true", ErrInvalid)
	}
	if s.Group != "" && !ValidName(s.Group) {
		return fmt.Errorf("%w: group %q: use letters, digits, '.', '_' and '-'", ErrInvalid, s.Group)
	}
	if len(s.Devices) > MaxTargets {
		return fmt.Errorf("%w: %d devices; at most %d in one rollout", ErrInvalid, len(s.Devices), MaxTargets)
	}
	seen := map[string]bool{}
	for _, d := range s.Devices {
		if !ValidName(d) {
			return fmt.Errorf("%w: device %q: use letters, digits, '.', '_' and '-'", ErrInvalid, d)
		}
		if seen[d] {
			return fmt.Errorf("%w: device %q is listed twice", ErrInvalid, d)
		}
		seen[d] = true
	}
	return checkStages(s.Stages)
}

func checkStages(st []float64) error {
	if len(st) == 0 {
		return fmt.Errorf("%w: stages is required: cumulative percentages such as [5, 25, 100]", ErrInvalid)
	}
	if len(st) > MaxStages {
		return fmt.Errorf("%w: %d stages; at most %d", ErrInvalid, len(st), MaxStages)
	}
	prev := 0.0
	for i, p := range st {
		if math.IsNaN(p) || p <= prev || p > 100 {
			return fmt.Errorf("%w: stage %d is %v%%: stages must increase, each above 0 and at most 100 (e.g. [5, 25, 100])", ErrInvalid, i+1, p)
		}
		prev = p
	}
	return nil
}

// StageSizes returns how many targets (of n) stages cover, cumulatively: ceil(p% × n), at
// least 1 and at most n.
func StageSizes(stages []float64, n int) []int {
	out := make([]int, len(stages))
	for i, p := range stages {
		// The small epsilon keeps 5% of 20 at 1 despite floating-point error.
		k := int(math.Ceil(p*float64(n)/100 - 1e-9))
		k = min(max(k, 1), n)
		if i > 0 {
			k = max(k, out[i-1])
		}
		out[i] = k
	}
	return out
}

// Order returns the devices in a rollout's deterministic order: by an FNV-1a hash of the
// rollout id and the device, so the stages of one rollout are stable across restarts, and
// different rollouts start on different devices.
func Order(id string, devices []string) []string {
	type hd struct {
		h uint64
		d string
	}
	hs := make([]hd, len(devices))
	for i, d := range devices {
		f := fnv.New64a()
		f.Write([]byte(id + "/" + d))
		hs[i] = hd{f.Sum64(), d}
	}
	slices.SortFunc(hs, func(a, b hd) int {
		if a.h != b.h {
			if a.h < b.h {
				return -1
			}
			return 1
		}
		return strings.Compare(a.d, b.d)
	})
	out := make([]string, len(hs))
	for i, x := range hs {
		out[i] = x.d
	}
	return out
}

// Bundle is what a rollout deploys, as the server resolved it from its bundle folder.
type Bundle struct {
	Name     string `json:"name"` // file name in the bundle folder
	URL      string `json:"url"`  // where the devices download it
	SHA256   string `json:"sha256"`
	Size     int64  `json:"size"`
	Model    string `json:"model"`
	Version  string `json:"version"`
	Sequence uint64 `json:"sequence"`
}

// Target is who a rollout is for, as requested.
type Target struct {
	Group   string   `json:"group,omitempty"`
	Devices []string `json:"devices,omitempty"`
	All     bool     `json:"all,omitempty"`
}

// Stage is one step of a rollout.
type Stage struct {
	Percent    float64    `json:"percent"`
	Devices    int        `json:"devices"` // targets covered once this stage is done (cumulative)
	StartedAt  *time.Time `json:"started_at,omitempty"`
	DeployedAt *time.Time `json:"deployed_at,omitempty"` // every device of the stage replied or timed out
	SoakUntil  *time.Time `json:"soak_until,omitempty"`
	FinishedAt *time.Time `json:"finished_at,omitempty"`
}

// Device is one target of a rollout and what happened to it.
type Device struct {
	ID    string `json:"device"`
	Stage int    `json:"stage"` // index of the stage that deploys to it
	// From is the version of the model the device served when the deploy was sent (from its
	// retained status): what a rollback returns it to.
	From     string     `json:"from_version,omitempty"`
	Commands []string   `json:"commands,omitempty"` // deploy command ids sent, oldest first
	SentAt   *time.Time `json:"sent_at,omitempty"`
	Status   string     `json:"last_reply,omitempty"` // the last reply's status
	// Outcome is done, failed or timeout once the deploy finished.
	Outcome    string     `json:"outcome,omitempty"`
	Reason     string     `json:"reason,omitempty"`
	FinishedAt *time.Time `json:"finished_at,omitempty"`
	// Failure is why the device counts as failed ("" = it does not): a failed reply, no
	// reply, or an event saying the device refused or dropped the version later.
	Failure string `json:"failure,omitempty"`
	// SelfRolledBack: the device rolled itself back (deploy.rolled-back event), so the
	// fleet's rollback must not move it again.
	SelfRolledBack bool      `json:"self_rolled_back,omitempty"`
	Rollback       *Rollback `json:"rollback,omitempty"`

	queued bool // a deploy command is queued or out (memory only: a restart sends again)
}

// Rollback is the rollback command a halted rollout sent a device.
type Rollback struct {
	Commands []string   `json:"commands"`
	Version  string     `json:"version,omitempty"` // "" = the device's previous version
	SentAt   *time.Time `json:"sent_at,omitempty"`
	Outcome  string     `json:"outcome,omitempty"` // done, failed or timeout
	Reason   string     `json:"reason,omitempty"`

	queued bool
}

// Rollout is one staged deployment, as kept in the state file and shown by the API.
type Rollout struct {
	ID       string     `json:"id"`
	Owner    string     `json:"owner"` // the serve instance that runs it
	Bundle   Bundle     `json:"bundle"`
	Target   Target     `json:"target"`
	Gates    Gates      `json:"gates"`
	State    string     `json:"state"` // running, halted, done
	Phase    string     `json:"phase,omitempty"`
	Stage    int        `json:"stage"` // index of the current (or last) stage
	Stages   []Stage    `json:"stages"`
	Devices  []*Device  `json:"devices"`
	Skipped  []string   `json:"skipped_offline,omitempty"` // group/all members that were offline at the start
	Failures int        `json:"failures"`
	Reason   string     `json:"reason,omitempty"`
	Evidence []string   `json:"evidence,omitempty"`
	NextCmd  int        `json:"next_command"` // command ids are ro-<id>-<n>; n is never reused
	Created  time.Time  `json:"created"`
	Updated  time.Time  `json:"updated"`
	Finished *time.Time `json:"finished,omitempty"`
	Deadline *time.Time `json:"stage_deadline,omitempty"`

	index map[string]*Device // device id → record (memory only)
}

// Summary is a rollout in a list.
type Summary struct {
	ID       string     `json:"id"`
	Owner    string     `json:"owner"`
	Bundle   string     `json:"bundle"`
	Model    string     `json:"model"`
	Version  string     `json:"version"`
	State    string     `json:"state"`
	Phase    string     `json:"phase,omitempty"`
	Stage    int        `json:"stage"` // 1-based for people
	Stages   int        `json:"stages"`
	Targets  int        `json:"targets"`
	Done     int        `json:"done"`
	Failed   int        `json:"failed"`
	Pending  int        `json:"pending"`
	Reason   string     `json:"reason,omitempty"`
	Created  time.Time  `json:"created"`
	Finished *time.Time `json:"finished,omitempty"`
}

// Summarize counts a rollout's devices.
func (r *Rollout) Summarize() Summary {
	s := Summary{ID: r.ID, Owner: r.Owner, Bundle: r.Bundle.Name, Model: r.Bundle.Model, Version: r.Bundle.Version,
		State: r.State, Phase: r.Phase, Stage: r.Stage + 1, Stages: len(r.Stages), Targets: len(r.Devices),
		Reason: r.Reason, Created: r.Created, Finished: r.Finished}
	for _, d := range r.Devices {
		switch {
		case d.Failure != "":
			s.Failed++
		case d.Outcome == "done":
			s.Done++
		case d.Stage <= r.Stage && r.State == StateRunning:
			s.Pending++
		}
	}
	return s
}

func (r *Rollout) device(id string) *Device {
	if r.index == nil {
		r.index = make(map[string]*Device, len(r.Devices))
		for _, d := range r.Devices {
			r.index[d.ID] = d
		}
	}
	return r.index[id]
}

// stageDevices are the devices stage k deploys to.
func (r *Rollout) stageDevices(k int) []*Device {
	var out []*Device
	for _, d := range r.Devices {
		if d.Stage == k {
			out = append(out, d)
		}
	}
	return out
}

// unfinished are the devices of the stages started so far without an outcome (normally
// the current stage's; after a restart also earlier ones whose outcome was not recorded).
func (r *Rollout) unfinished() []*Device {
	var out []*Device
	for _, d := range r.Devices {
		if d.Stage <= r.Stage && d.Outcome == "" {
			out = append(out, d)
		}
	}
	return out
}

func (r *Rollout) evidence(line string) {
	if len(r.Evidence) < MaxEvidence {
		r.Evidence = append(r.Evidence, line)
	}
}

func clip(s string) string {
	if len(s) > maxReason {
		return s[:maxReason] + "…"
	}
	return s
}

func tp(t time.Time) *time.Time { return &t }
