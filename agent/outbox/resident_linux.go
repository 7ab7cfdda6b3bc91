package outbox

import (
	"os"

	"golang.org/x/sys/unix"
)

// releaseMinBytes: below this the mapping's resident pages are not worth a system call.
const releaseMinBytes = 8 << 20

// releaseEvery is how many bytes readers read between releases: the most of the file a
// drain keeps resident.
const releaseEvery = 4 << 20

// readBytes counts what readers read and nudges the committer every releaseEvery bytes.
func (o *Outbox) readBytes(n int) {
	if o.readSince.Add(int64(n)) < releaseEvery {
		return
	}
	o.readSince.Store(0)
	select {
	case o.release <- struct{}{}:
	default: // a nudge is pending already
	}
}

// releaseResident drops the file's pages from this process's page tables (they stay in the
// page cache, so a later read is a minor fault, not disk I/O). bbolt reads through a
// read-only shared mmap: opening with an unsynced freelist walks every page, and draining a
// backlog reads every record, which would otherwise leave the whole file counted in the
// agent's RSS — 500 MB for a million results on a board with 1 GB.
//
// Only the committer calls it, between transactions: bbolt remaps only in write
// transactions, Open and compaction, all of which run on the committer, so the range
// [Info().Data, file size) is mapped while this runs. File size ≤ mapping size always holds
// for bbolt between transactions.
func (o *Outbox) releaseResident() {
	if o.db == nil {
		return
	}
	fi, err := os.Stat(o.path)
	if err != nil || fi.Size() < releaseMinBytes {
		return
	}
	page := int64(os.Getpagesize())
	size := (fi.Size() + page - 1) / page * page
	// The raw system call takes the address as a number, so no Go pointer is made from it.
	if _, _, errno := unix.Syscall(unix.SYS_MADVISE, o.db.Info().Data, uintptr(size), unix.MADV_DONTNEED); errno != 0 {
		o.log.Debug("outbox: madvise failed; RSS may include the file's pages", "err", errno)
	}
}
