package rollout

// The engine: rollouts as persisted state machines driven by telemetry and a ticker.
//
//	Start ─▶ stage k: deploy commands ─▶ replies/timeouts ─▶ failure gate ─▶ soak (metrics gate) ─▶ stage k+1 … ─▶ done
//	                                                              └──────────── halt: rollback to every device that took the version
//
// Every transition is written to the state file before the commands it implies go out, so
// a restarted engine never reuses a command id (agents ignore a replayed id) and sends the
// deploy again to every device whose outcome it had not recorded.
//
// Concurrency: one mutex guards the state. Handle (the MQTT client's delivery goroutine),
// the API calls and the ticker take it briefly; none of them talks to the broker while
// holding it. Messages go out through a bounded queue drained by one sender goroutine, so
// the delivery goroutine never waits for an acknowledgement it would itself have to read.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/edge-agent/edge-agent/agent/command"
)

// Publisher sends one MQTT message; for QoS 1 it returns once the broker acknowledged it.
// fleetclient's clients implement it.
type Publisher interface {
	Publish(topic string, qos byte, retained bool, payload []byte) error
}

// Options configure an Engine.
type Options struct {
	Prefix    string // topic prefix (default "edge")
	Instance  string // this serve instance's name: letters, digits, '.', '_', '-'
	Share     string // shared-subscription group for the telemetry; "" = this instance reads it all
	StatePath string // the state file
	Publisher Publisher
	// BundleURL is where the devices download a bundle of the folder now; a resumed
	// rollout takes it up, since the server's address may have changed (nil keeps the URL).
	BundleURL func(name string) string
	// Seal wraps a command body before it is sent (a signed envelope); nil sends it plain.
	Seal   func(body []byte) ([]byte, error)
	Tick   time.Duration // how often deadlines, soaks and retries are checked (default 500ms)
	Queue  int           // messages waiting for the sender (default 4096)
	Logger *slog.Logger
	Now    func() time.Time
}

// Bounds of what the engine keeps from the broker.
const (
	maxFleet   = 1_000_000 // devices with a retained status
	maxRecords = 10_000    // other instances' rollout records
	maxCmdIDs  = 16        // command ids remembered per device (replies to older ones are ignored)
	clockSkew  = 30 * time.Second
)

// Stats are the engine's counters (GET /v1/stats).
type Stats struct {
	Instance string `json:"instance"`
	Share    string `json:"share,omitempty"`
	// Telemetry messages this instance received from devices.
	Replies uint64 `json:"replies"`
	Events  uint64 `json:"events"`
	Metrics uint64 `json:"metrics"`
	// Observations forwarded to the instance that owns the rollout, and those dropped
	// because the send queue was full.
	Forwarded      uint64 `json:"forwarded"`
	ForwardDropped uint64 `json:"forward_dropped"`
	// Observations received from other instances.
	Observations uint64 `json:"observations"`
	Published    uint64 `json:"published"`
	PublishErrs  uint64 `json:"publish_errors"`
	QueueFull    uint64 `json:"queue_full"`
	PersistErrs  uint64 `json:"persist_errors"`
	FleetDropped uint64 `json:"fleet_dropped"` // statuses or records beyond the bounds
	Devices      int    `json:"devices"`       // devices with a retained status
	Rollouts     int    `json:"rollouts"`      // in the state file
	Running      int    `json:"running"`
}

type devStatus struct {
	state  string
	groups []string
	models map[string]string
}

type outMsg struct {
	topic    string
	qos      byte
	retained bool
	payload  []byte
	onErr    func() // called with e.mu held when the publish failed
}

// Engine runs this instance's rollouts.
type Engine struct {
	opt Options
	log *slog.Logger
	now func() time.Time
	out chan outMsg

	mu         sync.Mutex
	rollouts   []*Rollout // creation order
	byID       map[string]*Rollout
	fleet      map[string]devStatus
	records    map[string]Record // other instances' rollouts
	index      map[string][]string
	indexDirty bool
	latest     map[string]map[string]Observation // rollout → device → latest metrics of its model
	bases      map[string]map[string]Observation // rollout → device → metrics at the soak's start
	dirty      bool
	stats      Stats
}

