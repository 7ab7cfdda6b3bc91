package command

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edge-agent/edge-agent/internal/testenv"
)

var quiet = slog.New(slog.DiscardHandler)

var t0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

// clock is the injected clock: it moves only when a test moves it.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time          { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Advance(d time.Duration) { c.mu.Lock(); defer c.mu.Unlock(); c.t = c.t.Add(d) }

// memory is an in-memory replay memory, standing in for agent/state.
type memory struct {
	mu  sync.Mutex
	ids map[string]time.Time
	err error
}

func (m *memory) Remember(id string, until time.Time) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.err != nil {
		return false, m.err
	}
	_, seen := m.ids[id]
	m.ids[id] = until
	return seen, nil
}

type harness struct {
	r       *Router
	clock   *clock
	mem     *memory
	replies chan Reply
}

// newT builds a router with device "dev-1", the injected clock at t0, an in-memory replay
// memory, and replies collected on a channel. opt's other fields are kept; without Verify it
// takes unsigned commands (AllowUnsigned), so that the tests of the other checks can send
// plain JSON. newStrict keeps the default instead.
func newT(t testing.TB, opt Options) *harness {
	t.Helper()
	if opt.Verify == nil {
		opt.AllowUnsigned = true
	}
	return newStrict(t, opt)
}

func newStrict(t testing.TB, opt Options) *harness {
	t.Helper()
	h := &harness{clock: &clock{t: t0}, mem: &memory{ids: map[string]time.Time{}}, replies: make(chan Reply, 1000)}
	opt.Device = "dev-1"
	opt.Now = h.clock.Now
	opt.Remember = h.mem.Remember
	opt.Logger = quiet
	opt.Reply = func(r Reply) {
		select {
		case h.replies <- r:
		default:
			t.Errorf("reply channel full; dropped %+v", r)
		}
	}
	r, err := New(opt)
	if err != nil {
		t.Fatal(err)
	}
	h.r = r
	return h
}

// run starts the workers until the test ends (or stop is called).
func (h *harness) run(t testing.TB) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); h.r.Run(ctx) }()
	stop = func() { cancel(); <-done }
	t.Cleanup(stop)
	return stop
}

// next waits for the next reply.
func (h *harness) next(t testing.TB) Reply {
	t.Helper()
	select {
	case r := <-h.replies:
		return r
	case <-time.After(10 * time.Second):
		t.Fatal("no reply after 10 s")
		return Reply{}
	}
}

// none checks that no reply is waiting. Handle replies before it returns, so after a Handle
// whose command is not running this is exact, not a timed wait.
func (h *harness) none(t testing.TB) {
	t.Helper()
	select {
	case r := <-h.replies:
		t.Errorf("got reply %+v; want none", r)
	default:
	}
}

func (h *harness) want(t testing.TB, id, status, reason string) Reply {
	t.Helper()
	r := h.next(t)
	if r.ID != id || r.Status != status || !strings.Contains(r.Reason, reason) || r.Schema != ReplySchema || r.Device != "dev-1" || r.TS.IsZero() {
		t.Errorf("reply: got %+v; want id %q, status %q, reason containing %q, schema, device and ts", r, id, status, reason)
	}
	return r
}

// cmd is the JSON of a command issued now (t0) that expires in an hour.
func cmd(id, typ string) []byte {
	return cmdAt(id, typ, `{"n":1}`, t0, t0.Add(time.Hour))
}

// cmdFor is cmd addressed to target.
func cmdFor(id, typ, target string) []byte {
	return cmdTo(id, typ, `{"n":1}`, target, t0, t0.Add(time.Hour))
}

func cmdAt(id, typ, args string, issued, expires time.Time) []byte {
	return cmdTo(id, typ, args, "", issued, expires)
}

func cmdTo(id, typ, args, target string, issued, expires time.Time) []byte {
	c := map[string]any{"id": id, "type": typ, "issued_at": issued, "expires": expires}
	if target != "" {
		c["target"] = target
	}
	if args != "" {
		c["args"] = json.RawMessage(args)
	}
	b, err := json.Marshal(c)
	if err != nil {
		panic(err)
	}
	return b
}

