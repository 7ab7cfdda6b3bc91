package main

// edgectl simulate: many simulated devices in this one process (internal/simfleet: the
// agent's real link and command router, an in-memory results queue), a console that counts
// the results they send through the broker and, with --deploy, times one deploy's replies.

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/edge-agent/edge-agent/agent"
	"github.com/edge-agent/edge-agent/agent/command"
	"github.com/edge-agent/edge-agent/agent/link"
	"github.com/edge-agent/edge-agent/internal/fleetclient"
	"github.com/edge-agent/edge-agent/internal/simfleet"
	"github.com/edge-agent/edge-agent/models/sign"
)

// simDeployURL is what the simulated deploy names. The .invalid domain never resolves, so a
// real agent that receives the command (--all) fails its download and installs nothing.
const simDeployURL = "https://bundles.invalid/simulated-bundle.tar.gz"

// simDeployTTL is the deploy command's lifetime: short, so a persistent session that missed
// it does not act on it much later.
const simDeployTTL = 2 * time.Minute

// simOptions are simulate's flags.
type simOptions struct {
	devices    int
	group      string
	all        bool
	rate       float64
	duration   time.Duration
	deploy     bool
	deployTime time.Duration
	every      time.Duration
	json       bool
	verbose    bool
}

// cmdSimulate: edgectl simulate --devices N [--group G] [--results-per-sec R] [--duration D]
// [--deploy [--all]] [conn flags]
func cmdSimulate(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("simulate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	conn := addConnFlags(fs)
	var o simOptions
	fs.IntVar(&o.devices, "devices", 0, fmt.Sprintf("how many simulated devices to run, 1..%d (required)", simfleet.MaxDevices))
	fs.StringVar(&o.group, "group", "sim", "the group every simulated device is in; --deploy sends to it")
	fs.BoolVar(&o.all, "all", false, "with --deploy: send to <prefix>/all/cmd instead of the group; every device on the broker gets it, real ones too")
	fs.Float64Var(&o.rate, "results-per-sec", 1, "results each device sends per second")
	fs.DurationVar(&o.duration, "duration", 0, "stop after this long (default: at Ctrl-C)")
	fs.BoolVar(&o.deploy, "deploy", false, "once every device is online, send one deploy and time the replies")
	fs.DurationVar(&o.deployTime, "deploy-time", simfleet.DefaultDeployTime, "how long a simulated deploy takes from accepted to done")
	fs.DurationVar(&o.every, "every", 5*time.Second, "print a progress line this often")
	fs.BoolVar(&o.json, "json", false, "print one JSON object per line: progress, milestones, then a summary")
	fs.BoolVar(&o.verbose, "verbose", false, "log every device's connection messages (default: warnings only)")
	pos, err := parseMixed(fs, args)
	if err != nil {
		return err
	}
	switch {
	case len(pos) != 0:
		return usageError{errors.New("simulate takes no arguments")}
	case o.devices < 1 || o.devices > simfleet.MaxDevices:
		return usageError{fmt.Errorf("--devices %d: give how many devices to simulate, 1..%d", o.devices, simfleet.MaxDevices)}
	case o.group == "" || strings.ContainsAny(o.group, "+#/"):
		return usageError{fmt.Errorf("--group %q: a group name is one topic level, without '+', '#' or '/'", o.group)}
	case !(o.rate >= 0 && o.rate <= simfleet.MaxResultsPerSec):
		return usageError{fmt.Errorf("--results-per-sec %v is outside 0..%d", o.rate, simfleet.MaxResultsPerSec)}
	case o.duration < 0, o.deployTime < 0, o.every <= 0:
		return usageError{errors.New("--duration and --deploy-time must not be negative, --every must be positive")}
	case o.all && !o.deploy:
		return usageError{errors.New("--all only says where --deploy sends its command")}
	}
	// One socket per device, plus the console's two and the usual few.
	if limit, ok := simfleet.OpenFileLimit(); ok && limit < uint64(o.devices)+64 {
		return fmt.Errorf("--devices %d needs about %d open files but this process may open %d: raise the limit (ulimit -n) here and for the broker",
			o.devices, o.devices+64, limit)
	}
	s, err := conn.resolve(os.Getenv)
	if err != nil {
		return err
	}
	ctx, stop := interruptContext()
	defer stop()
	if o.duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, o.duration)
		defer cancel()
	}
	errw := &lockedWriter{w: stderr} // the devices log from many goroutines
	level := slog.LevelWarn
	if o.verbose {
		level = slog.LevelInfo
	}
	// The simulated devices take signed commands only, as agents do by default: the deploy is
	// signed with a key made for this run, so the simulation costs what the real check costs.
	pub, priv, err := sign.GenerateKey()
	if err != nil {
		return err
	}
	verifier, err := sign.NewVerifier(pub)
	if err != nil {
		return err
	}
	fleet, err := simfleet.New(simfleet.Config{
		VerifyCommand: verifier.VerifyCommand,
		Link: link.Config{Broker: s.Broker, Prefix: s.Prefix, Username: s.Username, Password: s.Password,
			CAFile: s.CAFile, CertFile: s.CertFile, KeyFile: s.KeyFile, ServerName: s.ServerName},
		Devices: o.devices, Group: o.group, ResultsPerSec: o.rate, DeployTime: o.deployTime,
		AgentVersion: agent.Version,
		Logger:       slog.New(slog.NewTextHandler(errw, &slog.HandlerOptions{Level: level})),
	})
	if err != nil {
		return err
	}
	sim := &simulation{opt: o, broker: s.Broker, prefix: s.Prefix, out: stdout, fleet: fleet, ids: fleet.IDs(), release: stop, key: priv}
	sim.results = newResultCounter(s.Prefix, sim.ids)
	// The console subscribes before any device starts, so every result is counted. Results and
	// replies have a client each: the deploy's replies never wait behind a results backlog.
	resCl, err := connect(ctx, s)
	if err != nil {
		return err
	}
	defer resCl.Close()
	if err := resCl.Subscribe(s.Prefix+"/+/results", sim.results.handle); err != nil {
		return err
	}
	if o.deploy {
		sim.deploy = newDeployTracker(sim.ids)
		if sim.cmdCl, err = connect(ctx, s); err != nil {
			return err
		}
		defer sim.cmdCl.Close()
		if err := sim.cmdCl.Subscribe(s.Prefix+"/+/cmd/reply", sim.deploy.handle); err != nil {
			return err
		}
	}
	return sim.run(ctx)
}