// New loads the state file and takes over the rollouts in it: running ones resume when Run
// starts (devices without a recorded outcome get the deploy again, with a new id; a soak
// starts over), and this instance becomes their owner.
func New(opt Options) (*Engine, error) {
	if opt.Prefix == "" {
		opt.Prefix = "edge"
	}
	if !instanceRE.MatchString(opt.Instance) {
		return nil, fmt.Errorf("instance name %q: use 1-64 letters, digits, '.', '_' and '-'", opt.Instance)
	}
	if opt.Share != "" && !ValidName(opt.Share) {
		return nil, fmt.Errorf("share group %q: use letters, digits, '.', '_' and '-'", opt.Share)
	}
	if opt.Publisher == nil || opt.StatePath == "" {
		return nil, fmt.Errorf("rollout engine needs a publisher and a state file")
	}
	if opt.Tick <= 0 {
		opt.Tick = 500 * time.Millisecond
	}
	if opt.Queue <= 0 {
		opt.Queue = 4096
	}
	if opt.Logger == nil {
		opt.Logger = slog.Default()
	}
	if opt.Now == nil {
		opt.Now = time.Now
	}
	rs, err := loadState(opt.StatePath)
	if err != nil {
		return nil, err
	}
	e := &Engine{
		opt: opt, log: opt.Logger, now: opt.Now, out: make(chan outMsg, opt.Queue),
		byID: map[string]*Rollout{}, fleet: map[string]devStatus{}, records: map[string]Record{},
		latest: map[string]map[string]Observation{}, bases: map[string]map[string]Observation{},
		indexDirty: true, stats: Stats{Instance: opt.Instance, Share: opt.Share},
	}
	now := e.now()
	for _, r := range rs {
		e.rollouts = append(e.rollouts, r)
		e.byID[r.ID] = r
		r.Owner = opt.Instance
		if opt.BundleURL != nil {
			r.Bundle.URL = opt.BundleURL(r.Bundle.Name)
		}
		if r.State != StateRunning {
			continue
		}
		switch {
		case r.Phase == PhaseSoaking && len(r.unfinished()) == 0: // the baselines were in memory: soak again
			r.Stages[r.Stage].SoakUntil = tp(now.Add(time.Duration(r.Gates.Soak)))
			e.startSoak(r)
		default: // devices without a recorded outcome get the deploy again
			r.Stages[r.Stage].SoakUntil = nil
			r.Phase = PhaseDeploying
			r.Deadline = tp(now.Add(time.Duration(r.Gates.StageTimeout)))
		}
		e.log.Info("resuming rollout", "id", r.ID, "bundle", r.Bundle.Name, "stage", r.Stage+1, "phase", r.Phase)
		e.publishRecord(r)
		e.changed(r)
	}
	if e.dirty {
		if err := e.save(); err != nil {
			return nil, err
		}
	}
	return e, nil
}

// ControlTopics are the topics this instance must read itself (without a shared
// subscription): the retained statuses and rollout records, and its observation inbox;
// without Share also the telemetry.
func (e *Engine) ControlTopics() []string {
	p := e.opt.Prefix
	t := []string{p + "/+/status", p + "/fleet/rollouts/+", e.obsTopic(e.opt.Instance)}
	if e.opt.Share == "" {
		t = append(t, e.telemetry()...)
	}
	return t
}

// SharedTopics are the telemetry topics as shared subscriptions ($share/<group>/...), nil
// without Share.
func (e *Engine) SharedTopics() []string {
	if e.opt.Share == "" {
		return nil
	}
	var t []string
	for _, f := range e.telemetry() {
		t = append(t, "$share/"+e.opt.Share+"/"+f)
	}
	return t
}

func (e *Engine) telemetry() []string {
	p := e.opt.Prefix
	return []string{p + "/+/cmd/reply", p + "/+/events", p + "/+/metrics"}
}

func (e *Engine) obsTopic(instance string) string {
	return e.opt.Prefix + "/fleet/serve/" + instance + "/obs"
}

// Run sends what the engine queues and drives deadlines, soaks and retries until ctx ends.
func (e *Engine) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); e.send(ctx) }()
	t := time.NewTicker(e.opt.Tick)
	defer t.Stop()
	e.tick()
	for {
		select {
		case <-ctx.Done():
			wg.Wait()
			return nil
		case <-t.C:
			e.tick()
		}
	}
}

func (e *Engine) send(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case m := <-e.out:
			err := e.opt.Publisher.Publish(m.topic, m.qos, m.retained, m.payload)
			e.mu.Lock()
			if err != nil {
				e.stats.PublishErrs++
				if m.onErr != nil {
					m.onErr()
				}
			} else {
				e.stats.Published++
			}
			e.mu.Unlock()
			if err != nil {
				e.log.Warn("publish failed", "topic", m.topic, "err", err)
			}
		}
	}
}

// enqueue hands a message to the sender without blocking; false when the queue is full.
// Callers hold e.mu.
func (e *Engine) enqueue(m outMsg) bool {
	select {
	case e.out <- m:
		return true
	default:
		e.stats.QueueFull++
		return false
	}
}

func (e *Engine) tick() {
	e.mu.Lock()
	defer e.unlock()
	for _, r := range e.rollouts {
		switch r.State {
		case StateRunning:
			e.step(r)
		case StateHalted:
			e.retryRollbacks(r)
		}
	}
}

