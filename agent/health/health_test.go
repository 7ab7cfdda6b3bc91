package health

import (
	"encoding/json"
	"fmt"
	"reflect"
	"sync"
	"testing"
	"time"
)

// clock is a settable time source.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func codes(cs []Condition) []string {
	out := []string{}
	for _, c := range cs {
		out = append(out, c.Code)
	}
	return out
}

func TestListOrderAndWorst(t *testing.T) {
	tests := []struct {
		name      string
		set       []Condition
		clear     []string
		wantCodes []string
		wantWorst Severity
	}{
		{"empty", nil, nil, []string{}, Info},
		{"info only", []Condition{{Code: "engine/none", Severity: Info}}, nil, []string{"engine/none"}, Info},
		{
			name: "severity then code",
			set: []Condition{
				{Code: "source-failing/cam", Severity: Warning},
				{Code: "delegate-fallback/mnist", Severity: Warning},
				{Code: "outbox/full", Severity: Error},
				{Code: "clock/unsynced", Severity: Info},
			},
			wantCodes: []string{"outbox/full", "delegate-fallback/mnist", "source-failing/cam", "clock/unsynced"},
			wantWorst: Error,
		},
		{
			name:      "clearing the error",
			set:       []Condition{{Code: "outbox/full", Severity: Error}, {Code: "source-failing/cam", Severity: Warning}},
			clear:     []string{"outbox/full", "never-set"},
			wantCodes: []string{"source-failing/cam"},
			wantWorst: Warning,
		},
		{
			name:      "a later set of the same code replaces it",
			set:       []Condition{{Code: "link/down", Severity: Error}, {Code: "link/down", Severity: Info}, {Code: "b", Severity: Warning}},
			wantCodes: []string{"b", "link/down"},
			wantWorst: Warning,
		},
	}
	for _, tt := range tests {
		tr := New(newClock().Now)
		for _, c := range tt.set {
			tr.Set(c)
		}
		for _, code := range tt.clear {
			tr.Clear(code)
		}
		if got := codes(tr.List()); !reflect.DeepEqual(got, tt.wantCodes) {
			t.Errorf("%s: List() codes = %v; want %v", tt.name, got, tt.wantCodes)
		}
		if got := tr.Worst(); got != tt.wantWorst {
			t.Errorf("%s: Worst() = %v; want %v", tt.name, got, tt.wantWorst)
		}
	}
}

func TestSinceIsFirstSet(t *testing.T) {
	clk := newClock()
	start := clk.Now()
	tr := New(clk.Now)

	tr.Set(Condition{Code: "source-failing/cam", Severity: Warning, Component: "sensor", Message: "read: timeout"})
	clk.Advance(time.Minute)
	tr.Set(Condition{Code: "source-failing/cam", Severity: Error, Component: "sensor", Message: "read: device gone", Since: clk.Now()})
	c, ok := tr.Get("source-failing/cam")
	if !ok {
		t.Fatalf("Get() ok = false; want true")
	}
	if !c.Since.Equal(start) {
		t.Errorf("Since after a second Set = %v; want %v (the first Set)", c.Since, start)
	}
	if c.Severity != Error || c.Message != "read: device gone" {
		t.Errorf("condition = %+v; want the second Set's severity and message", c)
	}

	tr.Clear("source-failing/cam")
	clk.Advance(time.Minute)
	tr.Set(Condition{Code: "source-failing/cam", Severity: Warning})
	if c, _ := tr.Get("source-failing/cam"); !c.Since.Equal(start.Add(2 * time.Minute)) {
		t.Errorf("Since after Clear and Set = %v; want %v", c.Since, start.Add(2*time.Minute))
	}

	given := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	tr.Set(Condition{Code: "clock/unsynced", Severity: Info, Since: given})
	if c, _ := tr.Get("clock/unsynced"); !c.Since.Equal(given) {
		t.Errorf("Since given to a first Set = %v; want %v", c.Since, given)
	}
}

func TestSubscribe(t *testing.T) {
	tr := New(newClock().Now)
	ch, cancel := tr.Subscribe(16)
	defer cancel()

	tr.Set(Condition{Code: "a", Severity: Warning, Message: "one"})
	tr.Set(Condition{Code: "a", Severity: Warning, Message: "one"}) // unchanged: no change sent
	tr.Set(Condition{Code: "a", Severity: Error, Message: "two"})
	tr.Clear("a")
	tr.Clear("a") // absent: no change sent

	want := []struct {
		msg     string
		sev     Severity
		cleared bool
	}{{"one", Warning, false}, {"two", Error, false}, {"two", Error, true}}
	for i, w := range want {
		select {
		case c := <-ch:
			if c.Condition.Code != "a" || c.Condition.Message != w.msg || c.Condition.Severity != w.sev || c.Cleared != w.cleared {
				t.Errorf("change %d = %+v; want code a, message %q, severity %v, cleared %v", i, c, w.msg, w.sev, w.cleared)
			}
		default:
			t.Fatalf("change %d missing; want %+v", i, w)
		}
	}
	select {
	case c := <-ch:
		t.Errorf("extra change %+v; want none", c)
	default:
	}
	if got := tr.Dropped(); got != 0 {
		t.Errorf("Dropped() = %v; want 0", got)
	}
}