// simulation is one run of simulate.
type simulation struct {
	opt     simOptions
	broker  string
	prefix  string
	out     io.Writer
	fleet   *simfleet.Fleet
	ids     []string
	results *resultCounter
	deploy  *deployTracker      // nil without --deploy
	cmdCl   *fleetclient.Client // sends the deploy and hears the replies
	key     sign.PrivateKey     // signs the deploy (the devices trust its public half)
	release func()              // gives Ctrl-C back to the default: a second one during the stop ends the process

	start    time.Time
	onlineAt time.Time // every device online (zero until then)
	// The rate is measured from steadyAt: once the console has received as many results as
	// the devices had made when they were all online (backlog), so the burst of results
	// queued while they connected is not counted as rate. recvAtSteady is the count then.
	backlog      uint64
	steadyAt     time.Time
	recvAtSteady uint64
}

// run runs the fleet until ctx ends, reporting as it goes, then prints the summary. It
// returns once every device goroutine has ended.
func (s *simulation) run(ctx context.Context) error {
	s.start = time.Now()
	fleetDone := make(chan struct{})
	go func() {
		defer close(fleetDone)
		s.fleet.Run(ctx) // only fails when run twice
	}()
	s.emit(fmt.Sprintf("simulating %d devices (%s..%s) in group %s, %g results/s each, on %s with prefix %s", s.opt.devices, s.ids[0], s.ids[len(s.ids)-1],
		s.opt.group, s.opt.rate, s.broker, s.prefix),
		map[string]any{"event": "start", "devices": s.opt.devices, "group": s.opt.group, "results_per_sec_each": s.opt.rate, "broker": s.broker, "prefix": s.prefix})

	tick := time.NewTicker(s.opt.every)
	defer tick.Stop()
	// Poll often until every device is online (the time to connect them all is a result) and
	// the backlog they made meanwhile has arrived.
	poll := time.NewTicker(50 * time.Millisecond)
	defer poll.Stop()
	pollC := poll.C
	var changed <-chan struct{}
	if s.deploy != nil {
		changed = s.deploy.changed
	}
	lastT, lastN := s.start, uint64(0)
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case <-pollC:
			if !s.onlineAt.IsZero() {
				if rs := s.results.snapshot(); rs.total >= s.backlog {
					s.steadyAt, s.recvAtSteady = time.Now(), rs.total
					poll.Stop()
					pollC = nil
				}
				continue
			}
			if n := s.fleet.Online(); n == s.opt.devices {
				s.onlineAt = time.Now()
				st := s.fleet.Stats()
				s.backlog = st.Appended - st.Dropped
				d := s.onlineAt.Sub(s.start)
				s.emit(fmt.Sprintf("all %d devices online after %s", n, secs(d)),
					map[string]any{"event": "online", "devices": n, "after_s": d.Seconds()})
				if s.deploy != nil {
					s.sendDeploy()
				}
			}
		case <-changed:
			s.deployMilestones()
		case now := <-tick.C:
			rs := s.results.snapshot()
			st := s.fleet.Stats()
			rate := float64(rs.total-lastN) / now.Sub(lastT).Seconds()
			lastT, lastN = now, rs.total
			s.emit(fmt.Sprintf("%7s  online %d/%d  results %.0f/s (offered %.0f/s)  received %d  sent %d  dropped %d",
				secs(now.Sub(s.start)), st.Online, st.Devices, rate, s.offered(), rs.total, st.Sent, st.Dropped),
				map[string]any{"event": "progress", "elapsed_s": now.Sub(s.start).Seconds(), "online": st.Online, "devices": st.Devices,
					"results_per_sec": rate, "offered_per_sec": s.offered(), "received": rs.total, "sent": st.Sent, "dropped": st.Dropped})
		}
	}
	end := time.Now()
	recvEnd := s.results.snapshot().total
	s.release()
	<-fleetDone
	st := s.fleet.Stats()
	// What the links sent before stopping is on its way to the console; wait for it a moment
	// so the totals agree (the rate is measured up to end, without this tail).
	deadline := time.Now().Add(3 * time.Second)
	for rs := s.results.snapshot(); rs.total+rs.dups < st.Sent && time.Now().Before(deadline); rs = s.results.snapshot() {
		time.Sleep(20 * time.Millisecond)
	}
	if s.deploy != nil {
		s.deployMilestones()
	}
	return s.summary(end, recvEnd, st)
}

