// Package command owns fleet commands on the agent: decoding, signature and field checks,
// replay protection, dispatch to handlers, and replies. The MQTT link hands every message
// from a command topic to Router.Handle; the router answers on Options.Reply with
// accepted, progress, done or failed replies that carry the command's id.
//
// Handle never blocks: it checks the message, records its id (Options.Remember), replies
// accepted and queues it in a bounded queue; a fixed pool of workers started by Run runs the
// handlers. Every refusal is a failed reply whose reason says what was wrong and what to do
// (or, when no id can be read, a log line), and every refusal is counted in Stats.
//
// Imports: the standard library only. Signature checking (models/sign) and the replay
// memory (agent/state) are injected as funcs by agent.go; this package must not import
// agent/link, agent/outbox, agent/state, or any hal/* or models/* package.
package command

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// ReplySchema is the schema field of every reply.
const ReplySchema = "edge-agent/cmd-reply/v1"

// Reply statuses.
const (
	StatusAccepted = "accepted"
	StatusProgress = "progress"
	StatusDone     = "done"
	StatusFailed   = "failed"
)

// Defaults for zero fields of Options.
const (
	DefaultMaxBytes     = 64 << 10
	DefaultMaxSkew      = 5 * time.Minute
	DefaultMaxLifetime  = 24 * time.Hour
	DefaultQueue        = 16
	DefaultWorkers      = 2
	DefaultTimeout      = 10 * time.Minute
	DefaultRefusalBurst = 20
	DefaultRefusalEvery = time.Second

	// ProgressEvery is the least time between two progress replies of one command.
	ProgressEvery = 500 * time.Millisecond

	maxIDLen   = 128
	maxTypeLen = 64
)

// Command is one fleet command, as the fleet sends it (plain, or as the body of a signed
// envelope).
type Command struct {
	ID       string          `json:"id"` // 1..128 bytes of [A-Za-z0-9._:-]
	Type     string          `json:"type"`
	Args     json.RawMessage `json:"args,omitempty"`
	IssuedAt time.Time       `json:"issued_at"`
	Expires  time.Time       `json:"expires"` // required; after IssuedAt; at most MaxLifetime after it
	// Target is whom the command is for: "device:ID", "group:NAME" or "all". A signed command
	// must name one (the signature covers it, so a command signed for one device cannot be
	// replayed on another's topic); a device refuses a command addressed to someone else.
	Target string `json:"target,omitempty"`
}

// Targets of a command.
const (
	TargetAll    = "all"
	targetDevice = "device:"
	targetGroup  = "group:"
)

// ForDevice and ForGroup are the targets of one device and of one group.
func ForDevice(id string) string  { return targetDevice + id }
func ForGroup(name string) string { return targetGroup + name }

// Reply is one answer to a command, published on the device's /cmd/reply topic.
type Reply struct {
	Schema   string          `json:"schema"`
	ID       string          `json:"id"`
	Device   string          `json:"device"`
	Type     string          `json:"type,omitempty"`
	Status   string          `json:"status"` // accepted | progress | done | failed
	Reason   string          `json:"reason,omitempty"`
	Progress float64         `json:"progress,omitempty"` // 0..1 for progress replies
	Message  string          `json:"message,omitempty"`  // the handler's message for progress replies
	Result   json.RawMessage `json:"result,omitempty"`   // handler's result for done
	TS       time.Time       `json:"ts"`
}

// Progress reports how far a running command is: a fraction 0..1 and a short message. The
// router sends at most one progress reply per ProgressEvery for a command and drops the
// others; calls after the handler has returned are ignored. Safe for concurrent use.
type Progress func(fraction float64, message string)

// Handler runs one command. Its ctx ends at Options.Timeout or when Run's ctx ends. A nil
// error makes a done reply with result encoded as JSON (nil: no result); an error makes a
// failed reply with err.Error() as the reason. A panic is recovered and makes a failed reply.
type Handler func(ctx context.Context, c Command, progress Progress) (result any, err error)

