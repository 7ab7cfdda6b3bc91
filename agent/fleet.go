package agent

// The fleet side of the wiring: the durable outbox that every result and event is stored in
// before anyone is told it was accepted, and the MQTT link that drains it to the broker.
//
//	pipeline ──Put──▶ outbox "results" ──Read/Ack──▶ link ──QoS 1──▶ <prefix>/<device>/results
//	health, deploy, outbox drops ──▶ event queue ──▶ outbox "events" ──▶ link ──▶ …/events
//	stats (every metrics_every) ──────────────────────────────────────▶ link ──QoS 0──▶ …/metrics

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/edge-agent/edge-agent/agent/command"
	"github.com/edge-agent/edge-agent/agent/config"
	"github.com/edge-agent/edge-agent/agent/health"
	"github.com/edge-agent/edge-agent/agent/link"
	"github.com/edge-agent/edge-agent/agent/outbox"
	"github.com/edge-agent/edge-agent/agent/pipeline"
	"github.com/edge-agent/edge-agent/agent/result"
	"github.com/edge-agent/edge-agent/agent/state"
)

// Stream names in the outbox and topic suffixes on the broker.
const (
	streamResults = "results"
	streamEvents  = "events"
	streamSamples = "samples" // inputs and outputs captured for retraining (capture command)
)

// Caps of the samples stream: captures are rare and large, so a count and a byte cap keep
// them from crowding the disk; the oldest go first.
const (
	maxSamples      = 1000
	maxSamplesBytes = 64 << 20
)

// eventQueue bounds events waiting to be stored; a burst beyond it is dropped and counted
// rather than blocking the part that reported it.
const eventQueue = 256

type fleet struct {
	cfg     *config.Config
	log     *slog.Logger
	health  *health.Tracker
	ob      *outbox.Outbox
	results *outbox.Stream
	events  *outbox.Stream
	samples *outbox.Stream
	link    *link.Link
	state   *state.Store    // command ids against replays (nil with no router)
	router  *command.Router // fleet commands (set by Agent.startCommands before run)
	started time.Time
	status  func() map[string]any
	// dropBase is the results stream's drop totals when the outbox was opened.
	dropBase outbox.Dropped

	evq       chan result.Event
	evDropped atomic.Uint64
	recent    recentEvents // the status page's latest events (statuswire.go)
	stopOnce  sync.Once
}

// openFleet opens the outbox and builds the link (which connects only when Run starts).
func openFleet(cfg *config.Config, log *slog.Logger, h *health.Tracker) (*fleet, error) {
	o := cfg.Outbox
	opts := outbox.Options{
		Streams: map[string]outbox.Caps{
			streamResults: {MaxCount: o.MaxResults, MaxBytes: int64(o.MaxBytes), MaxAge: o.MaxAge, Policy: outbox.Policy(o.Policy)},
			streamEvents:  {MaxCount: o.MaxEvents, MaxBytes: int64(o.MaxEvents) * 4096, MaxAge: o.MaxAge, Policy: outbox.DropOldest},
			streamSamples: {MaxCount: maxSamples, MaxBytes: maxSamplesBytes, MaxAge: o.MaxAge, Policy: outbox.DropOldest},
		},
		MaxWait: o.CommitWait,
		Logger:  log.With("part", "outbox"),
	}
	ob, err := outbox.Open(o.Path, opts)
	if errors.Is(err, outbox.ErrDamaged) {
		// A damaged file must not keep the agent from serving (and storing new results):
		// keep it for inspection under another name, start a new one and salvage into it.
		if opts.SalvageFrom, err = moveAside(log, "outbox", o.Path, err); err != nil {
			return nil, err
		}
		opts.Recognise = recognise
		ob, err = outbox.Open(o.Path, opts)
	}
	if err != nil {
		return nil, fmt.Errorf("outbox: %w", err)
	}
	st := ob.Stats()
	rs := st.Streams[streamResults]
	log.Info("outbox open", "file", o.Path, "results_waiting", rs.Count, "events_waiting", st.Streams[streamEvents].Count,
		"next_seq", rs.LastSeq+1, "dropped_total", rs.Dropped.Oldest+rs.Dropped.Newest+rs.Dropped.Age, "file_bytes", st.FileBytes)
	f := &fleet{
		cfg: cfg, log: log, health: h, ob: ob,
		results:  ob.Stream(streamResults),
		events:   ob.Stream(streamEvents),
		samples:  ob.Stream(streamSamples),
		started:  time.Now(),
		dropBase: rs.Dropped,
		evq:      make(chan result.Event, eventQueue),
	}
	if sv := ob.SalvageReport(); sv != nil {
		f.reportDamaged("outbox-damaged", "outbox", salvageMessage(sv), map[string]any{"moved_to": sv.From, "salvage": sv})
	}
	lc, err := linkConfig(cfg)
	if err == nil {
		f.link, err = link.New(lc, link.Options{
			Logger: log.With("part", "mqtt"),
			Streams: []link.Stream{
				{Name: streamResults, Schema: "edge-agent/results/v1", Queue: f.results, Epoch: ob.Epoch()},
				{Name: streamEvents, Schema: "edge-agent/events/v1", Queue: f.events, Epoch: ob.Epoch()},
				{Name: streamSamples, Schema: "edge-agent/samples/v1", Queue: f.samples, Epoch: ob.Epoch()},
			},
			Status: f.statusJSON,
			Commands: func(_ string, payload []byte) {
				if f.router != nil {
					f.router.Handle(payload)
				}
			},
		})
	}
	if err != nil {
		ob.Close()
		return nil, err
	}
	return f, nil
}

