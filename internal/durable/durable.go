// Package durable holds the fsync helpers the crash-safe stores share (models/store,
// agent/outbox): a rename or a new file is durable only once its directory is synced too.
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