func echo(ctx context.Context, c Command, _ Progress) (any, error) {
	return map[string]json.RawMessage{"echo": c.Args}, nil
}

func TestNew(t *testing.T) {
	ok := Options{Device: "d", Reply: func(Reply) {}, Remember: (&memory{}).Remember}
	for _, tc := range []struct {
		name string
		edit func(*Options)
		want string
	}{
		{"no device", func(o *Options) { o.Device = "" }, "Device"},
		{"no reply", func(o *Options) { o.Reply = nil }, "Reply"},
		{"no remember", func(o *Options) { o.Remember = nil }, "Remember"},
		{"negative queue", func(o *Options) { o.Queue = -1 }, "negative"},
		{"nil handler", func(o *Options) { o.Handlers = map[string]Handler{"x": nil} }, `"x"`},
	} {
		opt := ok
		tc.edit(&opt)
		if _, err := New(opt); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v; want an error naming %s", tc.name, err, tc.want)
		}
	}
	if _, err := New(ok); err != nil {
		t.Errorf("New with the required options: %v", err)
	}
}

// Every refusal in Handle: a failed reply with a reason that says what was wrong, or no
// reply when no id can be read, and the right counter.
func TestRefusals(t *testing.T) {
	testenv.NoGoroutineLeaks(t)
	big := `"` + strings.Repeat("x", 600) + `"`
	for _, tc := range []struct {
		name    string
		payload []byte
		id      string // "": no reply
		reason  string
		counter func(Stats) uint64
	}{
		{"oversize with id", []byte(`{"id": "c-1", "type": "echo", "args": ` + big + `}`), "c-1", "bytes, over the 512-byte limit", func(s Stats) uint64 { return s.Oversize }},
		{"oversize without id", []byte(strings.Repeat("x", 513)), "", "", func(s Stats) uint64 { return s.Oversize }},
		{"oversize, id past the limit", []byte(`{"args": ` + big + `, "id": "c-0"}`), "", "", func(s Stats) uint64 { return s.Oversize }},
		{"not JSON, id readable", []byte(`{"id": "c-2", "type": `), "c-2", "not valid JSON", func(s Stats) uint64 { return s.Malformed }},
		{"not JSON", []byte(`hello`), "", "", func(s Stats) uint64 { return s.Malformed }},
		{"array", []byte(`[1, 2]`), "", "", func(s Stats) uint64 { return s.Malformed }},
		{"id not a string", []byte(`{"id": 5, "type": "echo"}`), "", "", func(s Stats) uint64 { return s.Malformed }},
		{"empty", nil, "", "", func(s Stats) uint64 { return s.Malformed }},
		{"bad time", []byte(`{"id": "c-3", "type": "echo", "issued_at": "yesterday"}`), "c-3", "not valid JSON", func(s Stats) uint64 { return s.Malformed }},
		{"bad id", cmd("bad id!", "echo"), "bad id!", "character ' ' at byte 3", func(s Stats) uint64 { return s.Malformed }},
		{"long id", cmd(strings.Repeat("a", 129), "echo"), strings.Repeat("a", 129), "over the 128-byte limit", func(s Stats) uint64 { return s.Malformed }},
		{"no type", cmd("c-4", ""), "c-4", "type is missing: set type to one of echo, slow", func(s Stats) uint64 { return s.Malformed }},
		{"no issued_at", cmdAt("c-5", "echo", "", time.Time{}, t0), "c-5", "issued_at is missing", func(s Stats) uint64 { return s.Malformed }},
		{"no expires", cmdAt("c-6", "echo", "", t0, time.Time{}), "c-6", "expires is missing", func(s Stats) uint64 { return s.Malformed }},
		{"expires before issued", cmdAt("c-7", "echo", "", t0, t0.Add(-time.Second)), "c-7", "is not after issued_at", func(s Stats) uint64 { return s.Malformed }},
		{"lives too long", cmdAt("c-8", "echo", "", t0, t0.Add(25*time.Hour)), "c-8", "over the 24h0m0s limit", func(s Stats) uint64 { return s.Malformed }},
		{"issued in the future", cmdAt("c-9", "echo", "", t0.Add(6*time.Minute), t0.Add(time.Hour)), "c-9", "6m0s ahead of the agent's clock", func(s Stats) uint64 { return s.Malformed }},
		{"expired", cmdAt("c-10", "echo", "", t0.Add(-2*time.Hour), t0.Add(-time.Second)), "c-10", "expired at 2025-03-01T11:59:59Z", func(s Stats) uint64 { return s.Expired }},
		{"unknown type", cmd("c-11", "reboot"), "c-11", `unknown command type "reboot": this agent handles echo, slow`, func(s Stats) uint64 { return s.Failed }},
		{"signed but no key", envelope(cmd("c-12", "echo"), "good"), "c-12", "no key to verify it", func(s Stats) uint64 { return s.BadSignature }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newT(t, Options{MaxBytes: 512, Handlers: map[string]Handler{"echo": echo, "slow": echo}})
			h.r.Handle(tc.payload)
			if tc.id == "" {
				h.none(t)
			} else {
				h.want(t, tc.id, StatusFailed, tc.reason)
				h.none(t)
			}
			st := h.r.Stats()
			if tc.counter(st) != 1 || st.Received != 1 || st.Accepted != 0 {
				t.Errorf("stats: got %+v; want received 1, accepted 0 and the case's counter 1", st)
			}
			if wantFailed := uint64(len(tc.id) / max(len(tc.id), 1)); st.Failed != wantFailed {
				t.Errorf("failed: got %d; want %d (one per failed reply)", st.Failed, wantFailed)
			}
		})
	}
}