// salvageMessage says what became of a damaged outbox's records.
func salvageMessage(sv *outbox.Salvage) string {
	lost, known := sv.Lost(streamResults)
	loss := fmt.Sprintf("%d could not be read", lost)
	switch {
	case !known:
		loss = "how many could not be read is not known (its counters were lost)"
	case sv.Whole && lost == 0:
		loss = "none was lost"
	}
	return fmt.Sprintf("the outbox file was damaged and moved to %s: %d results and %d events were salvaged into the new one and are sent with their own sequence numbers; %s. Check the disk (dmesg, SMART), then delete the moved file",
		sv.From, sv.Restored[streamResults], sv.Restored[streamEvents], loss)
}

// linkConfig maps the YAML settings onto the link's; link.New validates them and names the
// YAML field in its errors.
func linkConfig(cfg *config.Config) (link.Config, error) {
	q := cfg.MQTT
	password := q.Password
	if q.PasswordFile != "" {
		b, err := os.ReadFile(q.PasswordFile)
		if err != nil {
			return link.Config{}, fmt.Errorf("mqtt.password_file: %w", err)
		}
		password = strings.TrimRight(string(b), "\r\n")
	}
	return link.Config{
		Broker: q.Broker, Device: cfg.Device, Prefix: q.Prefix, Groups: q.Groups,
		Username: q.Username, Password: password,
		CAFile: q.CAFile, CertFile: q.CertFile, KeyFile: q.KeyFile, ServerName: q.ServerName,
		KeepAlive: q.KeepAlive, ConnectTimeout: q.Timeout, BackoffMin: q.BackoffMin, BackoffMax: q.BackoffMax,
		InFlight: q.InFlight, BatchMax: q.BatchMax, BatchBytes: int(q.BatchBytes), BatchWait: q.BatchWait,
		Gzip: q.Gzip, AckTimeout: q.AckTimeout, StatusEvery: q.StatusEvery,
	}, nil
}

// sink is the pipeline's first sink: Put returns only once the result is durably stored, and
// the result carries the sequence number the outbox gave it.
func (f *fleet) sink() pipeline.Sink {
	return pipeline.FuncSink(func(ctx context.Context, r *result.Result) error {
		r.Seq, r.Epoch = 0, 0 // the link inserts them when it sends the record
		data, err := json.Marshal(r)
		if err != nil {
			return fmt.Errorf("encode result: %w", err)
		}
		seq, err := f.results.Append(ctx, data)
		if err != nil {
			return fmt.Errorf("outbox: %w", err)
		}
		r.Seq, r.Epoch = seq, f.ob.Epoch()
		return nil
	})
}

// emit queues an event for storage without blocking the caller.
func (f *fleet) emit(e result.Event) {
	e.Schema = result.EventSchema
	e.Device = f.cfg.Device
	if e.TS.IsZero() {
		e.TS = time.Now().UTC()
	}
	if e.Severity == "" {
		e.Severity = "info"
	}
	f.recent.add(e)
	select {
	case f.evq <- e:
	default:
		f.evDropped.Add(1)
	}
}