// Options configure a Router. Device, Reply and Remember are required; zero values of the
// others take the defaults.
type Options struct {
	Device string
	// Groups are the fleet groups this device belongs to (targets "group:NAME" it takes).
	Groups []string
	// Handlers by command type; unknown types get a failed reply naming the known ones.
	Handlers map[string]Handler
	// Reply is called for every reply, from one goroutine at a time; it must not block for
	// long (the agent queues the reply for the link).
	Reply func(Reply)
	// Remember records a command id until it expires and reports whether it was already
	// recorded (the agent wires agent/state; tests pass an in-memory func).
	Remember func(id string, until time.Time) (seen bool, err error)
	// Verify checks signed envelopes {"body": <base64 of the command JSON>, "sig": <minisign
	// signature text>}: the signature, its key and its purpose. When nil there is no key, and
	// envelopes are refused.
	Verify func(body, sig []byte) error
	// AllowUnsigned takes plain command JSON as well as signed envelopes. It is an opt-out:
	// by default only signed commands run, and without Verify no command runs at all.
	AllowUnsigned bool
	// NoKeyHint ends the reason given for every command when there is neither Verify nor
	// AllowUnsigned: how to give the device a key.
	NoKeyHint string
	// Clock, when set, keeps the latest issued_at of the commands taken across restarts
	// (agent/state's command clock): High is read before the expiry check, which then judges
	// by the later of Now and High minus MaxSkew, so a device clock set back cannot make an
	// expired command (whose id is forgotten) valid again; Advance records each command taken.
	// A command issued before NotBefore is refused: the ids remembered until then were lost
	// (a damaged state file), so a replay of it could not be told apart.
	Clock interface {
		High() time.Time
		NotBefore() time.Time
		Advance(issued time.Time) error
	}
	// MaxBytes bounds a message (default 64 KiB).
	MaxBytes int
	// MaxSkew: an issued_at further in the future than this is refused (default 5m).
	MaxSkew time.Duration
	// MaxLifetime: expires - issued_at above this is refused (default 24h).
	MaxLifetime time.Duration
	// Queue bounds the accepted commands waiting for a worker (default 16); when it is
	// full, commands are refused as busy.
	Queue int
	// Workers is how many handlers run at once (default 2).
	Workers int
	// Timeout bounds each handler (default 10m).
	Timeout time.Duration
	// RefusalBurst and RefusalEvery rate-limit the answers to refused commands: at most
	// RefusalBurst at once, then one per RefusalEvery (defaults 20 and 1s). Over the rate a
	// refusal is counted (Stats.Suppressed) but gets no reply and no log line.
	RefusalBurst int
	RefusalEvery time.Duration
	// Now is the clock (default time.Now).
	Now func() time.Time
	// Logger (default slog.Default()).
	Logger *slog.Logger
}

// allowRefusal takes a token from the refusal bucket: RefusalBurst tokens, one more every
// RefusalEvery.
func (r *Router) allowRefusal() bool {
	r.limitMu.Lock()
	defer r.limitMu.Unlock()
	now := r.opt.Now()
	if r.refillAt.IsZero() {
		r.tokens, r.refillAt = float64(r.opt.RefusalBurst), now
	}
	if d := now.Sub(r.refillAt); d > 0 {
		r.tokens = min(float64(r.opt.RefusalBurst), r.tokens+float64(d)/float64(r.opt.RefusalEvery))
		r.refillAt = now
	}
	if r.tokens < 1 {
		return false
	}
	r.tokens--
	return true
}

// noteSuppression reports whether a suppression warning is due: at most one a minute.
func (r *Router) noteSuppression() bool {
	r.limitMu.Lock()
	defer r.limitMu.Unlock()
	now := r.opt.Now()
	if now.Sub(r.warnedAt) < time.Minute {
		return false
	}
	r.warnedAt = now
	return true
}