// A replayed command does nothing: the handler runs once, the second delivery gets no
// reply, whether the first is still running or finished.
func TestReplay(t *testing.T) {
	testenv.NoGoroutineLeaks(t)
	release := make(chan struct{})
	var runs atomic.Int32
	h := newT(t, Options{Handlers: map[string]Handler{
		"echo": func(ctx context.Context, c Command, p Progress) (any, error) {
			runs.Add(1)
			<-release
			return echo(ctx, c, p)
		},
	}})
	h.run(t)
	h.r.Handle(cmdAt("c-1", "echo", `{"n":1}`, t0, t0.Add(time.Hour)))
	h.want(t, "c-1", StatusAccepted, "")
	h.r.Handle(cmd("c-1", "echo")) // while it runs
	h.none(t)
	close(release)
	if r := h.want(t, "c-1", StatusDone, ""); string(r.Result) != `{"echo":{"n":1}}` || r.Type != "echo" {
		t.Errorf("done reply: got result %s, type %q; want {\"echo\":{\"n\":1}}, echo", r.Result, r.Type)
	}
	h.r.Handle(cmd("c-1", "echo")) // after it finished
	h.none(t)
	if n := runs.Load(); n != 1 {
		t.Errorf("handler runs: got %d; want 1", n)
	}
	st := h.r.Stats()
	if st.Received != 3 || st.Accepted != 1 || st.Done != 1 || st.Replayed != 2 || st.Failed != 0 {
		t.Errorf("stats: got %+v; want received 3, accepted 1, done 1, replayed 2", st)
	}
	// The memory was asked to keep the id until the command expires.
	if got := h.mem.ids["c-1"]; !got.Equal(t0.Add(time.Hour)) {
		t.Errorf("remembered until: got %v; want %v", got, t0.Add(time.Hour))
	}
}