// offered is the results per second the devices produce together.
func (s *simulation) offered() float64 { return float64(s.opt.devices) * s.opt.rate }

// sendDeploy publishes one deploy command to the group (or all devices).
func (s *simulation) sendDeploy() {
	topic, target := s.prefix+"/group/"+s.opt.group+"/cmd", command.ForGroup(s.opt.group)
	if s.opt.all {
		topic, target = s.prefix+"/all/cmd", command.TargetAll
	}
	sum := sha256.Sum256([]byte("edgectl simulate"))
	a, _ := json.Marshal(map[string]string{"url": simDeployURL, "sha256": hex.EncodeToString(sum[:])})
	now := time.Now().UTC()
	c := command.Command{ID: newID(), Type: "deploy", Args: a, IssuedAt: now, Expires: now.Add(simDeployTTL), Target: target}
	body, _ := json.Marshal(c)
	s.deploy.start(c.ID, topic)
	body, err := sealCommand(s.key, body)
	if err == nil {
		err = s.cmdCl.Publish(topic, 1, false, body)
	}
	if err != nil {
		s.deploy.failedToSend(err)
		s.emit("deploy not sent: "+err.Error(), map[string]any{"event": "deploy_error", "error": err.Error()})
		return
	}
	s.emit(fmt.Sprintf("deploy %s sent to %s", c.ID, topic), map[string]any{"event": "deploy_sent", "id": c.ID, "topic": topic})
}

