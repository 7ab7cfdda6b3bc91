// Package durable holds the fsync helpers the crash-safe stores share (models/store,
// agent/outbox): a rename or a new file is durable only once its directory is synced too.
// It imports only the standard library.
package durable

import "os"

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