func TestHandlerErrorAndRememberError(t *testing.T) {
	testenv.NoGoroutineLeaks(t)
	h := newT(t, Options{Handlers: map[string]Handler{
		"fail": func(context.Context, Command, Progress) (any, error) {
			return nil, errors.New("disk full: free space under /var/lib/edge-agent")
		},
		"badresult": func(context.Context, Command, Progress) (any, error) { return func() {}, nil },
	}})
	h.run(t)
	h.r.Handle(cmd("c-1", "fail"))
	h.want(t, "c-1", StatusAccepted, "")
	if r := h.want(t, "c-1", StatusFailed, ""); r.Reason != "disk full: free space under /var/lib/edge-agent" {
		t.Errorf("reason: got %q; want the handler's error", r.Reason)
	}
	h.r.Handle(cmd("c-2", "badresult"))
	h.want(t, "c-2", StatusAccepted, "")
	h.want(t, "c-2", StatusFailed, "result that is not JSON")

	h.mem.mu.Lock()
	h.mem.err = errors.New("state file is read-only")
	h.mem.mu.Unlock()
	h.r.Handle(cmd("c-3", "fail"))
	h.want(t, "c-3", StatusFailed, "could not record the command id for replay protection (state file is read-only)")
}

func TestProgressRateLimited(t *testing.T) {
	testenv.NoGoroutineLeaks(t)
	var saved Progress
	var h *harness
	h = newT(t, Options{Handlers: map[string]Handler{"work": func(ctx context.Context, c Command, p Progress) (any, error) {
		saved = p
		p(0.1, "a") // sent: the first
		p(0.2, "b") // dropped: same instant
		h.clock.Advance(499 * time.Millisecond)
		p(0.3, "c") // dropped: 499 ms after a
		h.clock.Advance(time.Millisecond)
		p(7, "d")   // sent: 500 ms after a; clamped to 1
		p(0.9, "e") // dropped
		return nil, nil
	}}})
	h.run(t)
	h.r.Handle(cmd("c-1", "work"))
	h.want(t, "c-1", StatusAccepted, "")
	for _, want := range []struct {
		fraction float64
		message  string
	}{{0.1, "a"}, {1, "d"}} {
		if r := h.want(t, "c-1", StatusProgress, ""); r.Progress != want.fraction || r.Message != want.message {
			t.Errorf("progress: got %v %q; want %v %q", r.Progress, r.Message, want.fraction, want.message)
		}
	}
	if r := h.want(t, "c-1", StatusDone, ""); r.Result != nil {
		t.Errorf("done without a result: got result %s; want none", r.Result)
	}
	// Progress after the handler returned is ignored.
	h.clock.Advance(time.Hour)
	saved(0.5, "late")
	h.none(t)
}

func TestPanickingHandler(t *testing.T) {
	testenv.NoGoroutineLeaks(t)
	h := newT(t, Options{Workers: 1, Handlers: map[string]Handler{
		"boom": func(context.Context, Command, Progress) (any, error) { panic("index out of range") },
		"echo": echo,
	}})
	h.run(t)
	h.r.Handle(cmd("c-1", "boom"))
	h.want(t, "c-1", StatusAccepted, "")
	h.want(t, "c-1", StatusFailed, `handler for "boom" panicked (index out of range)`)
	// The router keeps working.
	h.r.Handle(cmd("c-2", "echo"))
	h.want(t, "c-2", StatusAccepted, "")
	h.want(t, "c-2", StatusDone, "")
}

func TestQueueFull(t *testing.T) {
	testenv.NoGoroutineLeaks(t)
	started, release := make(chan struct{}), make(chan struct{})
	h := newT(t, Options{Workers: 1, Queue: 1, Handlers: map[string]Handler{
		"block": func(ctx context.Context, c Command, p Progress) (any, error) {
			if c.ID == "c-1" {
				close(started)
			}
			<-release
			return nil, nil
		},
	}})
	h.run(t)
	h.r.Handle(cmd("c-1", "block"))
	h.want(t, "c-1", StatusAccepted, "")
	<-started // c-1 runs; the queue is empty
	h.r.Handle(cmd("c-2", "block"))
	h.want(t, "c-2", StatusAccepted, "") // waits in the queue
	h.r.Handle(cmd("c-3", "block"))
	h.want(t, "c-3", StatusFailed, "busy: 1 commands are already waiting to run: issue it again later with a new id")
	close(release)
	h.want(t, "c-1", StatusDone, "")
	h.want(t, "c-2", StatusDone, "")
	if st := h.r.Stats(); st.Busy != 1 || st.Accepted != 2 || st.Done != 2 || st.Failed != 1 {
		t.Errorf("stats: got %+v; want busy 1, accepted 2, done 2, failed 1", st)
	}
}

