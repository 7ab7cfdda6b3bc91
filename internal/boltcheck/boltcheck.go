// Package boltcheck keeps a damaged bbolt file from stopping the agent. bbolt maps the file
// into memory and trusts what it finds there: a truncated file faults (SIGBUS) when a page
// past its end is read, and damaged pages make it panic. Preflight reads the two meta pages
// and the file's size before bbolt maps anything; Guard turns the faults and panics of a
// read into an error; MoveAside keeps a damaged file for inspection.
//
// It reads the on-disk layout itself (no bbolt import: only the packages that own a bbolt
// file import it, internal/depcheck): every bbolt file starts with two meta pages, and the
// valid one with the higher transaction id names the page size and the page count (the
// high-water mark) the file must hold.
package boltcheck

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"os"
	"runtime/debug"
	"time"
)

// ErrDamaged marks a file that is not a whole bbolt file.
var ErrDamaged = errors.New("damaged")

// The meta page: a 16-byte page header (id, flags, count, overflow), then the meta fields:
// magic, version, page size, flags (4 bytes each), the root bucket (root page, sequence),
// the freelist page, the page count, the transaction id and an FNV-1a checksum of the
// fields before it (8 bytes each). Little-endian on every board edge-agent runs on.
const (
	pageHeader  = 16
	metaMagic   = 0xED0CDAED
	metaVersion = 2
	metaLen     = 64 // the meta fields, checksum included
	sumAt       = 56 // the checksum's offset in the meta fields
	noFreelist  = 0xFFFFFFFFFFFFFFFF
	maxPageSize = 64 << 10
	minPageSize = 512
)

// Meta is what a valid meta page says.
type Meta struct {
	PageSize uint32
	Root     uint64
	Freelist uint64
	Pages    uint64 // the high-water mark: pages the file must hold
	TxID     uint64
}

func parseMeta(b []byte) (Meta, error) {
	if len(b) < pageHeader+metaLen {
		return Meta{}, errors.New("short page")
	}
	f := b[pageHeader : pageHeader+metaLen]
	le := binary.LittleEndian
	h := fnv.New64a()
	h.Write(f[:sumAt])
	switch {
	case le.Uint32(f[0:]) != metaMagic:
		return Meta{}, errors.New("no bbolt magic")
	case le.Uint32(f[4:]) != metaVersion:
		return Meta{}, fmt.Errorf("bbolt format version %d", le.Uint32(f[4:]))
	case h.Sum64() != le.Uint64(f[sumAt:]):
		return Meta{}, errors.New("checksum mismatch")
	}
	m := Meta{PageSize: le.Uint32(f[8:]), Root: le.Uint64(f[16:]), Freelist: le.Uint64(f[32:]), Pages: le.Uint64(f[40:]), TxID: le.Uint64(f[48:])}
	switch {
	case m.PageSize < minPageSize || m.PageSize > maxPageSize || m.PageSize&(m.PageSize-1) != 0:
		return Meta{}, fmt.Errorf("page size %d", m.PageSize)
	case m.Pages < 4 || m.Root < 2 || m.Root >= m.Pages || (m.Freelist != noFreelist && (m.Freelist < 2 || m.Freelist >= m.Pages)):
		return Meta{}, fmt.Errorf("pages %d, root %d, freelist %d do not fit together", m.Pages, m.Root, m.Freelist)
	}
	return m, nil
}

// Preflight checks path before bbolt opens it: a missing or empty file is fine (bbolt makes
// a new one); otherwise a valid meta page must exist, and the file must be at least as long
// as the pages the newest valid one names. The error wraps ErrDamaged and says why.
func Preflight(path string) (Meta, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return Meta{}, nil
	}
	if err != nil {
		return Meta{}, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return Meta{}, err
	}
	size := fi.Size()
	if size == 0 {
		return Meta{}, nil
	}
	first := make([]byte, pageHeader+metaLen)
	if _, err := io.ReadFull(f, first); err != nil {
		return Meta{}, fmt.Errorf("%w: %d bytes, too short for a bbolt file", ErrDamaged, size)
	}
	m0, err0 := parseMeta(first)
	// The second meta page sits one page in; without a valid first page its size is a guess.
	sizes := []uint32{m0.PageSize}
	if err0 != nil {
		sizes = []uint32{4096, 16384, 65536, 8192, 2048, 1024, 512, 32768}
	}
	var m1 Meta
	err1 := errors.New("not found")
	for _, ps := range sizes {
		b := make([]byte, pageHeader+metaLen)
		if _, err := f.ReadAt(b, int64(ps)); err != nil {
			continue
		}
		if m, err := parseMeta(b); err == nil && (err0 != nil || m.PageSize == ps) {
			m1, err1 = m, nil
			break
		} else if err0 == nil {
			err1 = err
		}
	}
	var m Meta
	switch {
	case err0 != nil && err1 != nil:
		return Meta{}, fmt.Errorf("%w: neither meta page is valid (first: %v; second: %v)", ErrDamaged, err0, err1)
	case err0 != nil:
		m = m1
	case err1 != nil || m0.TxID >= m1.TxID:
		m = m0
	default:
		m = m1
	}
	if need := int64(m.Pages) * int64(m.PageSize); size < need {
		return m, fmt.Errorf("%w: %d bytes, but its meta page names %d pages of %d bytes (%d bytes): truncated", ErrDamaged, size, m.Pages, m.PageSize, need)
	}
	return m, nil
}

// Guard runs fn, which reads a mapped bbolt file, with memory faults turned into panics
// (debug.SetPanicOnFault, for this goroutine) and any panic turned into an error wrapping
// ErrDamaged: a page damaged after the checks at open then fails one read, not the process.
// After a fault inside a transaction bbolt may still hold its locks: abandon that database
// (its Close can wait forever), move the file aside and open a new one.
func Guard(fn func() error) (err error) {
	old := debug.SetPanicOnFault(true)
	defer debug.SetPanicOnFault(old)
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%w: %v", ErrDamaged, r)
		}
	}()
	return fn()
}

// MoveAside renames a damaged file to PATH.damaged-<UTC time> and returns the new name.
func MoveAside(path string, now time.Time) (string, error) {
	moved := path + ".damaged-" + now.UTC().Format("20060102T150405Z")
	if _, err := os.Stat(moved); err == nil {
		moved = fmt.Sprintf("%s-%d", moved, now.UnixNano())
	}
	if err := os.Rename(path, moved); err != nil {
		return "", fmt.Errorf("move %s aside: %w", path, err)
	}
	return moved, nil
}

// Bucket is what Walk needs of a *bbolt.Bucket.
type Bucket[B any] interface {
	comparable
	ForEach(func(k, v []byte) error) error
	Bucket(name []byte) B
}

// Walk reads every key and value of b and of the buckets nested in it, touching each value's
// first and last byte (so its overflow pages are read too). Run it under Guard at open: a
// damaged page then fails here, as an error, rather than later in the middle of serving.
func Walk[B Bucket[B]](b B) error {
	var sink, none = byte(0), *new(B)
	err := b.ForEach(func(k, v []byte) error {
		if v == nil {
			if child := b.Bucket(k); child != none {
				return Walk(child)
			}
			return nil
		}
		if len(v) > 0 {
			sink ^= v[0] ^ v[len(v)-1]
		}
		return nil
	})
	_ = sink
	return err
}