// run owns the fleet goroutines until ctx ends: the link, the event writer, the health
// watcher and the metrics publisher. Events queued before ctx ended are stored first.
func (f *fleet) run(ctx context.Context, metrics func() map[string]any) {
	var wg sync.WaitGroup
	linkDone := make(chan struct{})
	linkCtx, stopLink := context.WithCancel(context.WithoutCancel(ctx))
	defer stopLink()
	go func() {
		defer close(linkDone)
		if err := f.link.Run(linkCtx); err != nil {
			f.log.Error("mqtt link stopped", "err", err)
		}
	}()
	wg.Add(3)
	if f.router != nil {
		wg.Add(1)
		go func() { defer wg.Done(); f.router.Run(ctx) }()
	}
	go func() { defer wg.Done(); f.watch(ctx) }()
	go func() { defer wg.Done(); f.publishMetrics(ctx, metrics) }()
	evDone := make(chan struct{})
	go func() { defer wg.Done(); f.storeEvents(evDone) }()
	<-ctx.Done()
	close(evDone)
	wg.Wait()
	// The link stops last so the offline status follows everything else. While online it
	// gets a moment to send what the final drain stored; whatever is left stays in the
	// outbox for the next start.
	f.flush(2 * time.Second)
	stopLink()
	<-linkDone
	rs, ls := f.results.Stats(), f.link.Stats()
	f.log.Info("fleet link stopped", "results_waiting", rs.Count, "events_waiting", f.events.Stats().Count,
		"results_sent", ls.Streams[streamResults].Records, "resent", ls.Streams[streamResults].Resent, "dropped_total", rs.Dropped.Oldest+rs.Dropped.Newest+rs.Dropped.Age)
}