// Stats count commands by outcome. Received counts every message; the refusals (expired,
// malformed, oversize, bad_signature, busy, unknown type, failed Remember) and handler
// failures are all in Failed too, except those refused without a reply (no readable id);
// Replayed commands get no reply at all.
type Stats struct {
	Received     uint64 `json:"received"`
	Accepted     uint64 `json:"accepted"`
	Done         uint64 `json:"done"`
	Failed       uint64 `json:"failed"` // failed replies sent
	Replayed     uint64 `json:"replayed"`
	Expired      uint64 `json:"expired"`
	Malformed    uint64 `json:"malformed"` // not JSON, bad fields, or issued too far in the future
	Oversize     uint64 `json:"oversize"`
	BadSignature uint64 `json:"bad_signature"` // unsigned when required, signed when no key, or not verified
	Misaddressed uint64 `json:"misaddressed"`  // signed without a target, or for another device or group
	Busy         uint64 `json:"busy"`
	Refused      uint64 `json:"refused"`    // refused by the checks before dispatch (all of the above but busy)
	Suppressed   uint64 `json:"suppressed"` // of Refused, over the rate limit: no reply, no log line
}

// Router checks commands, runs them on a bounded worker pool and replies.
type Router struct {
	opt    Options
	log    *slog.Logger
	known  string // the handled types, for the unknown-type reason
	queue  chan *job
	queued atomic.Int64 // reserved queue slots: at most opt.Queue

	mu      sync.Mutex // guards stopped and the hand-off of jobs to the queue
	stopped bool
	started atomic.Bool

	replyMu sync.Mutex // one Reply call at a time

	received, accepted, done, failed, replayed, expired, malformed, oversize, badSig, misaddressed, busy atomic.Uint64
	refused, suppressed                                                                                  atomic.Uint64

	limitMu  sync.Mutex // guards the refusal bucket
	tokens   float64
	refillAt time.Time
	warnedAt time.Time
}

type job struct {
	cmd Command
	h   Handler
}

// New checks opt and returns a router. Call Run to start its workers.
func New(opt Options) (*Router, error) {
	switch {
	case opt.Device == "":
		return nil, errors.New("command router: Device is empty: set the device name")
	case opt.Reply == nil:
		return nil, errors.New("command router: Reply is nil: give it a func that publishes replies")
	case opt.Remember == nil:
		return nil, errors.New("command router: Remember is nil: give it the replay memory (agent/state)")
	case opt.MaxBytes < 0, opt.MaxSkew < 0, opt.MaxLifetime < 0, opt.Queue < 0, opt.Workers < 0, opt.Timeout < 0, opt.RefusalBurst < 0, opt.RefusalEvery < 0:
		return nil, fmt.Errorf("command router: negative limit in MaxBytes %d, MaxSkew %v, MaxLifetime %v, Queue %d, Workers %d, Timeout %v: use 0 for the default",
			opt.MaxBytes, opt.MaxSkew, opt.MaxLifetime, opt.Queue, opt.Workers, opt.Timeout)
	}
	for typ, h := range opt.Handlers {
		if h == nil || typ == "" {
			return nil, fmt.Errorf("command router: handler for type %q is nil or unnamed: remove it or give it a func", typ)
		}
	}
	if opt.MaxBytes == 0 {
		opt.MaxBytes = DefaultMaxBytes
	}
	if opt.MaxSkew == 0 {
		opt.MaxSkew = DefaultMaxSkew
	}
	if opt.MaxLifetime == 0 {
		opt.MaxLifetime = DefaultMaxLifetime
	}
	if opt.Queue == 0 {
		opt.Queue = DefaultQueue
	}
	if opt.Workers == 0 {
		opt.Workers = DefaultWorkers
	}
	if opt.Timeout == 0 {
		opt.Timeout = DefaultTimeout
	}
	if opt.RefusalBurst == 0 {
		opt.RefusalBurst = DefaultRefusalBurst
	}
	if opt.RefusalEvery == 0 {
		opt.RefusalEvery = DefaultRefusalEvery
	}
	if opt.Now == nil {
		opt.Now = time.Now
	}
	if opt.Logger == nil {
		opt.Logger = slog.Default()
	}
	opt.Handlers = maps.Clone(opt.Handlers)
	known := strings.Join(slices.Sorted(maps.Keys(opt.Handlers)), ", ")
	if known == "" {
		known = "none"
	}
	return &Router{
		opt:   opt,
		log:   opt.Logger.With("device", opt.Device),
		known: known,
		queue: make(chan *job, opt.Queue),
	}, nil
}