// Shutdown: the running handler's ctx ends, queued commands are failed, later ones refused.
func TestShutdown(t *testing.T) {
	testenv.NoGoroutineLeaks(t)
	started := make(chan struct{})
	h := newT(t, Options{Workers: 1, Handlers: map[string]Handler{
		"wait": func(ctx context.Context, c Command, p Progress) (any, error) {
			close(started)
			<-ctx.Done()
			return nil, fmt.Errorf("stopped: %w", ctx.Err())
		},
		"echo": echo,
	}})
	stop := h.run(t)
	h.r.Handle(cmd("c-1", "wait"))
	h.want(t, "c-1", StatusAccepted, "")
	<-started
	h.r.Handle(cmd("c-2", "echo"))
	h.want(t, "c-2", StatusAccepted, "")
	stop() // returns once the handler has
	h.want(t, "c-1", StatusFailed, "stopped: context canceled")
	h.want(t, "c-2", StatusFailed, "shut down before the command ran")
	h.r.Handle(cmd("c-3", "echo"))
	h.want(t, "c-3", StatusFailed, "shutting down")
}

func TestTimeout(t *testing.T) {
	testenv.NoGoroutineLeaks(t)
	h := newT(t, Options{Timeout: time.Nanosecond, Handlers: map[string]Handler{
		"wait": func(ctx context.Context, c Command, p Progress) (any, error) {
			<-ctx.Done()
			return nil, fmt.Errorf("update: %w", ctx.Err())
		},
	}})
	h.run(t)
	h.r.Handle(cmd("c-1", "wait"))
	h.want(t, "c-1", StatusAccepted, "")
	h.want(t, "c-1", StatusFailed, "update: context deadline exceeded")
}

// envelope signs body with the fake signature sig.
func envelope(body []byte, sig string) []byte {
	b, _ := json.Marshal(map[string]string{"body": base64.StdEncoding.EncodeToString(body), "sig": sig})
	return b
}

// The fake Verify accepts the signature "good" only: this package never sees a key. The
// agent's tests wire models/sign and sign commands with real minisign keys.
func fakeVerify(body, sig []byte) error {
	if string(sig) != "good" {
		return errors.New("signature does not match the fleet key")
	}
	return nil
}

func TestSignedEnvelopeRequired(t *testing.T) {
	testenv.NoGoroutineLeaks(t)
	h := newT(t, Options{Verify: fakeVerify, Handlers: map[string]Handler{"echo": echo}})
	h.run(t)
	for _, tc := range []struct {
		name, id, status, reason string
		payload                  []byte
	}{
		{"plain", "c-1", StatusFailed, "not signed and this agent requires signed commands", cmd("c-1", "echo")},
		{"bad signature", "c-2", StatusFailed, "command signature is not valid (signature does not match the fleet key)", envelope(cmd("c-2", "echo"), "forged")},
		{"no sig", "c-3", StatusFailed, "needs both body and sig", []byte(`{"body": "` + base64.StdEncoding.EncodeToString(cmd("c-3", "echo")) + `"}`)},
		{"signed, bad body", "c-4", StatusFailed, "not valid JSON", envelope([]byte(`{"id": "c-4", "type"`), "good")},
		{"signed", "c-5", StatusAccepted, "", envelope(cmdFor("c-5", "echo", "device:dev-1"), "good")},
	} {
		h.r.Handle(tc.payload)
		h.want(t, tc.id, tc.status, tc.reason)
	}
	h.want(t, "c-5", StatusDone, "")
	// No id to reply to: not base64, not JSON (refused as unsigned).
	h.r.Handle([]byte(`{"body": "!!!", "sig": "good"}`))
	h.r.Handle([]byte(`garbage`))
	h.none(t)
	if st := h.r.Stats(); st.BadSignature != 5 || st.Malformed != 1 || st.Done != 1 {
		t.Errorf("stats: got %+v; want bad_signature 5, malformed 1, done 1", st)
	}
	// A replayed signed command does nothing.
	h.r.Handle(envelope(cmdFor("c-5", "echo", "device:dev-1"), "good"))
	h.none(t)
}