// unlock writes the state file if something changed, then releases e.mu.
func (e *Engine) unlock() {
	if e.dirty {
		if err := e.save(); err != nil {
			e.log.Error("state file not written; retried at the next change", "err", err)
		}
	}
	e.mu.Unlock()
}

func (e *Engine) changed(r *Rollout) {
	r.Updated = e.now().UTC()
	e.dirty = true
}

// save writes the state file now, keeping at most MaxKept finished rollouts. Callers hold e.mu.
func (e *Engine) save() error {
	finished := 0
	for _, r := range e.rollouts {
		if r.State != StateRunning {
			finished++
		}
	}
	if finished > MaxKept {
		kept := e.rollouts[:0]
		for _, r := range e.rollouts {
			if r.State != StateRunning && finished > MaxKept {
				finished--
				delete(e.byID, r.ID)
				// Clear the retained record so no instance forwards for it any more.
				e.enqueue(outMsg{topic: e.opt.Prefix + "/fleet/rollouts/" + r.ID, qos: 1, retained: true})
				continue
			}
			kept = append(kept, r)
		}
		clear(e.rollouts[len(kept):])
		e.rollouts = kept
	}
	if err := saveState(e.opt.StatePath, e.opt.Instance, e.rollouts); err != nil {
		e.stats.PersistErrs++
		return err
	}
	e.dirty = false
	return nil
}

// Start begins a rollout of b to the targets spec names, from the statuses seen so far.
func (e *Engine) Start(spec Spec, b Bundle) (Rollout, error) {
	if err := spec.Check(); err != nil {
		return Rollout{}, err
	}
	gates, err := spec.Gates.Resolve()
	if err != nil {
		return Rollout{}, err
	}
	e.mu.Lock()
	defer e.unlock()
	running := 0
	for _, r := range e.rollouts {
		if r.State == StateRunning {
			running++
		}
	}
	if running >= MaxRunning {
		return Rollout{}, fmt.Errorf("%w: %d rollouts are running, the most this server runs at once: wait for one to finish or halt one", ErrConflict, running)
	}
	targets, skipped, err := e.targets(spec)
	if err != nil {
		return Rollout{}, err
	}
	for _, d := range targets {
		if ids := e.rolloutsOf(d); len(ids) > 0 {
			return Rollout{}, fmt.Errorf("%w: device %s is in running rollout %s: halt it or wait until it finishes", ErrConflict, d, ids[0])
		}
	}
	now := e.now().UTC()
	r := &Rollout{ID: e.newID(), Owner: e.opt.Instance, Bundle: b,
		Target: Target{Group: spec.Group, Devices: spec.Devices, All: spec.All},
		Gates:  gates, State: StateRunning, Phase: PhaseDeploying, Skipped: skipped, Created: now, Updated: now}
	order := Order(r.ID, targets)
	sizes := StageSizes(spec.Stages, len(order))
	for k, p := range spec.Stages {
		r.Stages = append(r.Stages, Stage{Percent: p, Devices: sizes[k]})
	}
	k := 0
	for i, d := range order {
		for i >= sizes[k] {
			k++
		}
		r.Devices = append(r.Devices, &Device{ID: d, Stage: k})
	}
	e.rollouts = append(e.rollouts, r)
	e.byID[r.ID] = r
	if err := e.save(); err != nil {
		e.rollouts = e.rollouts[:len(e.rollouts)-1]
		delete(e.byID, r.ID)
		return Rollout{}, fmt.Errorf("rollout not started: %w", err)
	}
	e.indexDirty = true
	e.log.Info("rollout started", "id", r.ID, "bundle", b.Name, "model", b.Model, "version", b.Version, "targets", len(order), "stages", sizes)
	e.publishRecord(r) // before any command: the other instances must know whose devices these are
	e.startStage(r)
	e.step(r)
	return copyRollout(r), nil
}

// targets resolves a spec against the retained statuses: a group or all means the online
// members (the offline ones are returned as skipped); named devices must have a status.
func (e *Engine) targets(spec Spec) (targets, skipped []string, err error) {
	switch {
	case len(spec.Devices) > 0:
		for _, d := range spec.Devices {
			if _, ok := e.fleet[d]; !ok {
				return nil, nil, fmt.Errorf("%w: device %s has no retained status under %s/%s/status: check the name and that it ever connected (edgectl status)", ErrInvalid, d, e.opt.Prefix, d)
			}
		}
		return slices.Clone(spec.Devices), nil, nil
	default:
		for _, d := range slices.Sorted(maps.Keys(e.fleet)) {
			st := e.fleet[d]
			if spec.Group != "" && !slices.Contains(st.groups, spec.Group) {
				continue
			}
			if st.state == "online" {
				targets = append(targets, d)
			} else {
				skipped = append(skipped, d)
			}
		}
	}
	what := "the fleet"
	if spec.Group != "" {
		what = "group " + spec.Group
	}
	switch {
	case len(targets) == 0:
		return nil, nil, fmt.Errorf("%w: no online device in %s (%d offline): check edgectl status and the devices' mqtt.groups", ErrInvalid, what, len(skipped))
	case len(targets) > MaxTargets:
		return nil, nil, fmt.Errorf("%w: %d devices in %s; at most %d in one rollout", ErrInvalid, len(targets), what, MaxTargets)
	}
	return targets, skipped, nil
}

