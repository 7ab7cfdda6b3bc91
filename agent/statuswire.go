package agent

// The local HTTP server's side of the wiring: agent/status reads the agent through its
// status.Agent interface, implemented here, so that package never imports this one nor the
// outbox's and link's libraries. Its events come from a bounded ring that fleet.emit feeds.

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"image"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/edge-agent/edge-agent/agent/health"
	"github.com/edge-agent/edge-agent/agent/infer"
	"github.com/edge-agent/edge-agent/agent/outbox"
	"github.com/edge-agent/edge-agent/agent/pipeline"
	"github.com/edge-agent/edge-agent/agent/preprocess"
	"github.com/edge-agent/edge-agent/agent/result"
	"github.com/edge-agent/edge-agent/agent/status"
	"github.com/edge-agent/edge-agent/hal/sensor"
)

// minTokenLen is the shortest bearer token accepted: a guessable one protects nothing.
const minTokenLen = 16

// setupStatus checks the status settings that the config cannot: the token file is read now
// so that a missing or weak one fails at start. The server itself binds in runStatus.
func (a *Agent) setupStatus(opt Options) error {
	if opt.NoFleet || a.cfg.Status.Addr() == "" {
		return nil
	}
	_, err := a.statusOptions()
	return err
}

func (a *Agent) statusOptions() (status.Options, error) {
	c := a.cfg.Status
	o := status.Options{Listen: c.Addr(), MaxBody: int64(c.MaxBody), History: c.History, MaxPixels: c.MaxPixels,
		MaxRequestPixels: c.MaxRequestPixels, TLSCert: c.TLSCert, TLSKey: c.TLSKey, Logger: a.log.With("part", "status")}
	if c.TLSCert != "" {
		if _, err := tls.LoadX509KeyPair(c.TLSCert, c.TLSKey); err != nil {
			return o, fmt.Errorf("status.tls_cert, status.tls_key: %w: give a PEM certificate and its key", err)
		}
	}
	if c.TokenFile == "" {
		return o, nil
	}
	b, err := os.ReadFile(c.TokenFile)
	if err != nil {
		return o, fmt.Errorf("status.token_file: %w", err)
	}
	o.Token = strings.TrimSpace(string(b))
	if len(o.Token) < minTokenLen || strings.ContainsAny(o.Token, " \t\r\n") {
		return o, fmt.Errorf("status.token_file: %s must hold one random token of at least %d characters without spaces (head -c 32 /dev/urandom | base64 makes one)", c.TokenFile, minTokenLen)
	}
	if fi, err := os.Stat(c.TokenFile); err == nil && fi.Mode().Perm()&0o004 != 0 {
		a.log.Warn("status.token_file is readable by every user: chmod 600 it", "file", c.TokenFile)
	}
	return o, nil
}

// runStatus binds and serves the status server until ctx ends; wg tracks its goroutine. A
// server that cannot start (the port is taken) is a warning condition, not a stop: the
// agent's job is inference, and it keeps doing it.
func (a *Agent) runStatus(ctx context.Context, wg *sync.WaitGroup) {
	if a.cfg.Status.Addr() == "" {
		return
	}
	src := &statusAgent{a: a, started: time.Now(), engine: "none", models: map[string]bool{}, takes: map[*pipeline.Serving]takes{}}
	if a.fleet != nil {
		src.started = a.fleet.started
	}
	if a.engine != nil {
		src.engine = a.engine.Name() + " " + a.engine.Version()
	}
	for _, m := range a.cfg.Models {
		src.models[m.Name] = true
	}
	opts, err := a.statusOptions()
	var srv *status.Server
	if err == nil {
		srv, err = status.New(src, opts)
	}
	if err == nil {
		var addr net.Addr
		if addr, err = srv.Listen(); err == nil {
			a.log.Info("status server listening", "url", "http://"+addr.String()+"/")
		}
	}
	if err != nil {
		a.log.Error("status server not started; inference goes on without it", "err", err)
		a.health.Set(health.Condition{Code: "status", Severity: health.Warning, Component: "status",
			Message: fmt.Sprintf("the local status server is not running: %v", err)})
		return
	}
	a.health.Clear("status")
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := srv.Serve(ctx); err != nil {
			a.log.Error("status server stopped", "err", err)
		}
	}()
}

// takes records what a serving version's preprocessing accepts.
type takes struct{ tensor, image bool }