// By default (no AllowUnsigned) a router without a key takes no command at all, signed or
// not, and says how to give it a key.
func TestNoKeyTakesNoCommand(t *testing.T) {
	testenv.NoGoroutineLeaks(t)
	h := newStrict(t, Options{NoKeyHint: "set commands.trusted_keys", Handlers: map[string]Handler{"echo": echo}})
	h.run(t)
	h.r.Handle(cmd("p-1", "echo"))
	h.want(t, "p-1", StatusFailed, "trusts no command key, so it takes no command: set commands.trusted_keys")
	h.r.Handle(envelope(cmdFor("p-2", "echo", "all"), "good"))
	h.want(t, "p-2", StatusFailed, "trusts no command key")
	h.none(t)
	if st := h.r.Stats(); st.BadSignature != 2 || st.Accepted != 0 {
		t.Errorf("stats: got %+v; want bad_signature 2, accepted 0", st)
	}
}

// A signed command runs only where it is addressed: its own device, one of its groups, or
// all; one signed without a target, or for another device or group, is refused (a command
// signed for device A and republished on B's topic does nothing on B). With the opt-out
// AllowUnsigned a plain command may leave the target out, but a wrong one is still refused.
func TestTargets(t *testing.T) {
	testenv.NoGoroutineLeaks(t)
	h := newStrict(t, Options{Verify: fakeVerify, AllowUnsigned: true, Groups: []string{"kitchen", "eu"}, Handlers: map[string]Handler{"echo": echo}})
	for _, tc := range []struct {
		id, target string
		signed     bool
		ok         bool
	}{
		{"t-1", "device:dev-1", true, true},
		{"t-2", "group:kitchen", true, true},
		{"t-3", "group:eu", true, true},
		{"t-4", "all", true, true},
		{"t-5", "", true, false},
		{"t-6", "device:dev-2", true, false},
		{"t-7", "group:garage", true, false},
		{"t-8", "dev-1", true, false},
		{"t-9", "group:", true, false},
		{"t-10", "", false, true},
		{"t-11", "device:dev-2", false, false},
	} {
		p := cmdFor(tc.id, "echo", tc.target)
		if tc.signed {
			p = envelope(p, "good")
		}
		h.r.Handle(p)
		if tc.ok {
			h.want(t, tc.id, StatusAccepted, "")
		} else {
			r := h.want(t, tc.id, StatusFailed, "")
			if tc.target == "" && !strings.Contains(r.Reason, "names no target") ||
				tc.target != "" && !strings.Contains(r.Reason, fmt.Sprintf("addressed to %q, not to this device (device:dev-1, groups kitchen, eu)", tc.target)) {
				t.Errorf("%s (target %q): reason %q does not say why", tc.id, tc.target, r.Reason)
			}
		}
	}
	if st := h.r.Stats(); st.Misaddressed != 6 || st.Accepted != 5 {
		t.Errorf("stats: got %+v; want misaddressed 6, accepted 5", st)
	}
}

func TestStatsJSON(t *testing.T) {
	b, err := json.Marshal(Stats{})
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	json.Unmarshal(b, &m)
	var keys []string
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	want := []string{"accepted", "bad_signature", "busy", "done", "expired", "failed", "malformed", "misaddressed", "oversize", "received", "refused", "replayed", "suppressed"}
	if !slices.Equal(keys, want) {
		t.Errorf("Stats JSON keys: got %v; want %v", keys, want)
	}
}