// Stats returns the counters.
func (r *Router) Stats() Stats {
	return Stats{
		Received:     r.received.Load(),
		Accepted:     r.accepted.Load(),
		Done:         r.done.Load(),
		Failed:       r.failed.Load(),
		Replayed:     r.replayed.Load(),
		Expired:      r.expired.Load(),
		Malformed:    r.malformed.Load(),
		Oversize:     r.oversize.Load(),
		BadSignature: r.badSig.Load(),
		Misaddressed: r.misaddressed.Load(),
		Refused:      r.refused.Load(),
		Suppressed:   r.suppressed.Load(),
		Busy:         r.busy.Load(),
	}
}

// Handle takes one message from a command topic. It never blocks on a handler and never
// panics: it checks the message, records its id, queues it and replies accepted, or replies
// failed with the reason (or only logs, when no id can be read). A replayed id gets no reply.
func (r *Router) Handle(payload []byte) {
	defer func() {
		if p := recover(); p != nil { // a bug here must not take the link down
			r.malformed.Add(1)
			r.log.Error("command: bug: Handle panicked; message dropped", "panic", p, "stack", string(debug.Stack()))
		}
	}()
	r.received.Add(1)
	c, ok := r.check(payload)
	if !ok {
		return
	}
	h := r.opt.Handlers[c.Type]
	if h == nil {
		r.fail(c.ID, c.Type, fmt.Sprintf("unknown command type %q: this agent handles %s; check the type, or update the agent", c.Type, r.known))
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.stopped {
		r.fail(c.ID, c.Type, "the agent is shutting down: issue the command again with a new id once it is back")
		return
	}
	if r.queued.Add(1) > int64(r.opt.Queue) {
		r.queued.Add(-1)
		r.busy.Add(1)
		r.fail(c.ID, c.Type, fmt.Sprintf("busy: %d commands are already waiting to run: issue it again later with a new id", r.opt.Queue))
		return
	}
	r.accepted.Add(1)
	r.reply(Reply{ID: c.ID, Type: c.Type, Status: StatusAccepted})
	r.queue <- &job{cmd: c, h: h} // never blocks: a slot was reserved above
}

// check runs the checks before dispatch, in order: size, JSON and envelope (and signature),
// fields, expiry, replay. It replies failed itself and reports whether c may run.
func (r *Router) check(payload []byte) (c Command, ok bool) {
	if len(payload) > r.opt.MaxBytes {
		r.oversize.Add(1)
		r.refuse(readID(payload[:r.opt.MaxBytes]), "", fmt.Sprintf("command is %d bytes, over the %d-byte limit: keep commands small and put large data behind a URL in args", len(payload), r.opt.MaxBytes))
		return c, false
	}
	body, signed, why := r.open(payload)
	if why != "" {
		r.badSig.Add(1)
		r.refuse(readID(body), "", why)
		return c, false
	}
	if err := json.Unmarshal(body, &c); err != nil {
		r.malformed.Add(1)
		r.refuse(readID(body), "", fmt.Sprintf("command is not valid JSON (%v): send %s", err, shape))
		return c, false
	}
	if why := r.checkFields(c); why != "" {
		r.malformed.Add(1)
		r.refuse(c.ID, c.Type, why)
		return c, false
	}
	if why := r.checkTarget(c.Target, signed); why != "" {
		r.misaddressed.Add(1)
		r.refuse(c.ID, c.Type, why)
		return c, false
	}
	now := r.opt.Now()
	if r.opt.Clock != nil {
		if floor := r.opt.Clock.High().Add(-r.opt.MaxSkew); floor.After(now) {
			now = floor // the device's clock is behind commands it has already taken
		}
	}
	if now.After(c.Expires) {
		r.expired.Add(1)
		r.refuse(c.ID, c.Type, fmt.Sprintf("command expired at %s (agent time %s): issue a new one with a later expires, and check the clocks",
			c.Expires.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339)))
		return c, false
	}
	if r.opt.Clock != nil {
		if nb := r.opt.Clock.NotBefore(); c.IssuedAt.Before(nb) {
			r.expired.Add(1)
			r.refuse(c.ID, c.Type, fmt.Sprintf("command issued at %s, before %s, when this device lost the command ids it remembered (a damaged state file): a replay of it cannot be told apart, so issue it again",
				c.IssuedAt.UTC().Format(time.RFC3339), nb.UTC().Format(time.RFC3339)))
			return c, false
		}
	}
	seen, err := r.opt.Remember(c.ID, c.Expires)
	if err != nil {
		r.log.Error("command: could not record the command id", "id", c.ID, "err", err)
		r.fail(c.ID, c.Type, fmt.Sprintf("could not record the command id for replay protection (%v): check the agent's state directory, then issue it again with a new id", err))
		return c, false
	}
	if seen {
		r.replayed.Add(1)
		r.log.Info("command: replayed id ignored", "id", c.ID, "type", c.Type)
		return c, false
	}
	if r.opt.Clock != nil {
		if err := r.opt.Clock.Advance(c.IssuedAt); err != nil {
			r.log.Error("command: could not record the command clock", "id", c.ID, "err", err)
			r.fail(c.ID, c.Type, fmt.Sprintf("could not record the command clock for replay protection (%v): check the agent's state directory, then issue it again with a new id", err))
			return c, false
		}
	}
	return c, true
}