// deployMilestones prints "accepted by all" and "done by all" once each.
func (s *simulation) deployMilestones() {
	for _, m := range s.deploy.milestones() {
		s.emit(fmt.Sprintf("deploy %s: %s by all %d devices after %s", m.id, m.what, s.opt.devices, secs(m.after)),
			map[string]any{"event": "deploy_" + m.what, "id": m.id, "devices": s.opt.devices, "after_s": m.after.Seconds()})
	}
}

// summary prints the run's figures and says whether it did what was asked.
func (s *simulation) summary(end time.Time, recvEnd uint64, st simfleet.Stats) error {
	rs := s.results.snapshot()
	window, recvWindow, windowWhat := end.Sub(s.start), recvEnd, "the whole run (not every device came online)"
	if !s.onlineAt.IsZero() {
		windowWhat = "the whole run (the results made while the devices connected had not all arrived)"
	}
	if !s.steadyAt.IsZero() && end.After(s.steadyAt) {
		window, recvWindow, windowWhat = end.Sub(s.steadyAt), recvEnd-s.recvAtSteady,
			fmt.Sprintf("from %s, once every device was online and the results made while they connected had arrived", secs(s.steadyAt.Sub(s.start)))
	}
	rate := float64(recvWindow) / window.Seconds()
	minN, maxN, without := uint64(0), uint64(0), 0
	perDev := make(map[string]uint64, len(s.ids))
	for i, n := range rs.perDevice {
		perDev[s.ids[i]] = n
		if i == 0 || n < minN {
			minN = n
		}
		maxN = max(maxN, n)
		if n == 0 {
			without++
		}
	}
	rss, rssOK := peakRSSMB()

	sum := map[string]any{"event": "summary", "devices": s.opt.devices, "group": s.opt.group, "results_per_sec_each": s.opt.rate,
		"elapsed_s": end.Sub(s.start).Seconds(), "online_at_end": st.Online, "connects": st.Connects, "connect_failures": st.ConnectFailures,
		"all_online_s": nil, "deploy": nil, "peak_rss_mb": nil}
	var text strings.Builder
	fmt.Fprintf(&text, "simulated %d devices in group %s for %s, %g results/s each\n", s.opt.devices, s.opt.group, secs(end.Sub(s.start)), s.opt.rate)
	var problems []string
	if s.onlineAt.IsZero() {
		fmt.Fprintf(&text, "  online:   NOT all: %d of %d at the end (connections made %d, failed attempts %d)\n", st.Online, st.Devices, st.Connects, st.ConnectFailures)
		problems = append(problems, fmt.Sprintf("only %d of %d devices came online: check the broker's log, its max_connections, and the open-file limits (ulimit -n) of edgectl and the broker", st.Online, st.Devices))
	} else {
		sum["all_online_s"] = s.onlineAt.Sub(s.start).Seconds()
		fmt.Fprintf(&text, "  online:   all %d after %s (connections made %d, failed attempts %d)\n", st.Devices, secs(s.onlineAt.Sub(s.start)), st.Connects, st.ConnectFailures)
	}
	if s.deploy != nil {
		d := s.deploy.report()
		sum["deploy"] = d
		switch {
		case d.ID == "":
			fmt.Fprintf(&text, "  deploy:   not sent: not every device came online\n")
			problems = append(problems, "the deploy was not sent")
		case d.SendError != "":
			fmt.Fprintf(&text, "  deploy:   not sent: %s\n", d.SendError)
			problems = append(problems, "the deploy was not sent: "+d.SendError)
		default:
			fmt.Fprintf(&text, "  deploy:   %s to %s: accepted by %d, done by %d, failed on %d of %d devices (%d progress replies)\n",
				d.ID, d.Topic, d.Accepted, d.Done, d.Failed, s.opt.devices, d.Progress)
			if d.AcceptedAllS != nil {
				fmt.Fprintf(&text, "            accepted by all after %.2fs, done by all after %s\n", *d.AcceptedAllS, optSecs(d.DoneAllS))
			}
			for dev, why := range d.Failures {
				fmt.Fprintf(&text, "            %s failed: %s\n", dev, why)
			}
			if d.Done < s.opt.devices {
				problems = append(problems, fmt.Sprintf("the deploy finished done on %d of %d devices (%d failed): see the replies above; a longer --duration gives it more time", d.Done, s.opt.devices, d.Failed))
			}
		}
	}
	held := 0.0
	if s.offered() > 0 {
		held = rate / s.offered()
	}
	sum["results"] = map[string]any{"offered_per_sec": s.offered(), "received_per_sec": rate, "held": held, "window_s": window.Seconds(), "window": windowWhat,
		"received": rs.total, "duplicates": rs.dups, "appended": st.Appended, "sent": st.Sent, "resent": st.Resent, "dropped": st.Dropped,
		"from_other_devices": rs.others, "not_results": rs.bad, "devices_without_results": without, "per_device_min": minN, "per_device_max": maxN,
		"per_device": perDev}
	fmt.Fprintf(&text, "  results:  received %.1f/s of %.1f/s offered (%.3f) over %s %s\n", rate, s.offered(), held, secs(window), windowWhat)
	fmt.Fprintf(&text, "            %d received (%d duplicates), %d appended, %d sent, %d dropped by the devices' queues; %d of %d devices sent (min %d, max %d each)\n",
		rs.total, rs.dups, st.Appended, st.Sent, st.Dropped, s.opt.devices-without, s.opt.devices, minN, maxN)
	if lost := int64(st.Sent) - int64(rs.total+rs.dups); lost > 0 {
		fmt.Fprintf(&text, "  warning:  %d results the broker acknowledged never reached this console: the broker dropped them (raise its max_queued_messages, default 1000)\n", lost)
		sum["results_not_delivered"] = lost
	}
	if st.RepliesDropped > 0 {
		fmt.Fprintf(&text, "  replies:  %d dropped by full reply queues\n", st.RepliesDropped)
	}
	if rssOK {
		sum["peak_rss_mb"] = rss
		fmt.Fprintf(&text, "  memory:   peak RSS %.1f MB (this edgectl process)\n", rss)
	}
	s.emit(strings.TrimSuffix(text.String(), "\n"), sum)
	if len(problems) > 0 {
		return errors.New(strings.Join(problems, "; "))
	}
	return nil
}