// A flood of refused commands (anyone on the broker can send them) is answered at most
// RefusalBurst times at once and then once per RefusalEvery; the rest are only counted. Valid
// signed commands in the middle of the flood still run.
func TestRefusalsRateLimited(t *testing.T) {
	testenv.NoGoroutineLeaks(t)
	h := newStrict(t, Options{Verify: fakeVerify, RefusalBurst: 5, RefusalEvery: time.Second, Queue: 100, Handlers: map[string]Handler{"echo": echo}})
	for i := range 50 {
		h.r.Handle(cmd(fmt.Sprintf("flood-%d", i), "echo")) // unsigned: refused
	}
	for i := range 5 {
		h.want(t, fmt.Sprintf("flood-%d", i), StatusFailed, "not signed")
	}
	h.none(t)
	h.r.Handle(envelope(cmdFor("real", "echo", "all"), "good"))
	h.want(t, "real", StatusAccepted, "")
	h.clock.Advance(2 * time.Second) // two more tokens
	for i := 50; i < 60; i++ {
		h.r.Handle(cmd(fmt.Sprintf("flood-%d", i), "echo"))
	}
	h.want(t, "flood-50", StatusFailed, "not signed")
	h.want(t, "flood-51", StatusFailed, "not signed")
	h.none(t)
	if st := h.r.Stats(); st.Refused != 60 || st.Suppressed != 53 || st.BadSignature != 60 || st.Accepted != 1 {
		t.Errorf("stats: %+v; want refused 60, suppressed 53, bad_signature 60, accepted 1", st)
	}
}

// memClock is an in-memory command clock, standing in for agent/state's file.
type memClock struct {
	mu        sync.Mutex
	high, not time.Time
}

func (c *memClock) High() time.Time      { c.mu.Lock(); defer c.mu.Unlock(); return c.high }
func (c *memClock) NotBefore() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.not }
func (c *memClock) Advance(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if t.After(c.high) {
		c.high = t
	}
	return nil
}

// A clock set back cannot replay a command that expired: its id is forgotten by then, but
// the command clock (the latest issued_at taken) says the device is past its expiry. Without
// a command clock the same replay would run, which is what the clock is for.
func TestClockSetBackCannotReplay(t *testing.T) {
	testenv.NoGoroutineLeaks(t)
	for _, withClock := range []bool{true, false} {
		opt := Options{Handlers: map[string]Handler{"echo": echo}}
		if withClock {
			opt.Clock = &memClock{}
		}
		h := newT(t, opt)
		old := cmdAt("old", "echo", `{}`, t0, t0.Add(time.Hour))
		h.r.Handle(old)
		h.want(t, "old", StatusAccepted, "")
		h.clock.Advance(3 * time.Hour)
		h.r.Handle(cmdAt("new", "echo", `{}`, t0.Add(3*time.Hour), t0.Add(4*time.Hour)))
		h.want(t, "new", StatusAccepted, "")
		// The ids expired and were forgotten; the device's clock is set back to t0+30m.
		h.mem.mu.Lock()
		clear(h.mem.ids)
		h.mem.mu.Unlock()
		h.clock.Advance(-150 * time.Minute)
		h.r.Handle(old)
		if withClock {
			h.want(t, "old", StatusFailed, "expired")
		} else {
			h.want(t, "old", StatusAccepted, "") // the hole the command clock closes
		}
	}
}

// After the ids were lost (a damaged state file), a command issued before the loss is refused
// even with a new id's look of a first delivery: its replay cannot be told apart. One issued
// after runs.
func TestCommandsIssuedBeforeALossAreRefused(t *testing.T) {
	testenv.NoGoroutineLeaks(t)
	c := &memClock{not: t0.Add(10 * time.Minute)}
	h := newT(t, Options{Handlers: map[string]Handler{"echo": echo}, Clock: c})
	h.clock.Advance(20 * time.Minute)
	h.r.Handle(cmdAt("before", "echo", `{}`, t0.Add(5*time.Minute), t0.Add(time.Hour)))
	h.want(t, "before", StatusFailed, "lost the command ids")
	h.r.Handle(cmdAt("after", "echo", `{}`, t0.Add(15*time.Minute), t0.Add(time.Hour)))
	h.want(t, "after", StatusAccepted, "")
}
