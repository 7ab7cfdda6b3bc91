// Package durable holds the fsync helpers the crash-safe stores share (models/store,
// agent/outbox, agent/state, the fleet settings, the self-update and rollout state files): a
// rename or a new file is durable only once its directory is synced too.
// It imports only the standard library.
package durable

import (
	"fmt"
	"os"
	"path/filepath"
)

// Sync fsyncs a file or a directory.
func Sync(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	err = f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// MkdirAll is os.MkdirAll (mode 0700) that also fsyncs the parent of every directory it
// creates, so that they survive a power cut.
func MkdirAll(dir string) error {
	if fi, err := os.Stat(dir); err == nil {
		if !fi.IsDir() {
			return fmt.Errorf("%s is not a directory", dir)
		}
		return nil
	}
	parent := filepath.Dir(dir)
	if parent != dir {
		if err := MkdirAll(parent); err != nil {
			return err
		}
	}
	if err := os.Mkdir(dir, 0o700); err != nil && !os.IsExist(err) {
		return err
	}
	return Sync(parent)
}

// WriteFile replaces path with data atomically and durably: a temporary file beside it is
// written and fsync'd, renamed over path, and the directory fsync'd. A crash at any point
// leaves either the old file or the new one, whole.
func WriteFile(path string, data []byte, perm os.FileMode) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	name := tmp.Name()
	_, err = tmp.Write(data)
	if err == nil {
		err = tmp.Chmod(perm)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(name, path)
	}
	if err != nil {
		os.Remove(name)
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := Sync(dir); err != nil {
		return fmt.Errorf("sync the folder of %s: %w", path, err)
	}
	return nil
}