func (e *Engine) newID() string {
	for {
		var b [4]byte
		rand.Read(b[:])
		id := hex.EncodeToString(b[:]) + "-" + e.opt.Instance
		if _, dup := e.byID[id]; !dup {
			return id
		}
	}
}

// Halt stops a running rollout and rolls back every device that took its version.
func (e *Engine) Halt(id, reason string) (Rollout, error) {
	e.mu.Lock()
	defer e.unlock()
	r := e.byID[id]
	if r == nil {
		if rec, ok := e.records[id]; ok {
			return Rollout{}, fmt.Errorf("%w: rollout %s is run by serve instance %s: halt it there", ErrNotFound, id, rec.Owner)
		}
		return Rollout{}, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	if r.State != StateRunning {
		return Rollout{}, fmt.Errorf("%w: rollout %s is %s already", ErrConflict, id, r.State)
	}
	why := "halted by the operator"
	if reason = strings.TrimSpace(reason); reason != "" {
		why += ": " + clip(reason)
	}
	e.halt(r, why)
	return copyRollout(r), nil
}

// Get returns one of this instance's rollouts.
func (e *Engine) Get(id string) (Rollout, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if r := e.byID[id]; r != nil {
		return copyRollout(r), nil
	}
	if rec, ok := e.records[id]; ok {
		return Rollout{}, fmt.Errorf("%w: rollout %s is run by serve instance %s: ask it", ErrNotFound, id, rec.Owner)
	}
	return Rollout{}, fmt.Errorf("%w: %s", ErrNotFound, id)
}

// List summarises this instance's rollouts, then the other instances' (from their records),
// oldest first.
func (e *Engine) List() []Summary {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make([]Summary, 0, len(e.rollouts)+len(e.records))
	for _, r := range e.rollouts {
		out = append(out, r.Summarize())
	}
	for _, id := range slices.Sorted(maps.Keys(e.records)) {
		rec := e.records[id]
		if _, mine := e.byID[id]; mine {
			continue
		}
		out = append(out, Summary{ID: rec.ID, Owner: rec.Owner, Model: rec.Model, Version: rec.Version, State: rec.State,
			Phase: rec.Phase, Stage: rec.Stage + 1, Targets: len(rec.Devices)})
	}
	return out
}

// Stats returns the counters.
func (e *Engine) Stats() Stats {
	e.mu.Lock()
	defer e.mu.Unlock()
	s := e.stats
	s.Devices, s.Rollouts = len(e.fleet), len(e.rollouts)
	for _, r := range e.rollouts {
		if r.State == StateRunning {
			s.Running++
		}
	}
	return s
}

// Devices returns the number of devices with a retained status seen so far.
func (e *Engine) Devices() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.fleet)
}

func copyRollout(r *Rollout) Rollout {
	b, _ := json.Marshal(r)
	var c Rollout
	json.Unmarshal(b, &c)
	return c
}

// step drives a running rollout as far as it can go now. Callers hold e.mu.
func (e *Engine) step(r *Rollout) {
	for r.State == StateRunning {
		now := e.now().UTC()
		st := &r.Stages[r.Stage]
		switch r.Phase {
		case PhaseSoaking:
			if r.Failures > r.Gates.MaxFailures {
				e.halt(r, e.failureReason(r))
				return
			}
			if st.SoakUntil != nil && now.Before(*st.SoakUntil) {
				return
			}
			st.FinishedAt = tp(now)
			e.advance(r)
		default:
			r.Phase = PhaseDeploying
			devs := r.stageDevices(r.Stage)
			if open := r.unfinished(); len(open) > 0 {
				if r.Deadline == nil || now.Before(*r.Deadline) {
					e.sendDeploys(r, open)
					return
				}
				for _, d := range open {
					d.Outcome, d.FinishedAt = "timeout", tp(now)
					e.fail(r, d, fmt.Sprintf("no done or failed reply within the stage timeout %v", time.Duration(r.Gates.StageTimeout)))
				}
			}
			st.DeployedAt = tp(now)
			r.Deadline = nil
			e.changed(r)
			if r.Failures > r.Gates.MaxFailures {
				e.halt(r, e.failureReason(r))
				return
			}
			if r.Gates.Soak > 0 && len(devs) > 0 {
				r.Phase = PhaseSoaking
				st.SoakUntil = tp(now.Add(time.Duration(r.Gates.Soak)))
				e.startSoak(r)
				e.publishRecord(r)
				e.log.Info("rollout stage deployed; soaking", "id", r.ID, "stage", r.Stage+1, "until", st.SoakUntil)
				return
			}
			st.FinishedAt = tp(now)
			e.advance(r)
		}
	}
}