// emit prints a line of text, or with --json the object.
func (s *simulation) emit(text string, obj map[string]any) {
	if s.opt.json {
		b, _ := json.Marshal(obj)
		fmt.Fprintf(s.out, "%s\n", b)
		return
	}
	fmt.Fprintln(s.out, text)
}

// resultCounter counts the records in the results envelopes of the simulated devices.
// handle runs on the console client's goroutine, one message at a time.
type resultCounter struct {
	mu     sync.Mutex
	prefix string
	index  map[string]int
	perDev []uint64 // distinct records per device
	maxSeq []uint64
	total  uint64 // distinct records
	dups   uint64 // records that arrived again (resent after a reconnect)
	others uint64 // records of devices this run does not simulate
	bad    uint64 // messages that are not results envelopes
}

func newResultCounter(prefix string, ids []string) *resultCounter {
	c := &resultCounter{prefix: prefix, index: make(map[string]int, len(ids)), perDev: make([]uint64, len(ids)), maxSeq: make([]uint64, len(ids))}
	for i, id := range ids {
		c.index[id] = i
	}
	return c
}

func (c *resultCounter) handle(topic string, p []byte) {
	dev := strings.TrimSuffix(strings.TrimPrefix(topic, c.prefix+"/"), "/results")
	env, err := decodeEnvelope(p)
	c.mu.Lock()
	defer c.mu.Unlock()
	i, ours := c.index[dev]
	switch {
	case err != nil:
		c.bad++
		return
	case !ours:
		c.others += uint64(env.Count)
		return
	}
	// Within a message seqs are consecutive; anything at or below the highest seen is a
	// repeat.
	n := uint64(env.Count)
	fresh := n
	if env.LastSeq <= c.maxSeq[i] {
		fresh = 0
	} else if env.FirstSeq <= c.maxSeq[i] {
		fresh = min(n, env.LastSeq-c.maxSeq[i])
	}
	c.maxSeq[i] = max(c.maxSeq[i], env.LastSeq)
	c.perDev[i] += fresh
	c.total += fresh
	c.dups += n - fresh
}