const shape = `{"id", "type", "args", "issued_at", "expires"} with RFC 3339 times`

// open returns the command JSON of payload: payload itself (when unsigned commands are
// allowed), or the verified body of a signed envelope, and whether it was signed. why says
// why it is refused for its signature; body is then what an id may be read from.
func (r *Router) open(payload []byte) (body []byte, signed bool, why string) {
	const want = `send {"body": <base64 of the command JSON>, "sig": <minisign signature text>} signed with the fleet's command key`
	var env struct {
		Body *string `json:"body"`
		Sig  *string `json:"sig"`
	}
	envErr := json.Unmarshal(payload, &env)
	if r.opt.Verify == nil && !r.opt.AllowUnsigned {
		hint := r.opt.NoKeyHint
		if hint == "" {
			hint = "give the agent the fleet's command public key"
		}
		body := payload
		if envErr == nil && env.Body != nil { // the id to reply to is in the envelope's body
			body, _ = base64.StdEncoding.DecodeString(*env.Body)
		}
		return body, false, "this agent trusts no command key, so it takes no command: " + hint
	}
	if err := envErr; err != nil {
		if r.opt.AllowUnsigned {
			return payload, false, "" // decoding it as a command says what is wrong
		}
		return payload, false, fmt.Sprintf("command is not a signed envelope (%v) and this agent requires signed commands: %s", err, want)
	}
	if env.Body == nil && env.Sig == nil {
		if !r.opt.AllowUnsigned {
			return payload, false, "command is not signed and this agent requires signed commands: " + want
		}
		return payload, false, ""
	}
	var decoded []byte
	var decErr error
	if env.Body != nil {
		decoded, decErr = base64.StdEncoding.DecodeString(*env.Body)
	}
	switch {
	case r.opt.Verify == nil:
		return decoded, false, "command is a signed envelope but this agent has no key to verify it: configure the fleet's command public key on the agent, or send the plain command JSON"
	case env.Body == nil || env.Sig == nil:
		return decoded, false, "signed envelope needs both body and sig: " + want
	case decErr != nil:
		return nil, false, fmt.Sprintf("signed envelope body is not standard base64 (%v): %s", decErr, want)
	}
	if err := r.opt.Verify(decoded, []byte(*env.Sig)); err != nil {
		return decoded, false, fmt.Sprintf("command signature is not valid (%v): sign the command with the fleet's command key this agent trusts", err)
	}
	return decoded, true, ""
}

