package state

// The command clock: the latest issued_at of the commands this device has taken, kept across
// restarts in its own small file (not in state.db, whose buckets older agents check). Command
// ids are remembered only until their commands expire; with this floor a clock set back on
// the device cannot make an expired command, whose id is forgotten, valid again.

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"sync"
	"time"

	"github.com/edge-agent/edge-agent/internal/durable"
)

// ClockSchema is the schema of the clock file.
const ClockSchema = "edge-agent/command-clock/v1"

// Clock is the persisted latest issued_at. Its methods are safe for concurrent use.
type Clock struct {
	path string
	mu   sync.Mutex
	high time.Time
	not  time.Time // NotBefore
	// Warning is set when the file was damaged and its modification time stands in.
	Warning string
}

type clockFile struct {
	Schema   string    `json:"schema"`
	IssuedAt time.Time `json:"issued_at"`
	// NotBefore: commands issued before it are refused (the ids remembered then were lost).
	NotBefore time.Time `json:"not_before,omitzero"`
}

// OpenClock reads the clock at path (none yet: the zero time). A damaged file does not stop
// the agent: its modification time, a time the clock had reached, stands in, and Warning says so.
func OpenClock(path string) (*Clock, error) {
	c := &Clock{path: path}
	b, err := os.ReadFile(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return c, nil
	case err != nil:
		return nil, fmt.Errorf("command clock %s: %w", path, err)
	}
	var f clockFile
	if err := json.Unmarshal(b, &f); err != nil || f.Schema != ClockSchema {
		fi, serr := os.Stat(path)
		if serr != nil {
			return nil, fmt.Errorf("command clock %s: %w", path, serr)
		}
		c.high = fi.ModTime().UTC()
		// Its not_before is lost with it: the modification time stands in for that too, so
		// commands issued before the file was last written are refused.
		c.not = c.high
		c.Warning = fmt.Sprintf("command clock %s is damaged; its modification time %s stands in, and commands issued before it are refused (it is rewritten with the next command)", path, c.high.Format(time.RFC3339))
		return c, nil
	}
	c.high, c.not = f.IssuedAt, f.NotBefore
	return c, nil
}

// NotBefore is the time before which commands are refused (zero: none are).
func (c *Clock) NotBefore() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.not
}

// RefuseBefore makes every command issued before t refused from now on, durably: the command
// ids remembered until t were lost, so their replays could not be told apart.
func (c *Clock) RefuseBefore(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !t.After(c.not) {
		return nil
	}
	return c.write(c.high, t)
}

func (c *Clock) write(high, not time.Time) error {
	b, err := json.Marshal(clockFile{Schema: ClockSchema, IssuedAt: high.UTC(), NotBefore: not.UTC()})
	if err != nil {
		return err
	}
	if err := durable.WriteFile(c.path, append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("command clock %s: %w", c.path, err)
	}
	c.high, c.not = high, not
	return nil
}

// High is the latest issued_at recorded.
func (c *Clock) High() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.high
}

// Advance records issued when it is later than High, durably (fsync'd) before it returns.
func (c *Clock) Advance(issued time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !issued.After(c.high) {
		return nil
	}
	return c.write(issued, c.not)
}