// counts is a snapshot of a resultCounter.
type counts struct {
	total, dups, others, bad uint64
	perDevice                []uint64
}

func (c *resultCounter) snapshot() counts {
	c.mu.Lock()
	defer c.mu.Unlock()
	return counts{total: c.total, dups: c.dups, others: c.others, bad: c.bad, perDevice: append([]uint64(nil), c.perDev...)}
}

// resultsEnvelope is the part of edge-agent/results/v1 the counter reads: the records are
// counted by the envelope's count, not decoded.
type resultsEnvelope struct {
	Schema   string `json:"schema"`
	Count    int    `json:"count"`
	FirstSeq uint64 `json:"first_seq"`
	LastSeq  uint64 `json:"last_seq"`
}

func decodeEnvelope(p []byte) (resultsEnvelope, error) {
	var env resultsEnvelope
	if bytes.HasPrefix(p, []byte{0x1f, 0x8b}) {
		zr, err := gzip.NewReader(bytes.NewReader(p))
		if err != nil {
			return env, err
		}
		if p, err = io.ReadAll(io.LimitReader(zr, 64<<20)); err != nil {
			return env, err
		}
	}
	if err := json.Unmarshal(p, &env); err != nil {
		return env, err
	}
	if env.Schema != "edge-agent/results/v1" || env.Count < 0 {
		return env, fmt.Errorf("not a results envelope (schema %q)", env.Schema)
	}
	return env, nil
}

// deployTracker follows the replies to the one deploy command. handle runs on the console
// client's goroutine.
type deployTracker struct {
	changed chan struct{} // a milestone was reached (buffered 1; never blocks)

	mu        sync.Mutex
	index     map[string]int
	id, topic string
	sentAt    time.Time
	sendErr   string
	accepted  []bool
	final     []string // "done" or "failed" per device; "" until then
	nAccepted int
	nDone     int
	nFailed   int
	nProgress int
	failures  map[string]string // the first few failure reasons, by device
	allAcc    time.Time
	allDone   time.Time
	printed   int // milestones already handed out
}

// maxFailuresShown bounds the failure reasons kept for the summary.
const maxFailuresShown = 10

func newDeployTracker(ids []string) *deployTracker {
	t := &deployTracker{changed: make(chan struct{}, 1), index: make(map[string]int, len(ids)),
		accepted: make([]bool, len(ids)), final: make([]string, len(ids)), failures: map[string]string{}}
	for i, id := range ids {
		t.index[id] = i
	}
	return t
}

func (t *deployTracker) start(id, topic string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.id, t.topic, t.sentAt = id, topic, time.Now()
}

func (t *deployTracker) failedToSend(err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.sendErr = err.Error()
}