func (e *Engine) failureReason(r *Rollout) string {
	return fmt.Sprintf("stage %d (%g%%): %d failed device(s), more than max_failures %d", r.Stage+1, r.Stages[r.Stage].Percent, r.Failures, r.Gates.MaxFailures)
}

// advance moves to the next stage, or finishes the rollout after the last.
func (e *Engine) advance(r *Rollout) {
	if r.Stage == len(r.Stages)-1 {
		r.State, r.Phase, r.Finished, r.Deadline = StateDone, "", tp(e.now().UTC()), nil
		e.finished(r)
		e.log.Info("rollout done", "id", r.ID, "bundle", r.Bundle.Name, "devices", len(r.Devices))
		return
	}
	r.Stage++
	e.startStage(r)
}

func (e *Engine) startStage(r *Rollout) {
	now := e.now().UTC()
	r.Stages[r.Stage].StartedAt = tp(now)
	r.Phase = PhaseDeploying
	r.Deadline = tp(now.Add(time.Duration(r.Gates.StageTimeout)))
	e.changed(r)
	e.publishRecord(r)
	e.log.Info("rollout stage started", "id", r.ID, "stage", r.Stage+1, "percent", r.Stages[r.Stage].Percent, "devices", len(r.stageDevices(r.Stage)))
}

// startSoak takes each deployed device's latest figures of the new version as the soak's
// baseline (a device without any gets its first message in the soak instead).
func (e *Engine) startSoak(r *Rollout) {
	base := map[string]Observation{}
	for id, o := range e.latest[r.ID] {
		if d := r.device(id); d != nil && d.Outcome == "done" && o.Version == r.Bundle.Version {
			base[id] = o
		}
	}
	e.bases[r.ID] = base
}

// sendDeploys sends the deploy command to each device of devs that has no outcome and no
// command out. The ids are written to the state file before the commands leave.
func (e *Engine) sendDeploys(r *Rollout, devs []*Device) {
	var batch []*Device
	for _, d := range devs {
		if d.Outcome == "" && !d.queued {
			batch = append(batch, d)
		}
	}
	if len(batch) == 0 {
		return
	}
	now := e.now().UTC()
	ids := make([]string, len(batch))
	for i, d := range batch {
		ids[i] = CommandID(r.ID, r.NextCmd)
		r.NextCmd++
		if len(d.Commands) == 0 {
			d.From = e.fleet[d.ID].models[r.Bundle.Model]
		}
		d.Commands = append(d.Commands, ids[i])
		if len(d.Commands) > maxCmdIDs {
			d.Commands = d.Commands[len(d.Commands)-maxCmdIDs:]
		}
		d.SentAt = tp(now)
		d.queued = true
	}
	e.changed(r)
	if err := e.save(); err != nil {
		for _, d := range batch {
			d.queued = false // not sent; the next tick tries again
		}
		e.log.Error("state file not written; deploy commands held back", "id", r.ID, "err", err)
		return
	}
	args := map[string]string{"url": r.Bundle.URL, "sha256": r.Bundle.SHA256}
	for i, d := range batch {
		e.sendCommand(d.ID, ids[i], "deploy", args, time.Duration(r.Gates.StageTimeout), func() {
			if d.Outcome == "" {
				d.queued = false // the next tick sends it again, with a new id
			}
		})
	}
}

// sendCommand builds, seals and queues a command to one device; unsent runs (with e.mu
// held) when it could not be built or queued now, or when the sender's publish fails.
// Callers hold e.mu.
func (e *Engine) sendCommand(dev, id, typ string, args any, ttl time.Duration, unsent func()) {
	ttl = min(max(ttl, time.Minute), 24*time.Hour)
	a, _ := json.Marshal(args)
	now := e.now().UTC()
	body, err := json.Marshal(command.Command{ID: id, Type: typ, Args: a, IssuedAt: now, Expires: now.Add(ttl), Target: command.ForDevice(dev)})
	if err == nil && e.opt.Seal != nil {
		body, err = e.opt.Seal(body)
	}
	if err != nil {
		e.log.Error("command not built", "device", dev, "id", id, "err", err)
		unsent()
		return
	}
	if !e.enqueue(outMsg{topic: e.opt.Prefix + "/" + dev + "/cmd", qos: 1, payload: body, onErr: unsent}) {
		unsent()
	}
}

// fail counts a device as failed once. Callers hold e.mu.
func (e *Engine) fail(r *Rollout, d *Device, why string) {
	if d.Failure != "" {
		return
	}
	d.Failure = clip(why)
	r.Failures++
	r.evidence(d.ID + ": " + d.Failure)
	e.changed(r)
	e.log.Warn("rollout device failed", "id", r.ID, "device", d.ID, "why", why)
}

