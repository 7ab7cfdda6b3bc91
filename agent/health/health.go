// Package health keeps the agent's named conditions: what is wrong or noteworthy right now,
// as a code ("delegate-fallback/mnist", "source-failing/cam"), a severity, the component
// that owns it and a message for the operator. Parts Set a condition when it starts and
// Clear it when it ends; the status page, /readyz and the MQTT status read the Tracker
// instead of each part inventing its own flags.
//
// A Tracker is a value the agent builds and hands to its parts; there is no global one.
// Subscribers get changes through a bounded channel: a slow subscriber misses changes,
// which are counted, and never holds up Set.
//
// health is a leaf: it imports nothing from agent/* or hal/*, so every part may import it.
package health

import (
	"cmp"
	"fmt"
	"slices"
	"sync"
	"time"
)

// Severity ranks a condition. The zero value is Info.
type Severity int

// Severities, least severe first.
const (
	Info Severity = iota
	Warning
	Error
)

// String returns "info", "warning" or "error".
func (s Severity) String() string {
	switch s {
	case Info:
		return "info"
	case Warning:
		return "warning"
	case Error:
		return "error"
	}
	return fmt.Sprintf("Severity(%d)", int(s))
}

func (s Severity) valid() bool { return s >= Info && s <= Error }

// MarshalText makes a Severity "info", "warning" or "error" in JSON and YAML.
func (s Severity) MarshalText() ([]byte, error) {
	if !s.valid() {
		return nil, fmt.Errorf("health: cannot marshal %v: want info, warning or error", s)
	}
	return []byte(s.String()), nil
}

// UnmarshalText accepts "info", "warning" or "error".
func (s *Severity) UnmarshalText(b []byte) error {
	switch string(b) {
	case "info":
		*s = Info
	case "warning":
		*s = Warning
	case "error":
		*s = Error
	default:
		return fmt.Errorf("health: unknown severity %q: want info, warning or error", b)
	}
	return nil
}

// Condition is one named state of the agent.
type Condition struct {
	// Code names the condition uniquely: "kind/subject", such as "source-failing/cam".
	Code     string   `json:"code"`
	Severity Severity `json:"severity"`
	// Component is the part that sets it ("sensor", "infer", "link").
	Component string `json:"component,omitempty"`
	// Message tells the operator what is wrong and what to do.
	Message string `json:"message"`
	// Since is when the code was first set after being clear. Set fills it; a Since
	// passed to Set is kept only when the code is new.
	Since time.Time `json:"since"`
}

// Change is one transition seen by a subscriber.
type Change struct {
	// Condition is the condition as set or, when Cleared, as it was before the clear.
	Condition Condition `json:"condition"`
	Cleared   bool      `json:"cleared,omitempty"`
}

// Tracker holds the current conditions. It is safe for concurrent use.
type Tracker struct {
	now func() time.Time

	mu         sync.Mutex
	conditions map[string]Condition
	subs       map[*subscriber]struct{}
	dropped    uint64
}

type subscriber struct {
	ch chan Change
}

// New returns an empty Tracker that stamps conditions with now (time.Now when nil).
func New(now func() time.Time) *Tracker {
	if now == nil {
		now = time.Now
	}
	return &Tracker{
		now:        now,
		conditions: make(map[string]Condition),
		subs:       make(map[*subscriber]struct{}),
	}
}

// Set records c, replacing any condition with the same code. Setting a condition that is
// already there unchanged (same severity, component and message) notifies nobody, so parts
// may call Set on every failure. Since keeps the time the code was first set.
//
// Set panics when c.Code is empty or c.Severity is not Info, Warning or Error: both are
// programming errors in the caller.
func (t *Tracker) Set(c Condition) {
	if c.Code == "" {
		panic("health: Set with an empty Code")
	}
	if !c.Severity.valid() {
		panic(fmt.Sprintf("health: Set %q with %v", c.Code, c.Severity))
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	old, exists := t.conditions[c.Code]
	switch {
	case exists:
		if c.Severity == old.Severity && c.Component == old.Component && c.Message == old.Message {
			return
		}
		c.Since = old.Since
	case c.Since.IsZero():
		c.Since = t.now()
	}
	t.conditions[c.Code] = c
	t.publishLocked(Change{Condition: c})
}

// Clear removes the condition with this code; clearing an absent code does nothing.
func (t *Tracker) Clear(code string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	c, ok := t.conditions[code]
	if !ok {
		return
	}
	delete(t.conditions, code)
	t.publishLocked(Change{Condition: c, Cleared: true})
}

// Get returns the condition with this code, if set.
func (t *Tracker) Get(code string) (Condition, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	c, ok := t.conditions[code]
	return c, ok
}

// List returns the current conditions, most severe first, then by code.
func (t *Tracker) List() []Condition {
	t.mu.Lock()
	out := make([]Condition, 0, len(t.conditions))
	for _, c := range t.conditions {
		out = append(out, c)
	}
	t.mu.Unlock()
	slices.SortFunc(out, func(a, b Condition) int {
		if c := cmp.Compare(b.Severity, a.Severity); c != 0 {
			return c
		}
		return cmp.Compare(a.Code, b.Code)
	})
	return out
}

// Worst returns the highest severity among the current conditions, and Info when there
// are none; use List to tell "nothing" from "only info".
func (t *Tracker) Worst() Severity {
	t.mu.Lock()
	defer t.mu.Unlock()
	worst := Info
	for _, c := range t.conditions {
		worst = max(worst, c.Severity)
	}
	return worst
}

// Subscribe returns a channel of changes holding up to buf of them (at least 1) and a
// function that ends the subscription and closes the channel; calling it again does
// nothing. Changes that find the channel full are dropped and counted by Dropped: the
// subscriber should re-read List when it cares about the whole picture.
func (t *Tracker) Subscribe(buf int) (<-chan Change, func()) {
	s := &subscriber{ch: make(chan Change, max(buf, 1))}
	t.mu.Lock()
	t.subs[s] = struct{}{}
	t.mu.Unlock()
	var once sync.Once
	return s.ch, func() {
		once.Do(func() {
			t.mu.Lock()
			defer t.mu.Unlock()
			delete(t.subs, s)
			close(s.ch) // under mu: publishLocked never sends on a closed channel
		})
	}
}

// Dropped returns how many changes subscribers have missed because their channel was full,
// over the Tracker's life.
func (t *Tracker) Dropped() uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.dropped
}

// publishLocked offers ch to every subscriber without waiting. t.mu is held, so each
// subscriber sees changes in the order they happened.
func (t *Tracker) publishLocked(ch Change) {
	for s := range t.subs {
		select {
		case s.ch <- ch:
		default:
			t.dropped++
		}
	}
}
