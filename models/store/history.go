package store

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// Record appends an event to a model's history: what the deploy manager decided
// ("rollback", "canary-failed", "probation-passed", ...). version may be empty.
func (s *Store) Record(name, version, event, reason string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.writable(); err != nil {
		return fmt.Errorf("store: record %s %s: %w", name, event, err)
	}
	if err := checkName("model name", name); err != nil {
		return fmt.Errorf("store: record %s %s: %w", name, event, err)
	}
	if version != "" {
		if err := checkName("version", version); err != nil {
			return fmt.Errorf("store: record %s %s: %w", name, event, err)
		}
	}
	if event == "" {
		return fmt.Errorf("store: record %s: empty event", name)
	}
	if err := s.appendEvent(Event{At: s.now().UTC(), Name: name, Version: version, Event: event, Reason: reason}); err != nil {
		return fmt.Errorf("store: record %s %s: %w", name, event, err)
	}
	return nil
}

// History returns a model's most recent events, oldest first and most recent last; limit
// <= 0 returns all that are kept. Lines that do not parse are skipped.
func (s *Store) History(name string, limit int) ([]Event, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.readable(); err != nil {
		return nil, fmt.Errorf("store: history %s: %w", name, err)
	}
	if err := checkName("model name", name); err != nil {
		return nil, fmt.Errorf("store: history %s: %w", name, err)
	}
	evs, err := s.readHistory(name)
	if err != nil {
		return nil, fmt.Errorf("store: history %s: %w", name, err)
	}
	if limit > 0 && len(evs) > limit {
		evs = evs[len(evs)-limit:]
	}
	return evs, nil
}

// history records an event the store itself makes after a commit point, where a failure
// must not turn a completed change into a reported error. Callers hold s.mu.
func (s *Store) history(name, version, event, reason string) {
	err := s.appendEvent(Event{At: s.now().UTC(), Name: name, Version: version, Event: event, Reason: reason})
	if err != nil {
		s.log.Warn("model store: record history", "model", name, "version", version, "event", event, "err", err)
	}
}

// appendEvent appends one JSON line with a single write and fsyncs it, then trims the file
// when it has grown past MaxHistoryBytes. Callers hold s.mu.
func (s *Store) appendEvent(e Event) error {
	line, err := json.Marshal(e)
	if err != nil {
		return err
	}
	line = append(line, '\n')
	path := s.historyPath(e.Name)
	_, err = os.Lstat(path)
	created := errors.Is(err, fs.ErrNotExist)
	s.point("history.append")
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(line); err != nil {
		f.Truncate(fi.Size()) // no torn line for the next append to follow
		f.Close()
		return err
	}
	s.point("history.fsync")
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if created {
		if err := syncDir(filepath.Dir(path)); err != nil {
			return err
		}
	}
	if fi.Size()+int64(len(line)) > MaxHistoryBytes {
		return s.trimHistory(path)
	}
	return nil
}

// trimHistory rewrites a history file atomically, keeping the lines of its newer half.
func (s *Store) trimHistory(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if len(b) <= MaxHistoryBytes {
		return nil
	}
	cut := len(b) / 2
	if i := bytes.IndexByte(b[cut:], '\n'); i >= 0 {
		cut += i + 1
	} else {
		cut = len(b)
	}
	if err := s.writeAtomic(path, b[cut:], "history.trim"); err != nil {
		return fmt.Errorf("trim %s: %w", path, err)
	}
	return nil
}

// readHistory parses a history file, skipping lines that do not parse. Callers hold s.mu.
func (s *Store) readHistory(name string) ([]Event, error) {
	b, err := os.ReadFile(s.historyPath(name))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var evs []Event
	for line := range bytes.Lines(b) {
		var e Event
		if json.Unmarshal(line, &e) == nil && e.Event != "" {
			evs = append(evs, e)
		}
	}
	return evs, nil
}

func (s *Store) historyPath(name string) string {
	return filepath.Join(s.dir("history"), name+".jsonl")
}
