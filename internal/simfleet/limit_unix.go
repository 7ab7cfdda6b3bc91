//go:build unix

package simfleet

import "syscall"

// OpenFileLimit is the process's soft limit on open files (Go raises it to the hard limit at
// start); every simulated device holds one socket. ok is false when it cannot be read.
func OpenFileLimit() (limit uint64, ok bool) {
	var r syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &r); err != nil {
		return 0, false
	}
	return r.Cur, true
}
