package store

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// recover puts the store back into a state that every method may rely on, whatever a crash
// interrupted. It runs in Open, with the lock held and nothing else using the store.
func (s *Store) recover() error {
	var errs []error
	fail := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}

	// Staging: nothing there is installed, and no one is unpacking while we own the lock.
	ents, err := readDir(s.dir("staging"))
	fail(err)
	for _, e := range ents {
		p := filepath.Join(s.dir("staging"), e.Name())
		s.log.Info("model store: removing a leftover staging entry", "path", p)
		fail(os.RemoveAll(p))
	}
	if len(ents) > 0 {
		fail(syncDir(s.dir("staging")))
	}

	// Temporary files of interrupted atomic writes; the files they were to replace are whole.
	isTmp := func(e os.DirEntry) bool { return strings.HasSuffix(e.Name(), tmpSuffix) }
	for _, d := range []string{s.root, s.dir("active"), s.dir("history"), s.dir("highest")} {
		fail(s.removeLeftovers(d, isTmp))
	}

	// History: cut a torn last line (a power cut during an append),
	// before anything below appends to it.
	hist, err := readDir(s.dir("history"))
	fail(err)
	for _, h := range hist {
		if h.Type().IsRegular() && strings.HasSuffix(h.Name(), ".jsonl") {
			fail(cutTornLine(filepath.Join(s.dir("history"), h.Name())))
		}
	}

	// Versions: finish interrupted deletes; drop directories that no Install completed.
	fail(s.removeLeftovers(s.dir("versions"), isTmp))
	models, err := readDir(s.dir("versions"))
	fail(err)
	for _, m := range models {
		if !m.IsDir() || isTmp(m) {
			continue
		}
		mdir := filepath.Join(s.dir("versions"), m.Name())
		fail(s.removeLeftovers(mdir, func(e os.DirEntry) bool {
			return strings.HasSuffix(e.Name(), deletingExt) || strings.HasSuffix(e.Name(), tmpSuffix)
		}))
		if checkName("model name", m.Name()) != nil {
			continue
		}
		vers, err := readDir(mdir)
		fail(err)
		for _, v := range vers {
			if !v.IsDir() || checkName("version", v.Name()) != nil {
				continue
			}
			if _, ok := s.installed(m.Name(), v.Name()); ok {
				continue
			}
			// Install writes version.json before the rename, so this never came from it whole.
			s.log.Warn("model store: removing a version without a valid "+MetaName, "model", m.Name(), "version", v.Name())
			if err := s.removeVersion(m.Name(), v.Name()); err != nil {
				fail(err)
				continue
			}
			s.history(m.Name(), v.Name(), "removed", "no valid "+MetaName+": not a complete install")
		}
	}

	// Pointers: each must name an installed version.
	ptrs, err := readDir(s.dir("active"))
	fail(err)
	for _, p := range ptrs {
		name, ok := strings.CutSuffix(p.Name(), ".json")
		if ok && p.Type().IsRegular() && checkName("model name", name) == nil {
			fail(s.repairPointer(name))
		}
	}
	return errors.Join(errs...)
}

// removeLeftovers removes the entries of dir that match, then fsyncs dir.
func (s *Store) removeLeftovers(dir string, match func(os.DirEntry) bool) error {
	ents, err := readDir(dir)
	if err != nil {
		return err
	}
	n := 0
	for _, e := range ents {
		if !match(e) {
			continue
		}
		p := filepath.Join(dir, e.Name())
		s.log.Info("model store: removing a leftover of an interrupted change", "path", p)
		if err := os.RemoveAll(p); err != nil {
			return err
		}
		n++
	}
	if n > 0 {
		return syncDir(dir)
	}
	return nil
}

// cutTornLine truncates a file after its last newline.
func cutTornLine(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil || fi.Size() == 0 {
		return err
	}
	last := make([]byte, 1)
	if _, err := f.ReadAt(last, fi.Size()-1); err != nil {
		return err
	}
	if last[0] == '\n' {
		return nil
	}
	b, err := io.ReadAll(f)
	if err != nil {
		return err
	}
	keep := bytes.LastIndexByte(b, '\n') + 1
	if err := f.Truncate(int64(keep)); err != nil {
		return fmt.Errorf("cut torn line of %s: %w", path, err)
	}
	return f.Sync()
}

// repairPointer makes active/<name>.json name an installed version, or removes it, and
// records a "pointer repaired" event saying why.
func (s *Store) repairPointer(name string) error {
	p, _, err := s.readPointer(name)
	var why string
	var np Pointer
	ok := false
	meta, installed := s.installed(name, p.Version)
	switch {
	case err != nil:
		why = fmt.Sprintf("the active pointer was unreadable (%v)", err)
		np, ok = s.pointerFromHistory(name)
	case !installed:
		why = fmt.Sprintf("active version %s is not installed", p.Version)
		if m, inst := s.installed(name, p.Previous); p.Previous != "" && inst {
			np = Pointer{Name: name, Version: p.Previous, Sequence: m.Sequence, ActivatedAt: s.now().UTC(), Reason: "repaired: " + why}
			ok = true
		}
	case p.Previous != "" && !s.isInstalled(name, p.Previous):
		why = fmt.Sprintf("previous version %s is not installed", p.Previous)
		np, ok = p, true
		np.Previous = ""
		np.Sequence = meta.Sequence
	case p.Sequence != meta.Sequence:
		why = fmt.Sprintf("the pointer's sequence %d is not %s's %d", p.Sequence, p.Version, meta.Sequence)
		np, ok = p, true
		np.Sequence = meta.Sequence
	default:
		return nil
	}
	if ok {
		if err := s.writePointer(np, "repair"); err != nil {
			return fmt.Errorf("repair pointer of %s (%s): %w", name, why, err)
		}
		why += "; active is now " + np.Version
		if np.Previous != "" {
			why += ", previous " + np.Previous
		}
	} else {
		if err := os.Remove(s.pointerPath(name)); err != nil {
			return fmt.Errorf("remove pointer of %s (%s): %w", name, why, err)
		}
		if err := syncDir(s.dir("active")); err != nil {
			return err
		}
		why += "; removed it: no installed version to fall back to (install or activate one)"
	}
	s.log.Warn("model store: repaired an active pointer", "model", name, "reason", why)
	s.history(name, np.Version, "pointer repaired", why)
	return nil
}

// pointerFromHistory rebuilds a pointer from the newest "activated" event that names an
// installed version, with the version activated before it as previous.
func (s *Store) pointerFromHistory(name string) (Pointer, bool) {
	evs, err := s.readHistory(name)
	if err != nil {
		return Pointer{}, false
	}
	var p Pointer
	found := false
	for i := len(evs) - 1; i >= 0; i-- {
		e := evs[i]
		if e.Event != "activated" || e.Name != name || checkName("version", e.Version) != nil {
			continue
		}
		if !found {
			if m, ok := s.installed(name, e.Version); ok {
				p = Pointer{Name: name, Version: e.Version, Sequence: m.Sequence, ActivatedAt: e.At, Reason: e.Reason}
				found = true
			}
			continue
		}
		if e.Version != p.Version {
			if s.isInstalled(name, e.Version) {
				p.Previous = e.Version
			}
			break
		}
	}
	return p, found
}

func (s *Store) isInstalled(name, version string) bool {
	_, ok := s.installed(name, version)
	return ok
}
