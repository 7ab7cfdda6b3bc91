package outbox

// A full disk. bbolt grows its file as records come in; when the disk is full a commit fails,
// and with it every append and acknowledgement in it. Left alone that meant one error line per
// failed commit, results refused without a number (no gap to show the loss), and failed
// acknowledgements that dropped the MQTT connection. Instead:
//
//   - A reserve file (PATH.reserve, Options.Reserve bytes of incompressible data) is kept
//     beside the outbox. The first commit that fails for want of space puts the outbox in
//     disk-full mode and deletes the reserve, and the acknowledgements of that commit are
//     tried again at once: the space the reserve held is theirs, so the fleet link keeps
//     acknowledging (and deleting) what it delivered.
//   - In disk-full mode appends are refused at once with ErrNoSpace, without a commit, and
//     counted per stream (StreamStats.Refused); Stats.DiskFull says since when.
//   - Each housekeeping tick checks the filesystem; once it has room for the reserve and
//     1 MiB more, the reserve is written again and appends are taken again.
//   - Commit failures are logged at most once per failLogEvery, with a count.

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/edge-agent/edge-agent/internal/durable"
)

// ErrNoSpace: the disk holding the outbox is full; the record was not stored.
var ErrNoSpace = errors.New("no space left on the outbox's disk")

const (
	defaultReserve = 4 << 20
	reserveSuffix  = ".reserve"
	failLogEvery   = 10 * time.Second
)

// Refused counts appends that could not be stored since Open, by cause. They are not in the
// file (a full disk could not count them there).
type Refused struct {
	NoSpace uint64 `json:"no_space"` // the disk was full
	Failed  uint64 `json:"failed"`   // another write error
}

// isNoSpace reports a full disk or quota. bbolt formats some errors with %s, so the message
// is checked too.
func isNoSpace(err error) bool {
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) || errors.Is(err, ErrNoSpace) {
		return true
	}
	msg := err.Error()
	return strings.Contains(msg, syscall.ENOSPC.Error()) || strings.Contains(msg, syscall.EDQUOT.Error())
}

func reservePath(path string) string { return path + reserveSuffix }

// ensureReserve writes the reserve file when it is missing or short.
func (o *Outbox) ensureReserve() error {
	n := o.opt.Reserve
	if n <= 0 {
		return nil
	}
	path := reservePath(o.path)
	if fi, err := os.Stat(path); err == nil && fi.Size() >= n {
		return nil
	}
	tmp := path + ".tmp"
	err := writeReserve(tmp, n)
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err == nil {
		err = durable.Sync(filepath.Dir(path))
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("outbox %s: write the space reserve %s: %w", o.path, path, err)
	}
	return nil
}

// writeReserve writes n bytes that no filesystem can compress or share, and fsyncs them.
func writeReserve(path string, n int64) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	r := rand.NewChaCha8([32]byte{})
	buf := make([]byte, 64<<10)
	for left := n; left > 0 && err == nil; left -= int64(len(buf)) {
		r.Read(buf)
		_, err = f.Write(buf[:min(int64(len(buf)), left)])
	}
	if err == nil {
		err = f.Sync()
	}
	return errors.Join(err, f.Close())
}

// enterFull puts the outbox in disk-full mode and releases the reserve.
func (o *Outbox) enterFull(cause error) {
	if o.full.Swap(true) {
		return
	}
	o.fullSince.Store(time.Now().UnixNano())
	rerr := os.Remove(reservePath(o.path))
	if errors.Is(rerr, os.ErrNotExist) {
		rerr = nil
	}
	o.log.Error("outbox: the disk is full: new records are refused (and counted) until space returns; the space reserve is released for acknowledgements",
		"file", o.path, "reserve", reservePath(o.path), "err", cause, "reserve_err", rerr)
}

// checkSpace leaves disk-full mode once the filesystem has room for the reserve and 1 MiB
// more, and the reserve could be written again.
func (o *Outbox) checkSpace() {
	if !o.full.Load() {
		return
	}
	var fs syscall.Statfs_t
	if err := syscall.Statfs(filepath.Dir(o.path), &fs); err != nil {
		return
	}
	need := o.opt.Reserve + 1<<20
	if int64(fs.Bavail)*int64(fs.Bsize) < need {
		return
	}
	if err := o.ensureReserve(); err != nil {
		return
	}
	since := time.Unix(0, o.fullSince.Load())
	o.full.Store(false)
	o.fullSince.Store(0)
	refused := map[string]uint64{}
	for _, s := range o.list {
		refused[s.name] = s.noSpace.Load()
	}
	o.log.Warn("outbox: space returned: records are stored again", "file", o.path, "full_for", time.Since(since).Round(time.Second), "refused_total", refused)
}

// noteFailure logs a failed commit at most once per failLogEvery, with how many failed.
func (o *Outbox) noteFailure(err error, ops int) {
	o.failOps += ops
	o.failCommits++
	if time.Since(o.failLogged) < failLogEvery {
		return
	}
	o.log.Error("outbox: commit failed; the operations in it were refused", "file", o.path, "commits", o.failCommits, "ops", o.failOps,
		"over", failLogEvery, "err", err)
	o.failOps, o.failCommits, o.failLogged = 0, 0, time.Now()
}

// refuseAppend counts an append that was not stored and gives its error.
func (s *Stream) refuseAppend(cause error) error {
	if isNoSpace(cause) {
		s.noSpace.Add(1)
		return fmt.Errorf("outbox append to %q: %w (%v): the record was not stored", s.name, ErrNoSpace, cause)
	}
	s.failed.Add(1)
	return fmt.Errorf("outbox append to %q: %w", s.name, cause)
}