func (t *deployTracker) handle(_ string, p []byte) {
	var r command.Reply
	if json.Unmarshal(p, &r) != nil {
		return
	}
	now := time.Now()
	t.mu.Lock()
	defer t.mu.Unlock()
	i, ours := t.index[r.Device]
	if t.id == "" || r.ID != t.id || !ours {
		return
	}
	switch r.Status {
	case command.StatusAccepted:
		if !t.accepted[i] {
			t.accepted[i] = true
			if t.nAccepted++; t.nAccepted == len(t.accepted) {
				t.allAcc = now
				t.signal()
			}
		}
	case command.StatusProgress:
		t.nProgress++
	case command.StatusDone, command.StatusFailed:
		if t.final[i] != "" {
			return
		}
		t.final[i] = r.Status
		if r.Status == command.StatusFailed {
			t.nFailed++
			if len(t.failures) < maxFailuresShown {
				t.failures[r.Device] = r.Reason
			}
			return
		}
		if t.nDone++; t.nDone == len(t.final) {
			t.allDone = now
			t.signal()
		}
	}
}

func (t *deployTracker) signal() {
	select {
	case t.changed <- struct{}{}:
	default:
	}
}

type milestone struct {
	id, what string
	after    time.Duration
}

// milestones returns those reached and not returned before, in order.
func (t *deployTracker) milestones() []milestone {
	t.mu.Lock()
	defer t.mu.Unlock()
	var all []milestone
	if !t.allAcc.IsZero() {
		all = append(all, milestone{t.id, "accepted", t.allAcc.Sub(t.sentAt)})
		if !t.allDone.IsZero() {
			all = append(all, milestone{t.id, "done", t.allDone.Sub(t.sentAt)})
		}
	}
	out := all[min(t.printed, len(all)):]
	t.printed = len(all)
	return out
}

// deployReport is the deploy part of the summary.
type deployReport struct {
	ID           string            `json:"id"`
	Topic        string            `json:"topic"`
	SendError    string            `json:"send_error,omitempty"`
	Accepted     int               `json:"accepted"`
	Done         int               `json:"done"`
	Failed       int               `json:"failed"`
	Progress     int               `json:"progress_replies"`
	AcceptedAllS *float64          `json:"accepted_all_s"` // null until every device accepted
	DoneAllS     *float64          `json:"done_all_s"`     // null until every device finished done
	Failures     map[string]string `json:"failures,omitempty"`
}

func (t *deployTracker) report() deployReport {
	t.mu.Lock()
	defer t.mu.Unlock()
	r := deployReport{ID: t.id, Topic: t.topic, SendError: t.sendErr, Accepted: t.nAccepted, Done: t.nDone, Failed: t.nFailed,
		Progress: t.nProgress, Failures: t.failures}
	if !t.allAcc.IsZero() {
		v := t.allAcc.Sub(t.sentAt).Seconds()
		r.AcceptedAllS = &v
	}
	if !t.allDone.IsZero() {
		v := t.allDone.Sub(t.sentAt).Seconds()
		r.DoneAllS = &v
	}
	return r
}

// lockedWriter serialises writes from many goroutines.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// peakRSSMB is this process's peak resident memory (VmHWM), where /proc has it.
func peakRSSMB() (float64, bool) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, false
	}
	for l := range strings.SplitSeq(string(b), "\n") {
		if rest, ok := strings.CutPrefix(l, "VmHWM:"); ok {
			f := strings.Fields(rest)
			if len(f) > 0 {
				kb, err := strconv.ParseFloat(f[0], 64)
				return kb / 1024, err == nil
			}
		}
	}
	return 0, false
}

// secs formats a duration in seconds with two decimals.
func secs(d time.Duration) string { return strconv.FormatFloat(d.Seconds(), 'f', 2, 64) + "s" }

func optSecs(v *float64) string {
	if v == nil {
		return "never (not every device finished)"
	}
	return strconv.FormatFloat(*v, 'f', 2, 64) + "s"
}