// flush waits, at most limit, until both streams are empty, if the link is online.
func (f *fleet) flush(limit time.Duration) {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) && f.link.Stats().State == "online" {
		if f.results.Stats().Count == 0 && f.events.Stats().Count == 0 {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// storeEvents appends queued events to the outbox until done is closed, then stores what is
// still queued.
func (f *fleet) storeEvents(done <-chan struct{}) {
	store := func(e result.Event) {
		data, err := json.Marshal(e)
		if err == nil {
			_, err = f.events.Append(context.Background(), data)
		}
		if err != nil {
			f.evDropped.Add(1)
			f.log.Warn("event not stored", "type", e.Type, "err", err)
		}
	}
	for {
		select {
		case e := <-f.evq:
			store(e)
		case <-done:
			for {
				select {
				case e := <-f.evq:
					store(e)
				default:
					return
				}
			}
		}
	}
}

// watch turns health changes into events, and outbox and link state into health conditions
// (and so into events): drops by the caps, a backlog near its cap, a broker that refuses us.
func (f *fleet) watch(ctx context.Context) {
	changes, cancel := f.health.Subscribe(64)
	defer cancel()
	t := time.NewTicker(time.Second)
	defer t.Stop()
	// Drops counted before this start were announced by the run that made them.
	lastDropped := f.dropBase
	var full diskFull
	for {
		select {
		case <-ctx.Done():
			return
		case ch, ok := <-changes:
			if !ok {
				return
			}
			c := ch.Condition
			e := result.Event{Type: "health.set", Severity: c.Severity.String(), Component: c.Component, Code: c.Code, Message: c.Message}
			if ch.Cleared {
				e.Type, e.Severity = "health.cleared", "info"
			}
			f.emit(e)
		case <-t.C:
			st := f.results.Stats()
			d := st.Dropped
			if n := (d.Oldest + d.Newest + d.Age) - (lastDropped.Oldest + lastDropped.Newest + lastDropped.Age); n > 0 {
				msg := fmt.Sprintf("outbox dropped %d results (cap %d results / %d bytes, policy %s): the broker has been unreachable too long or results arrive faster than they are sent",
					n, st.Caps.MaxCount, st.Caps.MaxBytes, st.Caps.Policy)
				f.log.Warn("outbox dropping results", "dropped", n, "count", st.Count, "bytes", st.Bytes)
				f.emit(result.Event{Type: "outbox.dropped", Severity: "warning", Component: "outbox", Message: msg, Data: map[string]any{
					"oldest": d.Oldest - lastDropped.Oldest, "newest": d.Newest - lastDropped.Newest, "age": d.Age - lastDropped.Age,
					"total_oldest": d.Oldest, "total_newest": d.Newest, "total_age": d.Age, "count": st.Count, "bytes": st.Bytes}})
				lastDropped = d
			}
			f.outboxCondition(st)
			full.watch(f, f.ob.Stats())
			f.linkCondition(f.link.Stats())
		}
	}
}

// diskFull follows the outbox's disk-full mode: a health condition while it lasts (readiness
// says why, agent/statuswire.go), and an event with the records refused once space returns
// (no event can be stored while the disk is full).
type diskFull struct {
	since time.Time
	base  map[string]uint64 // each stream's refused count when the last episode ended
}

func (d *diskFull) watch(f *fleet, st outbox.Stats) {
	refused := func() map[string]uint64 {
		m := map[string]uint64{}
		for name, s := range st.Streams {
			m[name] = s.Refused.NoSpace
		}
		return m
	}
	switch {
	case st.DiskFull:
		d.since = st.DiskFullSince
		// A steady message: each change of a condition is an event, and no event can be
		// stored now. The count is in the metrics and the status page.
		f.health.Set(health.Condition{Code: "disk-full", Severity: health.Error, Component: "outbox",
			Message: fmt.Sprintf("the disk holding the outbox (%s) is full since %s: new results are refused and lost (counted in edge_agent_outbox_refused_total); free space there (old logs, moved-aside files), or lower outbox.max_bytes below what the disk holds",
				f.cfg.Outbox.Path, d.since.UTC().Format(time.RFC3339))})
	case !d.since.IsZero():
		now, lost := refused(), map[string]any{}
		for name, n := range now {
			lost[name] = n - d.base[name]
		}
		msg := fmt.Sprintf("the disk holding the outbox was full from %s to %s: %v records were refused and are lost (by stream)",
			d.since.UTC().Format(time.RFC3339), time.Now().UTC().Format(time.RFC3339), lost)
		f.log.Warn("outbox: disk space returned", "full_since", d.since, "refused", lost)
		f.health.Clear("disk-full")
		f.emit(result.Event{Type: "outbox.disk_full", Severity: "warning", Component: "outbox", Message: msg,
			Data: map[string]any{"since": d.since.UTC(), "until": time.Now().UTC(), "refused": lost}})
		d.since, d.base = time.Time{}, now
	}
}

func (f *fleet) outboxCondition(st outbox.StreamStats) {
	full := max(float64(st.Count)/float64(max(st.Caps.MaxCount, 1)), float64(st.Bytes)/float64(max(st.Caps.MaxBytes, 1)))
	if full >= 0.9 {
		f.health.Set(health.Condition{Code: "outbox", Severity: health.Warning, Component: "outbox",
			Message: fmt.Sprintf("outbox is %.0f%% full (%d results waiting, oldest from %s); at the cap the %s policy applies",
				100*full, st.Count, st.OldestTS.Format(time.RFC3339), st.Caps.Policy)})
	} else {
		f.health.Clear("outbox")
	}
}

func (f *fleet) linkCondition(st link.Stats) {
	switch st.State {
	case "online":
		f.health.Clear("mqtt")
	case "offline-mode":
		f.health.Set(health.Condition{Code: "mqtt", Severity: health.Info, Component: "link",
			Message: "no mqtt.broker configured: results are kept in the outbox (up to its caps) until one is"})
	default:
		if st.LastError == "" {
			return // still on the first attempt
		}
		f.health.Set(health.Condition{Code: "mqtt", Severity: health.Warning, Component: "link",
			Message: fmt.Sprintf("not connected to %s (%s): %s; results are kept in the outbox", st.Broker, st.State, st.LastError)})
	}
}

// publishMetrics sends a metrics message every mqtt.metrics_every (negative disables).
func (f *fleet) publishMetrics(ctx context.Context, metrics func() map[string]any) {
	every := f.cfg.MQTT.MetricsEvery
	if every < 0 || f.cfg.MQTT.Broker == "" {
		<-ctx.Done()
		return
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			m := metrics()
			m["schema"] = "edge-agent/metrics/v1"
			m["device"] = f.cfg.Device
			m["ts"] = time.Now().UTC()
			if b, err := json.Marshal(m); err == nil {
				f.link.PublishMetrics(b)
			}
		}
	}
}

// statusJSON is the agent's part of the retained status message.
func (f *fleet) statusJSON() json.RawMessage {
	m := map[string]any{"agent_version": Version, "started_at": f.started.UTC()}
	if f.status != nil {
		for k, v := range f.status() {
			m[k] = v
		}
	}
	b, _ := json.Marshal(m)
	return b
}

// stats is the fleet part of the metrics and the status page.
func (f *fleet) stats() map[string]any {
	m := map[string]any{"outbox": f.ob.Stats(), "mqtt": f.link.Stats(), "events_dropped": f.evDropped.Load()}
	if f.router != nil {
		m["commands"] = f.router.Stats()
	}
	return m
}

func (f *fleet) close() error {
	var err error
	f.stopOnce.Do(func() {
		if cerr := f.ob.Close(); cerr != nil && !errors.Is(cerr, outbox.ErrClosed) {
			err = cerr
		}
		if f.state != nil {
			if cerr := f.state.Close(); cerr != nil && err == nil {
				err = cerr
			}
		}
	})
	return err
}