// halt stops a rollout and rolls back every device that replied done (and did not roll
// itself back). Callers hold e.mu.
func (e *Engine) halt(r *Rollout, reason string) {
	if r.State != StateRunning {
		return
	}
	r.State, r.Phase, r.Reason, r.Finished, r.Deadline = StateHalted, "", clip(reason), tp(e.now().UTC()), nil
	e.log.Warn("rollout halted", "id", r.ID, "reason", reason)
	e.finished(r)
	var back []*Device
	for _, d := range r.Devices {
		if d.Outcome == "done" && e.needsRollback(r, d) {
			back = append(back, d)
		}
	}
	e.sendRollbacks(r, back)
}

// finished records the end of a rollout and forgets its metrics.
func (e *Engine) finished(r *Rollout) {
	delete(e.latest, r.ID)
	delete(e.bases, r.ID)
	e.indexDirty = true
	e.changed(r)
	e.publishRecord(r)
}

func (e *Engine) needsRollback(r *Rollout, d *Device) bool {
	return d.Rollback == nil && !d.SelfRolledBack && d.From != r.Bundle.Version
}

// sendRollbacks sends rollback {"model", "version": the device's version before the
// rollout} (or without version, the previous one, when it was not known).
func (e *Engine) sendRollbacks(r *Rollout, devs []*Device) {
	if len(devs) == 0 {
		return
	}
	now := e.now().UTC()
	ids := make([]string, len(devs))
	for i, d := range devs {
		if d.Rollback == nil {
			d.Rollback = &Rollback{Version: d.From}
		}
		ids[i] = CommandID(r.ID, r.NextCmd)
		r.NextCmd++
		d.Rollback.Commands = append(d.Rollback.Commands, ids[i])
		if len(d.Rollback.Commands) > maxCmdIDs {
			d.Rollback.Commands = d.Rollback.Commands[len(d.Rollback.Commands)-maxCmdIDs:]
		}
		d.Rollback.SentAt = tp(now)
		d.Rollback.queued = true
	}
	e.changed(r)
	if err := e.save(); err != nil {
		for _, d := range devs {
			d.Rollback.queued = false
		}
		e.log.Error("state file not written; rollback commands held back", "id", r.ID, "err", err)
		return
	}
	for i, d := range devs {
		args := map[string]string{"model": r.Bundle.Model}
		if d.Rollback.Version != "" {
			args["version"] = d.Rollback.Version
		}
		rb := d.Rollback
		e.sendCommand(d.ID, ids[i], "rollback", args, time.Duration(r.Gates.StageTimeout), func() {
			if rb.Outcome == "" {
				rb.queued = false
			}
		})
	}
}

// retryRollbacks sends again the rollbacks of a halted rollout that were not sent (a
// publish failed, or the server restarted), and gives up on those unanswered for the stage
// timeout. Callers hold e.mu.
func (e *Engine) retryRollbacks(r *Rollout) {
	now := e.now().UTC()
	var again []*Device
	for _, d := range r.Devices {
		rb := d.Rollback
		switch {
		case rb == nil || rb.Outcome != "":
		case rb.queued && rb.SentAt != nil && now.Sub(*rb.SentAt) > time.Duration(r.Gates.StageTimeout):
			rb.Outcome, rb.Reason = "timeout", fmt.Sprintf("no reply within %v", time.Duration(r.Gates.StageTimeout))
			e.changed(r)
		case !rb.queued:
			again = append(again, d)
		}
	}
	e.sendRollbacks(r, again)
}

func (e *Engine) publishRecord(r *Rollout) {
	rec := Record{Schema: RecordSchema, ID: r.ID, Owner: r.Owner, Model: r.Bundle.Model, Version: r.Bundle.Version,
		State: r.State, Phase: r.Phase, Stage: r.Stage, Devices: make([]string, len(r.Devices)), Updated: e.now().UTC()}
	for i, d := range r.Devices {
		rec.Devices[i] = d.ID
	}
	b, _ := json.Marshal(rec)
	e.enqueue(outMsg{topic: e.opt.Prefix + "/fleet/rollouts/" + r.ID, qos: 1, retained: true, payload: b})
}

