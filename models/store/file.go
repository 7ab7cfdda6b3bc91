package store

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/edge-agent/edge-agent/internal/durable"
)

// writeAtomic replaces path with data: it writes path.tmp, fsyncs it, renames it over path
// and fsyncs the directory, so a reader (or a reboot) sees the old or the new file whole.
// point names the crash points: <point>.write-tmp, .fsync-tmp, .rename, .fsync-dir.
func (s *Store) writeAtomic(path string, data []byte, point string) (err error) {
	tmp := path + tmpSuffix
	defer func() {
		if err != nil {
			os.Remove(tmp)
		}
	}()
	s.point(point + ".write-tmp")
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o640)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	s.point(point + ".fsync-tmp")
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	s.point(point + ".rename")
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	s.point(point + ".fsync-dir")
	if err := syncDir(filepath.Dir(path)); err != nil {
		return fmt.Errorf("fsync %s: %w", filepath.Dir(path), err)
	}
	return nil
}

// syncDir fsyncs a directory, making the renames and creations in it durable.
func syncDir(dir string) error { return durable.Sync(dir) }

// syncTree fsyncs every file and directory under dir, dir included.
func syncTree(dir string) error {
	return filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return durable.Sync(p)
	})
}

// countFiles counts the regular files under dir and refuses anything but regular files and
// directories: an installed version holds no links or devices.
func countFiles(dir string) (int, error) {
	n := 0
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		switch {
		case err != nil:
			return err
		case d.Type().IsRegular():
			n++
		case !d.IsDir():
			rel, _ := filepath.Rel(dir, p)
			return fmt.Errorf("staged %s is a %v, not a regular file or directory", rel, d.Type())
		}
		return nil
	})
	return n, err
}

// mkdirSynced makes dir (one level) if it is missing and fsyncs its parent.
func mkdirSynced(dir string) error {
	if fi, err := os.Stat(dir); err == nil && fi.IsDir() {
		return nil
	}
	if err := os.Mkdir(dir, 0o750); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	if err := syncDir(filepath.Dir(dir)); err != nil {
		return fmt.Errorf("fsync %s: %w", filepath.Dir(dir), err)
	}
	return nil
}

// readDir lists a directory; a missing one is empty.
func readDir(dir string) ([]os.DirEntry, error) {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	return ents, err
}
