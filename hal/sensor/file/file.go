// Package file is the "file" source kind: a single file, or a directory watched for new
// files (PNG, JPEG, NumPy .npy, raw .raw/.bin tensors). It imports nothing from agent/.
//
// A directory is read in name order, then polled; a file is read once its size and
// modification time are the same on two polls in a row, so a camera still writing it is not
// caught half way. A file that cannot be decoded is reported and skipped, and the folder goes
// on: one corrupt picture must not stop a watched folder. It is read again if it changes.
package file

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/edge-agent/edge-agent/hal/sensor"
	"github.com/edge-agent/edge-agent/hal/sensor/internal/pace"
)

func init() { sensor.Kinds.Register("file", New) }

const (
	// MaxFileBytes bounds one input file, so a stray video or disk image in the folder costs
	// an error message rather than the board's memory.
	MaxFileBytes = 64 << 20
	defaultPoll  = 500 * time.Millisecond
)

// supported are the extensions read when no Pattern is given.
var supported = []string{".png", ".jpg", ".jpeg", ".npy", ".raw", ".bin"}

type source struct {
	name  string
	cfg   sensor.FileSpec
	poll  time.Duration
	pacer pace.Pacer
}

// New validates spec.File.
func New(spec sensor.Spec, _ sensor.Deps) (sensor.Source, error) {
	c := spec.File
	bad := func(field, format string, args ...any) error {
		return fmt.Errorf("source %q: file.%s: %s", spec.Name, field, fmt.Sprintf(format, args...))
	}
	if c.Path == "" {
		return nil, bad("path", "must not be empty")
	}
	if c.Pattern != "" {
		if _, err := filepath.Match(c.Pattern, "x"); err != nil {
			return nil, bad("pattern", "%q: %v", c.Pattern, err)
		}
	}
	if c.DType != "" && sensor.DTypeSize(c.DType) == 0 {
		return nil, bad("dtype", "%q is not one of float32, float64, float16, uint8, int8, int16, int32, int64, bool", c.DType)
	}
	if len(c.Shape) > 0 && sensor.Elements(c.Shape) < 0 {
		return nil, bad("shape", "%v: every dimension must be positive", c.Shape)
	}
	if (c.DType == "") != (len(c.Shape) == 0) {
		return nil, bad("dtype", "file.dtype and file.shape go together (raw tensors need both)")
	}
	if isRaw(c.Path) && c.DType == "" {
		return nil, bad("dtype", "%s is a raw tensor: set file.dtype and file.shape", c.Path)
	}
	if c.Poll < 0 {
		return nil, bad("poll", "must not be negative, got %v", c.Poll)
	}
	s := &source{name: spec.Name, cfg: c, poll: c.Poll, pacer: pace.Pacer{Period: spec.Period()}}
	if s.poll == 0 {
		s.poll = defaultPoll
	}
	return s, nil
}

func isRaw(path string) bool {
	ext := strings.ToLower(filepath.Ext(path))
	return ext == ".raw" || ext == ".bin"
}

// Run reads the file, or watches the directory, at Path. The interval (if any) spaces the
// files out; nothing is dropped for it, since the files wait on disk.
func (s *source) Run(ctx context.Context, emit sensor.Emit) error {
	st, err := os.Stat(s.cfg.Path)
	if err != nil {
		return fmt.Errorf("source %q: file.path: %w", s.name, err)
	}
	pacer := s.pacer
	if st.IsDir() {
		return s.watch(ctx, emit, &pacer)
	}
	for {
		if !pacer.Wait(ctx) {
			return nil
		}
		f, err := s.read(s.cfg.Path)
		if err != nil {
			return err // a single file that cannot be read is the source failing
		}
		emit(f)
		if !s.cfg.Loop {
			return nil
		}
	}
}

// seen is what a poll knows of one directory entry.
type seen struct {
	size int64
	mod  time.Time
	done bool // read (or reported) at this size and time
}

func (s *source) watch(ctx context.Context, emit sensor.Emit, pacer *pace.Pacer) error {
	files := map[string]*seen{} // bounded by the directory: entries that vanish are forgotten
	for first := true; ; first = false {
		ready, err := s.scan(files, first)
		if err != nil {
			return err
		}
		for _, name := range ready {
			if !pacer.Wait(ctx) {
				return nil
			}
			files[name].done = true
			f, err := s.read(filepath.Join(s.cfg.Path, name))
			if err != nil {
				sensor.Report(ctx, err)
				continue
			}
			emit(f)
		}
		if s.cfg.Loop && len(ready) == 0 && len(files) > 0 && allDone(files) {
			for _, e := range files {
				e.done = false // all read and nothing new: start the folder again
			}
		}
		if !pace.Sleep(ctx, s.poll) {
			return nil
		}
	}
}

func allDone(files map[string]*seen) bool {
	for _, e := range files {
		if !e.done {
			return false
		}
	}
	return true
}

// scan updates files from the directory and returns, in name order, the entries that are
// stable (same size and time as on the previous scan), not empty, and not read yet.
func (s *source) scan(files map[string]*seen, first bool) ([]string, error) {
	entries, err := os.ReadDir(s.cfg.Path) // sorted by name
	if err != nil {
		return nil, fmt.Errorf("source %q: file.path: %w", s.name, err)
	}
	present := make(map[string]bool, len(entries))
	var ready []string
	for _, de := range entries {
		name := de.Name()
		if !s.wanted(name) {
			continue
		}
		info, err := os.Stat(filepath.Join(s.cfg.Path, name)) // follows symlinks
		if err != nil || !info.Mode().IsRegular() {
			continue // removed meanwhile, or a directory, fifo, ...
		}
		present[name] = true
		e := files[name]
		switch {
		case e == nil:
			files[name] = &seen{size: info.Size(), mod: info.ModTime(), done: first && s.cfg.SkipExisting}
		case e.size != info.Size() || !e.mod.Equal(info.ModTime()):
			e.size, e.mod, e.done = info.Size(), info.ModTime(), false // new content: wait for it to settle
		case !e.done && e.size > 0:
			ready = append(ready, name)
		}
	}
	for name := range files {
		if !present[name] {
			delete(files, name)
		}
	}
	return ready, nil
}

// wanted filters names: hidden files are skipped (rsync and many writers create a dot-file
// and rename it into place when complete), then Pattern or the supported extensions apply.
func (s *source) wanted(name string) bool {
	if strings.HasPrefix(name, ".") {
		return false
	}
	if s.cfg.Pattern != "" {
		ok, _ := filepath.Match(s.cfg.Pattern, name)
		return ok
	}
	return slices.Contains(supported, strings.ToLower(filepath.Ext(name)))
}
