// Package simfleet runs many simulated devices in one process, for `edgectl simulate` and its
// benchmark. Each device is the agent's real fleet side without the rest of the agent: a real
// agent/link.Link (persistent session, retained status with a last will, the results stream
// at QoS 1, the device, group and broadcast command topics, replies) and a real
// agent/command.Router (checks, replay protection, bounded queue and workers, replies) with
// ping and status handlers shaped like the agent's and a simulated deploy handler that checks
// its arguments like the real one, reports progress and finishes done without downloading or
// installing anything. The outbox is replaced by a bounded in-memory Queue that a producer
// fills with small result records at a fixed rate.
//
// Imports: the standard library, agent/link, agent/command and agent/result. It must not
// import the agent package (the simulated device is not a whole agent), paho (the link owns
// MQTT) or bbolt (nothing is stored).
package simfleet

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/edge-agent/edge-agent/agent/command"
	"github.com/edge-agent/edge-agent/agent/link"
	"github.com/edge-agent/edge-agent/agent/result"
)

// Limits and defaults of a Config.
const (
	MaxDevices        = 100_000
	MaxResultsPerSec  = 1000 // per device
	DefaultQueueCap   = 1000 // results kept per device while the broker does not take them
	DefaultDeployTime = time.Second
	// minTick bounds how often a producer wakes: at high rates it appends several records per
	// tick instead of waking thousands of times a second per device.
	minTick = 100 * time.Millisecond
	// rememberIDs bounds the command ids each device keeps against replays.
	rememberIDs = 1000
)

// Config describes the simulated fleet.
type Config struct {
	// Link is the connection every device makes (broker, prefix, credentials, TLS, timings);
	// Device and Groups are set per device.
	Link link.Config
	// Devices is how many devices run, 1..MaxDevices; they are named DeviceID(0..Devices-1).
	Devices int
	// Group is the fleet group every device is in (required).
	Group string
	// ResultsPerSec is how many result records each device appends to its queue per second
	// (0..MaxResultsPerSec; 0 sends none).
	ResultsPerSec float64
	// QueueCap bounds each device's queue (default DefaultQueueCap); when the broker does not
	// take results fast enough the oldest are dropped and counted.
	QueueCap int
	// DeployTime is how long a simulated deploy takes from accepted to done (default
	// DefaultDeployTime), with progress replies on the way.
	DeployTime time.Duration
	// VerifyCommand checks a signed command as an agent does (signature, key and purpose);
	// required: simulated devices take signed commands only, as real ones do by default.
	VerifyCommand func(body, sig []byte) error
	// AgentVersion is what the devices report as agent_version.
	AgentVersion string
	// Logger receives the links' and routers' logs, with a device attribute (default: none).
	Logger *slog.Logger
}

// DeviceID names device i (from 0): sim-1, sim-2, ...
func DeviceID(i int) string { return "sim-" + strconv.Itoa(i+1) }

// Fleet is the simulated devices. Build it with New; Run runs them.
type Fleet struct {
	cfg     Config
	devices []*device
	running atomic.Bool
}

// device is one simulated agent's fleet side.
type device struct {
	id      string
	cfg     *Config
	started time.Time
	queue   *Queue
	link    *link.Link
	router  *command.Router
	ids     *memIDs
}