// Handle takes one message from the broker (any topic of ControlTopics or SharedTopics).
func (e *Engine) Handle(topic string, payload []byte) {
	rest, ok := strings.CutPrefix(topic, e.opt.Prefix+"/")
	if !ok {
		return
	}
	if id, ok := strings.CutPrefix(rest, "fleet/rollouts/"); ok {
		e.handleRecord(id, payload)
		return
	}
	if rest == "fleet/serve/"+e.opt.Instance+"/obs" {
		e.handleObs(payload)
		return
	}
	dev, kind, ok := strings.Cut(rest, "/")
	if !ok || !ValidName(dev) || dev == "fleet" || dev == "group" || dev == "all" {
		return
	}
	switch kind {
	case "status":
		e.handleStatus(dev, payload)
	case "cmd/reply":
		o, ok := parseReply(dev, payload)
		e.mu.Lock()
		defer e.unlock()
		e.stats.Replies++
		if ok {
			e.route(o)
		}
	case "events":
		obs := parseEvents(dev, payload)
		e.mu.Lock()
		defer e.unlock()
		e.stats.Events++
		for _, o := range obs {
			e.route(o)
		}
	case "metrics":
		obs := parseMetrics(dev, payload)
		e.mu.Lock()
		defer e.unlock()
		e.stats.Metrics++
		for _, o := range obs {
			e.route(o)
		}
	}
}

func (e *Engine) handleStatus(dev string, p []byte) {
	var s struct {
		State  string   `json:"state"`
		Groups []string `json:"groups"`
		Models []struct {
			Name    string `json:"name"`
			Version string `json:"version"`
		} `json:"models"`
	}
	ok := len(p) > 0 && json.Unmarshal(p, &s) == nil
	e.mu.Lock()
	defer e.mu.Unlock()
	if !ok { // a cleared retained status, or junk
		delete(e.fleet, dev)
		return
	}
	if _, known := e.fleet[dev]; !known && len(e.fleet) >= maxFleet {
		e.stats.FleetDropped++
		return
	}
	st := devStatus{state: s.State, groups: s.Groups, models: map[string]string{}}
	for _, m := range s.Models {
		st.models[m.Name] = m.Version
	}
	e.fleet[dev] = st
}

func (e *Engine) handleRecord(id string, p []byte) {
	var rec Record
	ok := len(p) > 0 && json.Unmarshal(p, &rec) == nil && rec.ID == id && rec.Schema == RecordSchema
	e.mu.Lock()
	defer e.mu.Unlock()
	if !ok {
		if _, had := e.records[id]; had {
			delete(e.records, id)
			e.indexDirty = true
		}
		return
	}
	if rec.Owner == e.opt.Instance {
		return // our own
	}
	if _, known := e.records[id]; !known && len(e.records) >= maxRecords {
		e.stats.FleetDropped++
		return
	}
	e.records[id] = rec
	e.indexDirty = true
}

func (e *Engine) handleObs(p []byte) {
	var o Observation
	if json.Unmarshal(p, &o) != nil || o.Schema != ObservationSchema || !ValidName(o.Device) {
		return
	}
	e.mu.Lock()
	defer e.unlock()
	e.stats.Observations++
	if r := e.byID[o.Rollout]; r != nil {
		e.apply(r, o)
	}
}

// rolloutsOf returns the running rollouts (this instance's and the others') that target
// dev. Callers hold e.mu.
func (e *Engine) rolloutsOf(dev string) []string {
	if e.indexDirty {
		e.index = map[string][]string{}
		for _, r := range e.rollouts {
			if r.State == StateRunning {
				for _, d := range r.Devices {
					e.index[d.ID] = append(e.index[d.ID], r.ID)
				}
			}
		}
		for id, rec := range e.records {
			if _, mine := e.byID[id]; !mine && rec.active() {
				for _, d := range rec.Devices {
					e.index[d] = append(e.index[d], id)
				}
			}
		}
		e.indexDirty = false
	}
	return e.index[dev]
}

// route applies an observation to this instance's rollout, or forwards it to the instance
// that owns the rollout. Callers hold e.mu.
func (e *Engine) route(o Observation) {
	if o.Kind == KindReply {
		e.routeTo(o.Rollout, o)
		return
	}
	for _, id := range e.rolloutsOf(o.Device) {
		model := e.records[id].Model
		if r := e.byID[id]; r != nil {
			model = r.Bundle.Model
		}
		if o.Model != model {
			continue // another model of the device: no gate reads it
		}
		o.Rollout = id
		e.routeTo(id, o)
	}
}

func (e *Engine) routeTo(id string, o Observation) {
	if r := e.byID[id]; r != nil {
		e.apply(r, o)
		return
	}
	if e.opt.Share == "" {
		return // every instance reads all telemetry itself: nothing to forward
	}
	owner := ownerOf(id)
	if rec, ok := e.records[id]; ok {
		owner = rec.Owner
	}
	if owner == "" || owner == e.opt.Instance || !instanceRE.MatchString(owner) {
		return
	}
	o.From = e.opt.Instance
	b, _ := json.Marshal(o)
	if e.enqueue(outMsg{topic: e.obsTopic(owner), qos: 1, payload: b}) {
		e.stats.Forwarded++
	} else {
		e.stats.ForwardDropped++
	}
}

