package rollout

// The state file: every rollout of this instance as JSON, rewritten atomically (temporary
// file, fsync, rename, fsync of the folder) at every transition, so that a crash leaves
// either the previous or the next state, never a torn one.

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"

	"github.com/edge-agent/edge-agent/internal/durable"
)

// maxStateBytes bounds the state file read at start.
const maxStateBytes = 256 << 20

type stateFile struct {
	Schema   string     `json:"schema"`
	Instance string     `json:"instance"`
	Rollouts []*Rollout `json:"rollouts"`
}

// loadState reads the state file; a missing file is an empty state.
func loadState(path string) ([]*Rollout, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("state file: %w", err)
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Size() > maxStateBytes {
		return nil, fmt.Errorf("state file %s is %d bytes, more than %d: it is not one edgectl serve wrote", path, fi.Size(), maxStateBytes)
	}
	var st stateFile
	dec := json.NewDecoder(f)
	if err := dec.Decode(&st); err != nil {
		return nil, fmt.Errorf("state file %s: %w: restore it from a backup or move it away to start empty", path, err)
	}
	if st.Schema != StateSchema {
		return nil, fmt.Errorf("state file %s has schema %q; this edgectl reads %q", path, st.Schema, StateSchema)
	}
	for _, r := range st.Rollouts {
		if r == nil || r.ID == "" || len(r.Stages) == 0 || r.Stage < 0 || r.Stage >= len(r.Stages) {
			return nil, fmt.Errorf("state file %s holds a damaged rollout record: restore it from a backup or move it away", path)
		}
	}
	return st.Rollouts, nil
}

// saveState writes the state file atomically.
func saveState(path, instance string, rollouts []*Rollout) error {
	b, err := json.MarshalIndent(stateFile{Schema: StateSchema, Instance: instance, Rollouts: rollouts}, "", "  ")
	if err != nil {
		return fmt.Errorf("encode state: %w", err)
	}
	if err := durable.WriteFile(path, append(b, '\n'), 0o640); err != nil {
		return fmt.Errorf("state file: %w", err)
	}
	return nil
}