func TestSlowSubscriberDropsInsteadOfBlocking(t *testing.T) {
	tr := New(newClock().Now)
	slow, cancelSlow := tr.Subscribe(2)
	defer cancelSlow()
	fast, cancelFast := tr.Subscribe(10)
	defer cancelFast()

	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 5 {
			tr.Set(Condition{Code: fmt.Sprintf("c%d", i), Severity: Warning})
		}
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Set blocked on a subscriber nobody reads")
	}

	if got, want := tr.Dropped(), uint64(3); got != want {
		t.Errorf("Dropped() = %v; want %v", got, want)
	}
	if got, want := len(slow), 2; got != want {
		t.Errorf("slow subscriber holds %v changes; want %v", got, want)
	}
	if got, want := (<-slow).Condition.Code, "c0"; got != want {
		t.Errorf("slow subscriber's first change = %v; want %v (the oldest kept)", got, want)
	}
	if got, want := len(fast), 5; got != want {
		t.Errorf("fast subscriber holds %v changes; want %v", got, want)
	}
}

func TestSubscribeBufferAtLeastOne(t *testing.T) {
	tr := New(nil)
	ch, cancel := tr.Subscribe(0)
	defer cancel()
	tr.Set(Condition{Code: "a"})
	if got := len(ch); got != 1 {
		t.Errorf("Subscribe(0) channel holds %v; want 1", got)
	}
}

func TestCancelClosesAndStopsDelivery(t *testing.T) {
	tr := New(newClock().Now)
	ch, cancel := tr.Subscribe(4)
	cancel()
	cancel() // a second call does nothing
	if _, ok := <-ch; ok {
		t.Errorf("receive after cancel: ok = true; want a closed channel")
	}
	tr.Set(Condition{Code: "a", Severity: Error}) // must not send on the closed channel
	if got := tr.Dropped(); got != 0 {
		t.Errorf("Dropped() = %v; want 0 (no subscribers left)", got)
	}
}

func TestSetPanicsOnProgrammingErrors(t *testing.T) {
	tests := []struct {
		name string
		c    Condition
	}{
		{"empty code", Condition{Severity: Error}},
		{"bad severity", Condition{Code: "a", Severity: Severity(7)}},
	}
	for _, tt := range tests {
		func() {
			defer func() {
				if r := recover(); r == nil {
					t.Errorf("%s: Set did not panic; want a panic", tt.name)
				}
			}()
			New(nil).Set(tt.c)
		}()
	}
}

func TestSeverityJSON(t *testing.T) {
	tests := []struct {
		sev  Severity
		json string
	}{{Info, `"info"`}, {Warning, `"warning"`}, {Error, `"error"`}}
	for _, tt := range tests {
		b, err := json.Marshal(tt.sev)
		if err != nil || string(b) != tt.json {
			t.Errorf("Marshal(%v) = %s, %v; want %s, nil", tt.sev, b, err, tt.json)
		}
		var got Severity
		if err := json.Unmarshal([]byte(tt.json), &got); err != nil || got != tt.sev {
			t.Errorf("Unmarshal(%s) = %v, %v; want %v, nil", tt.json, got, err, tt.sev)
		}
	}
	if _, err := json.Marshal(Severity(9)); err == nil {
		t.Errorf("Marshal(Severity(9)): err = nil; want an error")
	}
	var s Severity
	if err := json.Unmarshal([]byte(`"fatal"`), &s); err == nil {
		t.Errorf(`Unmarshal("fatal"): err = nil; want an error`)
	}
}

func TestConditionJSON(t *testing.T) {
	tr := New(newClock().Now)
	tr.Set(Condition{Code: "delegate-fallback/mnist", Severity: Warning, Component: "infer", Message: "Edge TPU delegate failed; running on CPU"})
	b, err := json.Marshal(tr.List())
	if err != nil {
		t.Fatal(err)
	}
	want := `[{"code":"delegate-fallback/mnist","severity":"warning","component":"infer",` +
		`"message":"Edge TPU delegate failed; running on CPU","since":"2025-03-01T12:00:00Z"}]`
	if got := string(b); got != want {
		t.Errorf("JSON = %s; want %s", got, want)
	}
	var back []Condition
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(back, tr.List()) {
		t.Errorf("round trip = %+v; want %+v", back, tr.List())
	}
}

// TestConcurrentUse is for -race: setters, clearers, readers and subscribers at once.
func TestConcurrentUse(t *testing.T) {
	tr := New(newClock().Now)
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := range 200 {
				code := fmt.Sprintf("w%d/c%d", w, i%7)
				tr.Set(Condition{Code: code, Severity: Severity(i % 3), Message: fmt.Sprint(i)})
				if i%3 == 0 {
					tr.Clear(code)
				}
			}
		})
	}
	wg.Go(func() {
		for range 200 {
			_ = tr.List()
			_ = tr.Worst()
			_ = tr.Dropped()
		}
	})
	for range 3 {
		wg.Go(func() {
			for range 20 {
				ch, cancel := tr.Subscribe(3)
				for range 2 {
					select {
					case <-ch:
					default:
					}
				}
				cancel()
			}
		})
	}
	wg.Wait()
	for _, c := range tr.List() {
		if c.Since.IsZero() {
			t.Errorf("condition %+v has no Since; want it filled", c)
		}
	}
}