// apply updates a rollout of this instance with an observation. Callers hold e.mu.
func (e *Engine) apply(r *Rollout, o Observation) {
	d := r.device(o.Device)
	if d == nil {
		return
	}
	switch o.Kind {
	case KindReply:
		e.applyReply(r, d, o)
	case KindEvent:
		e.applyEvent(r, d, o)
	case KindMetrics:
		e.applyMetrics(r, d, o)
	}
}

func (e *Engine) applyReply(r *Rollout, d *Device, o Observation) {
	now := e.now().UTC()
	if slices.Contains(d.Commands, o.ID) {
		if d.Outcome != "" {
			return // the first outcome counts; a later command's is the same deploy again
		}
		switch o.Status {
		case command.StatusAccepted, command.StatusProgress:
			d.Status = o.Status
			return
		case command.StatusDone:
			d.Status, d.Outcome, d.FinishedAt = o.Status, "done", tp(now)
			e.changed(r)
			if r.State == StateHalted && e.needsRollback(r, d) { // done after a halt: undo it too
				e.sendRollbacks(r, []*Device{d})
			}
		case command.StatusFailed:
			d.Status, d.Outcome, d.Reason, d.FinishedAt = o.Status, "failed", o.Reason, tp(now)
			e.fail(r, d, "deploy failed: "+o.Reason)
		default:
			return
		}
		e.step(r)
		return
	}
	if rb := d.Rollback; rb != nil && rb.Outcome == "" && slices.Contains(rb.Commands, o.ID) {
		switch o.Status {
		case command.StatusDone:
			rb.Outcome = "done"
		case command.StatusFailed:
			rb.Outcome, rb.Reason = "failed", o.Reason
			e.log.Warn("rollback failed", "id", r.ID, "device", d.ID, "reason", o.Reason)
		default:
			return
		}
		e.changed(r)
	}
}

// applyEvent counts a device as failed for a deploy event about the rollout's version after
// its deploy was sent: canary failed, probation failed, refused, or rolled back from it.
func (e *Engine) applyEvent(r *Rollout, d *Device, o Observation) {
	if r.State != StateRunning || o.Model != r.Bundle.Model || d.SentAt == nil || d.Failure != "" {
		return
	}
	if !o.TS.IsZero() && o.TS.Before(d.SentAt.Add(-clockSkew)) {
		return // from before the deploy (a backlog sent after a reconnect)
	}
	switch o.Type {
	case "deploy.canary-failed", "deploy.probation-failed", "deploy.refused":
		if o.Version != r.Bundle.Version {
			return
		}
	case "deploy.rolled-back":
		if o.Version == r.Bundle.Version || d.Outcome != "done" {
			return
		}
		d.SelfRolledBack = true
	default:
		return
	}
	e.fail(r, d, o.Type+": "+o.Message)
	e.step(r)
}

// applyMetrics keeps the device's latest figures of the rollout's model and, while the
// rollout soaks, holds them to the error-rate and latency gates.
func (e *Engine) applyMetrics(r *Rollout, d *Device, o Observation) {
	if r.State != StateRunning || o.Model != r.Bundle.Model {
		return
	}
	if e.latest[r.ID] == nil {
		e.latest[r.ID] = map[string]Observation{}
	}
	e.latest[r.ID][d.ID] = o
	if r.Phase != PhaseSoaking || d.Outcome != "done" || d.SelfRolledBack || o.Version != r.Bundle.Version {
		return
	}
	if e.bases[r.ID] == nil {
		e.bases[r.ID] = map[string]Observation{}
	}
	base, ok := e.bases[r.ID][d.ID]
	frames := func(x Observation) uint64 { return x.Results + x.Errors }
	if !ok || base.Version != o.Version || frames(o) < frames(base) || o.Errors < base.Errors {
		e.bases[r.ID][d.ID] = o // first figures in the soak, or the counters restarted
		return
	}
	n, errs := frames(o)-frames(base), o.Errors-base.Errors
	stage := fmt.Sprintf("stage %d (%g%%) soak", r.Stage+1, r.Stages[r.Stage].Percent)
	if n >= MinFrames {
		if rate := float64(errs) / float64(n); rate > r.Gates.MaxErrorRate {
			why := fmt.Sprintf("error rate %.3f (%d of %d frames) of %s %s is above max_error_rate %g", rate, errs, n, o.Model, o.Version, r.Gates.MaxErrorRate)
			e.fail(r, d, why)
			e.halt(r, stage+": "+d.ID+": "+why)
			return
		}
	}
	if max := r.Gates.MaxP95LatencyMS; max > 0 {
		if l, which := o.latencyMS(); l > max {
			why := fmt.Sprintf("%s latency %.1f ms of %s %s is above max_p95_latency_ms %g", which, l, o.Model, o.Version, max)
			e.fail(r, d, why)
			e.halt(r, stage+": "+d.ID+": "+why)
		}
	}
}