// checkTarget returns why a command with target is not for this device, or "". A signed
// command must name its target; an unsigned one (allowed only by opt-out) may leave it out.
func (r *Router) checkTarget(target string, signed bool) string {
	switch {
	case target == "" && signed:
		return `the signed command names no target: sign it with "target": "device:ID", "group:NAME" or "all" (edgectl does)`
	case target == "", target == TargetAll, target == ForDevice(r.opt.Device):
		return ""
	}
	if g, ok := strings.CutPrefix(target, targetGroup); ok && slices.Contains(r.opt.Groups, g) {
		return ""
	}
	groups := "no groups"
	if len(r.opt.Groups) > 0 {
		groups = "groups " + strings.Join(r.opt.Groups, ", ")
	}
	return fmt.Sprintf("the command is addressed to %q, not to this device (%s, %s): refused", target, ForDevice(r.opt.Device), groups)
}

// checkFields checks id, type and times; it returns why c is refused, or "".
func (r *Router) checkFields(c Command) string {
	if why := checkID(c.ID); why != "" {
		return why
	}
	switch {
	case c.Type == "":
		return fmt.Sprintf("command type is missing: set type to one of %s", r.known)
	case len(c.Type) > maxTypeLen:
		return fmt.Sprintf("command type is %d bytes, over the %d-byte limit: set type to one of %s", len(c.Type), maxTypeLen, r.known)
	case c.IssuedAt.IsZero():
		return "issued_at is missing: set it to the time the command was issued (RFC 3339)"
	case c.Expires.IsZero():
		return "expires is missing: every command needs an expiry time (RFC 3339) after issued_at"
	case !c.Expires.After(c.IssuedAt):
		return fmt.Sprintf("expires %s is not after issued_at %s: set an expiry after the issue time",
			c.Expires.UTC().Format(time.RFC3339), c.IssuedAt.UTC().Format(time.RFC3339))
	case c.Expires.Sub(c.IssuedAt) > r.opt.MaxLifetime:
		return fmt.Sprintf("command lives %v (issued_at to expires), over the %v limit: set an earlier expires",
			c.Expires.Sub(c.IssuedAt), r.opt.MaxLifetime)
	}
	if now := r.opt.Now(); c.IssuedAt.Sub(now) > r.opt.MaxSkew {
		return fmt.Sprintf("issued_at %s is %v ahead of the agent's clock %s (more than %v): check the clocks of the fleet server and the device",
			c.IssuedAt.UTC().Format(time.RFC3339), c.IssuedAt.Sub(now).Round(time.Second), now.UTC().Format(time.RFC3339), r.opt.MaxSkew)
	}
	return ""
}

// checkID returns why id is not a valid command id, or "".
func checkID(id string) string {
	if id == "" {
		return "command id is missing: give every command a unique id"
	}
	if len(id) > maxIDLen {
		return fmt.Sprintf("command id is %d bytes, over the %d-byte limit: use a shorter id", len(id), maxIDLen)
	}
	for i := 0; i < len(id); i++ {
		switch b := id[i]; {
		case 'a' <= b && b <= 'z', 'A' <= b && b <= 'Z', '0' <= b && b <= '9', b == '.', b == '_', b == ':', b == '-':
		default:
			return fmt.Sprintf("command id %q has the character %q at byte %d: use only letters, digits and . _ : -", id, rune(b), i)
		}
	}
	return ""
}

// readID finds a top-level "id" string in the JSON object at the start of b, which may be
// cut short or broken further on. It returns "" when there is none.
func readID(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return ""
	}
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return ""
		}
		key, _ := t.(string)
		if strings.EqualFold(key, "id") {
			t, err := dec.Token()
			if err != nil {
				return ""
			}
			id, _ := t.(string)
			return id
		}
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			return ""
		}
	}
	return ""
}

// refuse answers a command refused by the checks before dispatch: a failed reply when id is
// non-empty, and otherwise a log line (nobody could match the reply). Anyone on the broker can
// send such commands, so refusals are rate-limited (Options.RefusalBurst, RefusalEvery): over
// the rate a refusal is only counted (Stats.Suppressed), so a flood costs no replies, log lines
// or events.
func (r *Router) refuse(id, typ, why string) {
	r.refused.Add(1)
	if !r.allowRefusal() {
		r.suppressed.Add(1)
		if r.noteSuppression() {
			r.log.Warn("command refusals are rate-limited: refused commands get no reply and no log line while they keep coming; see the suppressed counter",
				"burst", r.opt.RefusalBurst, "every", r.opt.RefusalEvery, "suppressed", r.suppressed.Load())
		}
		return
	}
	if id == "" {
		r.log.Warn("command refused; no id to reply to", "reason", why)
		return
	}
	r.fail(id, typ, why)
}

