//go:build !linux

package outbox

// releaseResident is a Linux-only memory optimisation (resident_linux.go).
func (o *Outbox) releaseResident() {}

func (o *Outbox) readBytes(int) {}