// statusAgent is the agent as agent/status reads it.
type statusAgent struct {
	a       *Agent
	started time.Time
	engine  string
	models  map[string]bool // configured names; fixed after New

	mu    sync.Mutex
	takes map[*pipeline.Serving]takes // probed per version; bounded by maxProbes
}

// maxProbes bounds the remembered probes: a model has one or two live versions at a time.
const maxProbes = 16

func (s *statusAgent) Snapshot() status.Snapshot {
	a := s.a
	snap := status.Snapshot{
		Device: a.cfg.Device, Board: a.board.Model, Hardware: a.hw.Summary(), Version: Version,
		Engine: s.engine, Started: s.started, Models: a.pipe.Stats(), Health: a.health.List(),
		Sources: []status.Source{}, Drift: []status.DriftScore{}, Events: []result.Event{},
	}
	sec := a.security
	snap.Security = &sec
	for _, r := range a.SourceStats() {
		snap.Sources = append(snap.Sources, status.Source{Name: r.Name, Kind: r.Kind, State: r.State, Frames: r.Frames,
			Errors: r.Errors, Restarts: r.Restarts, Dropped: r.Queue.Dropped, LastError: r.LastError})
	}
	if f := a.fleet; f != nil {
		ob := f.ob.Stats()
		o := &status.Outbox{FileBytes: ob.FileBytes, Commits: ob.Commits, Compactions: ob.Compactions, DiskFull: ob.DiskFull, DiskFullSince: ob.DiskFullSince}
		for _, name := range sortedKeys(ob.Streams) {
			st := ob.Streams[name]
			o.Streams = append(o.Streams, status.OutboxStream{Name: name, Count: st.Count, Bytes: st.Bytes, OldestTS: st.OldestTS,
				Appended: st.Appended, Acked: st.Acked, DroppedOldest: st.Dropped.Oldest, DroppedNewest: st.Dropped.Newest,
				DroppedAge: st.Dropped.Age, RefusedNoSpace: st.Refused.NoSpace, RefusedFailed: st.Refused.Failed,
				MaxCount: st.Caps.MaxCount, MaxBytes: st.Caps.MaxBytes, Policy: string(st.Caps.Policy)})
		}
		snap.Outbox = o
		ls := f.link.Stats()
		q := &status.MQTT{State: ls.State, Broker: ls.Broker, ConnectedSince: ls.ConnectedSince, LastError: ls.LastError,
			Connects: ls.Connects, ConnectFailures: ls.ConnectFailures, MetricsSent: ls.MetricsSent, MetricsDropped: ls.MetricsDropped,
			Commands: ls.Commands, RepliesSent: ls.RepliesSent, RepliesDropped: ls.RepliesDropped}
		if f.router != nil {
			cs := f.router.Stats()
			q.CommandsRefused, q.CommandsSuppressed = cs.Refused, cs.Suppressed
		}
		for _, name := range sortedKeys(ls.Streams) {
			st := ls.Streams[name]
			q.Streams = append(q.Streams, status.LinkStream{Name: name, Messages: st.Messages, Records: st.Records, Resent: st.Resent, InFlight: st.InFlight})
		}
		snap.MQTT = q
		snap.Events = f.recent.list()
		snap.EventsDropped = f.evDropped.Load()
	}
	for _, d := range a.DriftScores() {
		snap.Drift = append(snap.Drift, status.DriftScore{Model: d.Model, Version: d.Version, Feature: d.Feature, Statistic: d.Statistic,
			Value: d.Value, Threshold: d.Threshold, Alert: d.Alert, Windows: d.Windows})
	}
	return snap
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// Ready is /readyz: a model has a loaded version and the outbox takes results. It agrees
// with Agent.Ready and adds the case of a full outbox whose policy refuses new results.
func (s *statusAgent) Ready() error {
	a := s.a
	if !a.Ready() {
		if a.fleet != nil && a.fleet.ob == nil {
			return errors.New("the outbox is not open, so results cannot be stored")
		}
		return errors.New("no model has a loaded version: see the health conditions model/<name> and deploy/<name>")
	}
	if a.fleet != nil {
		if ob := a.fleet.ob.Stats(); ob.DiskFull {
			return fmt.Errorf("degraded: the disk holding the outbox is full since %s, so new results are refused (%d so far): free space in %s",
				ob.DiskFullSince.UTC().Format(time.RFC3339), ob.Streams[streamResults].Refused.NoSpace, filepath.Dir(a.cfg.Outbox.Path))
		}
		st := a.fleet.results.Stats()
		full := st.Count >= st.Caps.MaxCount || st.Bytes >= st.Caps.MaxBytes
		if full && st.Caps.Policy != outbox.DropOldest {
			return fmt.Errorf("the outbox is full (%d results, %d bytes) and its policy %s refuses new results: the broker has been unreachable too long", st.Count, st.Bytes, st.Caps.Policy)
		}
	}
	return nil
}

func (s *statusAgent) Model(name string) (status.Model, error) {
	if !s.models[name] {
		names := sortedKeys(s.models)
		return status.Model{}, fmt.Errorf("%w %q: this agent serves %s", status.ErrUnknownModel, name, strings.Join(names, ", "))
	}
	sv := s.a.pipe.Serving(name)
	if sv == nil {
		return status.Model{}, fmt.Errorf("model %q: %w (see its health condition on the status page)", name, status.ErrNoVersion)
	}
	info := sv.Model.Info()
	t := s.probe(sv, info)
	return status.Model{Name: name, Version: sv.Version, Inputs: info.Inputs, Outputs: info.Outputs, TakesTensor: t.tensor, TakesImage: t.image}, nil
}

// probe finds out, once per version, whether its preprocessing takes raw tensors and
// pictures, by running it (not the model) on a zero tensor and a tiny picture. The predict
// API then refuses what the version cannot take before it reaches the pipeline, whose
// preprocessing errors count against a version on probation.
func (s *statusAgent) probe(sv *pipeline.Serving, info infer.ModelInfo) takes {
	s.mu.Lock()
	t, ok := s.takes[sv]
	s.mu.Unlock()
	if ok {
		return t
	}
	if len(info.Inputs) > 0 {
		total := 0
		for _, in := range info.Inputs {
			total += in.Bytes
		}
		in := info.Inputs[0]
		_, err := sv.Pre.Apply(sensor.Frame{Source: "probe", Tensor: &sensor.Raw{DType: in.DType.String(), Shape: in.Shape, Data: make([]byte, total)}}, nil)
		t.tensor = err == nil
		_, err = sv.Pre.Apply(sensor.Frame{Source: "probe", Image: image.NewGray(image.Rect(0, 0, 2, 2))}, nil)
		t.image = err == nil
	}
	s.mu.Lock()
	if len(s.takes) >= maxProbes {
		clear(s.takes)
	}
	s.takes[sv] = t
	s.mu.Unlock()
	return t
}

// Predict runs a frame through the model's pipeline path; the result is not published.
func (s *statusAgent) Predict(ctx context.Context, model string, f sensor.Frame) (*result.Result, error) {
	r, err := s.a.pipe.Process(ctx, model, f)
	if err == nil {
		return r, nil
	}
	switch {
	case errors.Is(err, pipeline.ErrUnknownModel):
		return nil, kindError{status.ErrUnknownModel, err}
	case errors.Is(err, pipeline.ErrNoVersion):
		return nil, kindError{status.ErrNoVersion, err}
	case errors.Is(err, preprocess.ErrBadFrame), errors.Is(err, infer.ErrInput):
		return nil, kindError{status.ErrBadInput, err}
	}
	return nil, err
}

// kindError is err classified for agent/status, with err's own message.
type kindError struct{ kind, err error }

func (e kindError) Error() string   { return e.err.Error() }
func (e kindError) Unwrap() []error { return []error{e.kind, e.err} }

// recentEventsMax bounds the events the status page lists.
const recentEventsMax = 100

// recentEvents is the ring of the latest events the agent emitted (fleet.emit adds each one,
// including those its queue then drops). The zero value is ready to use.
type recentEvents struct {
	mu  sync.Mutex
	buf [recentEventsMax]result.Event
	n   int
}

func (r *recentEvents) add(e result.Event) {
	r.mu.Lock()
	r.buf[r.n%len(r.buf)] = e
	r.n++
	r.mu.Unlock()
}

// list returns the events, oldest first.
func (r *recentEvents) list() []result.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := min(r.n, len(r.buf))
	out := make([]result.Event, 0, n)
	for i := r.n - n; i < r.n; i++ {
		out = append(out, r.buf[i%len(r.buf)])
	}
	return out
}