func (r *Router) fail(id, typ, why string) {
	r.failed.Add(1)
	r.log.Warn("command refused", "id", id, "type", typ, "reason", why)
	r.reply(Reply{ID: id, Type: typ, Status: StatusFailed, Reason: why})
}

// reply fills in the common fields and hands rep to Options.Reply, one at a time.
func (r *Router) reply(rep Reply) {
	rep.Schema, rep.Device = ReplySchema, r.opt.Device
	r.replyMu.Lock()
	defer r.replyMu.Unlock()
	rep.TS = r.opt.Now()
	r.opt.Reply(rep)
}

// Run runs the workers until ctx ends, then waits for the running handlers (whose ctx ends
// with it) to return, and replies failed to the commands still queued. Later commands are
// refused as shutting down. Call it once.
func (r *Router) Run(ctx context.Context) {
	if !r.started.CompareAndSwap(false, true) {
		r.log.Error("command: bug: Router.Run called twice; the second call does nothing")
		return
	}
	var wg sync.WaitGroup
	for range r.opt.Workers {
		wg.Go(func() {
			for {
				select {
				case <-ctx.Done():
					return
				case j := <-r.queue:
					r.queued.Add(-1)
					if ctx.Err() != nil { // select picked the job over Done
						r.fail(j.cmd.ID, j.cmd.Type, shutDown)
						return
					}
					r.run(ctx, j)
				}
			}
		})
	}
	wg.Wait()
	r.mu.Lock()
	r.stopped = true
	var left []*job
	for len(r.queue) > 0 {
		left = append(left, <-r.queue)
		r.queued.Add(-1)
	}
	r.mu.Unlock()
	for _, j := range left {
		r.fail(j.cmd.ID, j.cmd.Type, shutDown)
	}
}

const shutDown = "the agent shut down before the command ran: issue it again with a new id once the agent is back"

// run runs one handler and sends its progress and final replies.
func (r *Router) run(ctx context.Context, j *job) {
	ctx, cancel := context.WithTimeout(ctx, r.opt.Timeout)
	defer cancel()
	c := j.cmd
	var (
		mu       sync.Mutex // orders progress replies and the final one
		finished bool
		last     time.Time
		sent     bool
	)
	progress := func(fraction float64, message string) {
		mu.Lock()
		defer mu.Unlock()
		now := r.opt.Now()
		if finished || (sent && now.Sub(last) < ProgressEvery) {
			return
		}
		sent, last = true, now
		if math.IsNaN(fraction) {
			fraction = 0
		}
		r.reply(Reply{ID: c.ID, Type: c.Type, Status: StatusProgress, Progress: min(max(fraction, 0), 1), Message: message})
	}
	result, err := r.call(ctx, j.h, c, progress)
	var raw json.RawMessage
	if err == nil && result != nil {
		if raw, err = json.Marshal(result); err != nil {
			err = fmt.Errorf("handler for %q returned a result that is not JSON (%v): fix the handler", c.Type, err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	finished = true
	if err != nil {
		r.fail(c.ID, c.Type, err.Error())
		return
	}
	r.done.Add(1)
	r.reply(Reply{ID: c.ID, Type: c.Type, Status: StatusDone, Result: raw})
}

// call runs h, turning a panic into an error.
func (r *Router) call(ctx context.Context, h Handler, c Command, progress Progress) (result any, err error) {
	defer func() {
		if p := recover(); p != nil {
			r.log.Error("command: handler panicked", "id", c.ID, "type", c.Type, "panic", p, "stack", string(debug.Stack()))
			result, err = nil, fmt.Errorf("handler for %q panicked (%v): this is an agent bug; report it with the agent's log", c.Type, p)
		}
	}()
	result, err = h(ctx, c, progress)
	if err != nil && err.Error() == "" {
		err = fmt.Errorf("handler for %q failed without a reason", c.Type)
	}
	return result, err
}
