package outbox

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/edge-agent/edge-agent/internal/durable"
)

// compactTxBytes bounds one transaction of the copy, and so the memory it takes.
const compactTxBytes = 32 << 20

// maybeCompact compacts the file when it is larger than CompactMinBytes and less than a
// quarter of it is in use. Unless force, it looks at most once per compactEvery. Only the
// committer (or Open, before it starts) calls it.
func (o *Outbox) maybeCompact(force bool) {
	if o.db == nil {
		return
	}
	if !force && time.Since(o.lastCompactCheck) < o.opt.compactEvery {
		return
	}
	o.lastCompactCheck = time.Now()
	fi, err := os.Stat(o.path)
	if err != nil || fi.Size() <= o.opt.CompactMinBytes {
		return
	}
	used, err := o.usedBytes()
	if err != nil || used*4 >= fi.Size() {
		return
	}
	start := time.Now()
	if err := o.compact(); err != nil {
		o.log.Error("outbox: compaction failed; the file keeps its size", "file", o.path, "err", err)
		return
	}
	after := int64(0)
	if fi, err := os.Stat(o.path); err == nil {
		after = fi.Size()
	}
	o.compactions.Add(1)
	o.log.Info("outbox: compacted", "file", o.path, "before", fi.Size(), "after", after, "took", time.Since(start))
}

// usedBytes is what the file's pages in use take: the high-water mark less the free pages
// (free now, or once no reader holds them). It counts records, branch pages and bbolt's
// own overhead, of declared streams and of any other bucket alike.
func (o *Outbox) usedBytes() (int64, error) {
	var hwm int64
	if err := o.db.View(func(tx *bolt.Tx) error { hwm = tx.Size(); return nil }); err != nil {
		return 0, err
	}
	st := o.db.Stats()
	return hwm - int64(st.FreePageN+st.PendingPageN)*int64(o.db.Info().PageSize), nil
}

// compact copies every bucket (with its sequence) into path.compact, fsyncs it and renames
// it over the file. A crash before the rename leaves the original whole (Open deletes the
// copy); after it, the copy is complete. Readers keep reading the old file during the copy
// (only the committer writes, and it is busy here); they wait only for the swap.
func (o *Outbox) compact() (err error) {
	tmp := o.path + compactSuffix
	if err := os.Remove(tmp); err != nil && !os.IsNotExist(err) {
		return err
	}
	defer func() {
		if err != nil {
			os.Remove(tmp)
		}
	}()
	dst, err := bolt.Open(tmp, 0o600, boltOptions(o.opt.lockTimeout))
	if err != nil {
		return fmt.Errorf("create %s: %w", tmp, err)
	}
	if err := bolt.Compact(dst, o.db, compactTxBytes); err != nil {
		dst.Close()
		return fmt.Errorf("copy into %s: %w", tmp, err)
	}
	if err := dst.Close(); err != nil {
		return fmt.Errorf("close %s: %w", tmp, err)
	}
	// bbolt fsyncs its commits; this makes the file's size and metadata durable too
	// before the rename makes it the outbox.
	if err := durable.Sync(tmp); err != nil {
		return fmt.Errorf("fsync %s: %w", tmp, err)
	}

	o.dbMu.Lock()
	defer o.dbMu.Unlock()
	if err := o.db.Close(); err != nil {
		o.log.Error("outbox: close before compaction swap", "file", o.path, "err", err)
	}
	o.db = nil
	renameErr := os.Rename(tmp, o.path)
	if renameErr == nil {
		if err := durable.Sync(filepath.Dir(o.path)); err != nil {
			o.log.Error("outbox: fsync directory after compaction", "dir", filepath.Dir(o.path), "err", err)
		}
	}
	// Reopen whichever file is at path now: the copy, or the original if the rename failed.
	db, err := openBolt(o.path, o.opt.lockTimeout)
	if err != nil {
		o.fatal = fmt.Errorf("outbox %s could not be reopened after compaction: %w; restart the agent", o.path, err)
		return o.fatal
	}
	o.db = db
	if renameErr != nil {
		return fmt.Errorf("rename %s: %w", tmp, renameErr)
	}
	return nil
}