// New validates cfg and builds every device's link and router; nothing connects before Run.
func New(cfg Config) (*Fleet, error) {
	switch {
	case cfg.Devices < 1 || cfg.Devices > MaxDevices:
		return nil, fmt.Errorf("simulated devices: %d is outside 1..%d", cfg.Devices, MaxDevices)
	case cfg.Group == "":
		return nil, errors.New("simulated devices: no group: name the group every device is in")
	case math.IsNaN(cfg.ResultsPerSec) || cfg.ResultsPerSec < 0 || cfg.ResultsPerSec > MaxResultsPerSec:
		return nil, fmt.Errorf("simulated devices: %v results per second is outside 0..%d", cfg.ResultsPerSec, MaxResultsPerSec)
	case cfg.QueueCap < 0 || cfg.DeployTime < 0:
		return nil, fmt.Errorf("simulated devices: negative queue cap %d or deploy time %v: use 0 for the default", cfg.QueueCap, cfg.DeployTime)
	}
	if cfg.QueueCap == 0 {
		cfg.QueueCap = DefaultQueueCap
	}
	if cfg.DeployTime == 0 {
		cfg.DeployTime = DefaultDeployTime
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	f := &Fleet{cfg: cfg, devices: make([]*device, cfg.Devices)}
	for i := range f.devices {
		d, err := newDevice(&f.cfg, DeviceID(i))
		if err != nil {
			return nil, err
		}
		f.devices[i] = d
	}
	return f, nil
}

func newDevice(cfg *Config, id string) (*device, error) {
	d := &device{id: id, cfg: cfg, started: time.Now(), queue: NewQueue(cfg.QueueCap), ids: newMemIDs(rememberIDs)}
	log := cfg.Logger.With("device", id)
	lc := cfg.Link
	lc.Device, lc.Groups = id, []string{cfg.Group}
	var err error
	d.link, err = link.New(lc, link.Options{
		Logger:  log,
		Streams: []link.Stream{{Name: "results", Schema: "edge-agent/results/v1", Queue: d.queue}},
		Status: func() json.RawMessage {
			b, _ := json.Marshal(d.statusFields())
			return b
		},
		// Handle never blocks, as the link requires of this callback.
		Commands: func(_ string, payload []byte) { d.router.Handle(payload) },
	})
	if err != nil {
		return nil, fmt.Errorf("simulated device %s: %w", id, err)
	}
	d.router, err = command.New(command.Options{
		Device:   id,
		Groups:   []string{d.cfg.Group},
		Verify:   d.cfg.VerifyCommand,
		Handlers: d.handlers(),
		Reply: func(rep command.Reply) {
			if b, err := json.Marshal(rep); err == nil {
				d.link.Reply(b) // a full reply queue is counted by the link
			}
		},
		Remember: d.ids.remember,
		Logger:   log,
	})
	if err != nil {
		return nil, fmt.Errorf("simulated device %s: %w", id, err)
	}
	return d, nil
}

// IDs returns the devices' ids in order.
func (f *Fleet) IDs() []string {
	ids := make([]string, len(f.devices))
	for i, d := range f.devices {
		ids[i] = d.id
	}
	return ids
}

// Run runs every device until ctx ends: links, routers and producers. On ctx the producers
// and routers stop first, then the links publish their offline status and disconnect. Every
// goroutine it started has ended when it returns. Call it once.
func (f *Fleet) Run(ctx context.Context) error {
	if !f.running.CompareAndSwap(false, true) {
		return errors.New("simulated devices: Run is already running or has run; build a new fleet")
	}
	// The links outlive ctx by the routers' last replies, as in the agent (agent/fleet.go).
	linkCtx, stopLinks := context.WithCancel(context.WithoutCancel(ctx))
	defer stopLinks()
	var links, rest sync.WaitGroup
	for _, d := range f.devices {
		links.Go(func() {
			if err := d.link.Run(linkCtx); err != nil {
				f.cfg.Logger.Error("simulated device link stopped", "device", d.id, "err", err)
			}
		})
		rest.Go(func() { d.router.Run(ctx) })
		if f.cfg.ResultsPerSec > 0 {
			rest.Go(func() { d.produce(ctx, f.cfg.ResultsPerSec) })
		}
	}
	<-ctx.Done()
	rest.Wait()
	stopLinks()
	links.Wait()
	return nil
}

// Online counts the devices whose link is online: connected, its writes checked, and
// subscribed to its command topics.
func (f *Fleet) Online() int {
	n := 0
	for _, d := range f.devices {
		if d.link.Stats().State == link.StateOnline {
			n++
		}
	}
	return n
}

// Stats add up the devices' counters.
type Stats struct {
	Devices         int           `json:"devices"`
	Online          int           `json:"online"`
	Appended        uint64        `json:"appended"`         // results put in the devices' queues
	Dropped         uint64        `json:"dropped"`          // results the queues' caps dropped
	Sent            uint64        `json:"sent"`             // results in messages the broker acknowledged, re-sent ones included
	Resent          uint64        `json:"resent"`           // results sent again after a reconnect
	Connects        uint64        `json:"connects"`         // connections that got online
	ConnectFailures uint64        `json:"connect_failures"` // attempts that did not
	RepliesDropped  uint64        `json:"replies_dropped"`  // command replies the links' queues had no room for
	Commands        command.Stats `json:"commands"`
}

// Stats returns the fleet's counters now.
func (f *Fleet) Stats() Stats {
	s := Stats{Devices: len(f.devices)}
	for _, d := range f.devices {
		ls := d.link.Stats()
		if ls.State == link.StateOnline {
			s.Online++
		}
		rs := ls.Streams["results"]
		s.Sent += rs.Records
		s.Resent += rs.Resent
		s.Connects += ls.Connects
		s.ConnectFailures += ls.ConnectFailures
		s.RepliesDropped += ls.RepliesDropped
		qs := d.queue.Stats()
		s.Appended += qs.Appended
		s.Dropped += qs.Dropped
		c := d.router.Stats()
		s.Commands.Received += c.Received
		s.Commands.Accepted += c.Accepted
		s.Commands.Done += c.Done
		s.Commands.Failed += c.Failed
		s.Commands.Replayed += c.Replayed
		s.Commands.Expired += c.Expired
		s.Commands.Malformed += c.Malformed
		s.Commands.Oversize += c.Oversize
		s.Commands.BadSignature += c.BadSignature
		s.Commands.Busy += c.Busy
	}
	return s
}

// produce appends rate results per second to the queue until ctx ends. It wakes at most every
// minTick and appends what is due, so the average rate holds whatever the rate.
func (d *device) produce(ctx context.Context, rate float64) {
	tick := max(time.Duration(float64(time.Second)/rate), minTick)
	// A random phase spreads the devices' records over the period, as independent devices
	// would be; all at once would measure a burst instead.
	t := time.NewTimer(rand.N(tick))
	defer t.Stop()
	select {
	case <-ctx.Done():
		return
	case <-t.C:
	}
	start := time.Now()
	var n uint64
	for {
		due := uint64(rate*time.Since(start).Seconds()) + 1
		for ; n < due; n++ {
			d.queue.Append(d.record(n + 1))
		}
		t.Reset(tick)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// record is one small result, like a scalar model's: about 200 bytes of JSON.
func (d *device) record(frame uint64) []byte {
	r := result.Result{Schema: result.Schema, Device: d.id, Model: "sim", Version: "1", TS: time.Now().UTC(),
		LatencyUS: 500 + rand.Int64N(1000), Source: "sim", FrameSeq: frame,
		Values: map[string]float64{"value": math.Round(math.Sin(float64(frame)/10)*1e4) / 1e4}}
	b, _ := json.Marshal(r)
	return b
}

// statusFields are the device's part of the retained status and of the status command's
// result, with the agent's field names (agent/agent.go statusFields).
func (d *device) statusFields() map[string]any {
	return map[string]any{
		"agent_version": d.cfg.AgentVersion,
		"started_at":    d.started.UTC(),
		"board":         "simulated (edgectl simulate)",
		"hardware":      "simulated",
		"models":        []map[string]string{},
		"health":        "ok",
		"groups":        []string{d.cfg.Group},
		"simulated":     true,
	}
}

// handlers are the command types a simulated device answers.
func (d *device) handlers() map[string]command.Handler {
	return map[string]command.Handler{
		"ping": func(context.Context, command.Command, command.Progress) (any, error) {
			return map[string]any{"pong": time.Now().UTC(), "agent_version": d.cfg.AgentVersion}, nil
		},
		"status": func(context.Context, command.Command, command.Progress) (any, error) {
			s := d.statusFields()
			s["fleet"] = map[string]any{"queue": d.queue.Stats(), "mqtt": d.link.Stats(), "commands": d.router.Stats()}
			s["health_conditions"] = []any{}
			s["model_stats"] = []any{}
			return s, nil
		},
		"deploy": d.deploy,
	}
}

// deploy checks its arguments as the agent's deploy does, then pretends to download for
// DeployTime with progress replies, and finishes done. It installs nothing.
func (d *device) deploy(ctx context.Context, c command.Command, progress command.Progress) (any, error) {
	var args struct {
		URL    string `json:"url"`
		SHA256 string `json:"sha256"`
	}
	if err := json.Unmarshal(c.Args, &args); err != nil || args.URL == "" || args.SHA256 == "" {
		return nil, errors.New(`deploy needs args {"url": BUNDLE_URL, "sha256": HEX}`)
	}
	if err := checkDeployArgs(args.URL, args.SHA256); err != nil {
		return nil, err
	}
	const steps = 4
	for i := range steps {
		progress(float64(i)/steps, fmt.Sprintf("simulated download: %d%%", 100*i/steps))
		t := time.NewTimer(d.cfg.DeployTime / steps)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("simulated deploy of %s stopped: %w", args.URL, ctx.Err())
		case <-t.C:
		}
	}
	progress(1, "simulated: downloaded; nothing is verified or installed")
	return map[string]any{"simulated": true, "installed": false, "url": args.URL, "sha256": strings.ToLower(args.SHA256)}, nil
}

// checkDeployArgs refuses what the agent's download would refuse before any network access.
func checkDeployArgs(rawURL, sum string) error {
	if b, err := hex.DecodeString(strings.ToLower(sum)); err != nil || len(b) != 32 {
		return fmt.Errorf("download %s: sha256 %q is not 64 hex digits", rawURL, sum)
	}
	u, err := url.Parse(rawURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("download %s: not an http:// or https:// URL", rawURL)
	}
	return nil
}

// memIDs is the replay memory of a simulated device: the agent keeps ids in agent/state on
// disk; a simulation keeps the most recent ones in memory, each until it expires.
type memIDs struct {
	mu    sync.Mutex
	until map[string]time.Time
	order []string // oldest first; bounded by max
	max   int
}

func newMemIDs(limit int) *memIDs {
	return &memIDs{until: map[string]time.Time{}, max: limit}
}

func (m *memIDs) remember(id string, until time.Time) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if exp, ok := m.until[id]; ok {
		if time.Now().Before(exp) {
			return true, nil
		}
		m.until[id] = until // expired: a new command that reuses the id; it keeps its place in order
		return false, nil
	}
	m.until[id] = until
	m.order = append(m.order, id)
	if len(m.order) > m.max {
		delete(m.until, m.order[0])
		m.order[0] = ""
		m.order = m.order[1:]
	}
	return false, nil
}
