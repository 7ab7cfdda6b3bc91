//go:build !unix

package simfleet

// OpenFileLimit is not known on this system; ok is false.
func OpenFileLimit() (limit uint64, ok bool) { return 0, false }
