// Package outbox is the agent's durable outbox: every result (and event) the agent accepts is
// stored here, numbered, until the fleet has acknowledged it. Nothing an Append has returned
// for may be lost across kill -9 or power loss. It is the only importer of go.etcd.io/bbolt
// for results.
//
// An Outbox is one bbolt file holding named streams ("results", "events"). A Stream numbers
// records with a per-stream sequence that starts at 1, only grows and never repeats, also
// across restarts and compaction. Records are opaque bytes: the outbox never looks inside.
//
// Writes: one committer goroutine owns every write transaction. Append and Ack hand it an
// operation through a bounded channel and wait for its reply; it gathers what is queued
// (group commit), applies it in one transaction, which costs one fsync'd commit for many
// writers, and replies to each. Caps (count, bytes, age) are enforced by the committer in the
// same transaction, with every drop counted and the counts persisted.
//
// Reads run in read-only transactions, concurrently with the committer. Read waits for a
// record when there is none yet, so the MQTT link can park on it.
//
// Space: bbolt files never shrink, so the committer compacts the file (copy, fsync, rename)
// when it is mostly free pages.
//
// Imports: the standard library, bbolt, internal/durable and internal/boltcheck only. It must not import any other agent/*
// package (it stores opaque bytes), nor hal/* or models/*.
package outbox

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/edge-agent/edge-agent/internal/boltcheck"
	"github.com/edge-agent/edge-agent/internal/durable"
)

// Errors the outbox wraps, for decisions with errors.Is.
var (
	// ErrFull: a drop-newest stream is at its caps and refused the record.
	ErrFull = errors.New("outbox stream is full")
	// ErrClosed: the outbox was closed.
	ErrClosed = errors.New("outbox is closed")
	// ErrTooLarge: the record is larger than Options.MaxRecord or the stream's MaxBytes.
	ErrTooLarge = errors.New("outbox record is too large")
	// ErrDamaged: the file is not a usable outbox (damaged, or another program's file).
	// Open's error says to move it aside; the agent does so itself.
	ErrDamaged = errors.New("outbox file is damaged")
)

// Policy says what a stream does with a new record when it is at its caps.
type Policy string

// Policies.
const (
	DropOldest Policy = "drop-oldest" // default: evict the oldest records to make room
	DropNewest Policy = "drop-newest" // refuse the new record (Append returns ErrFull)
	Block      Policy = "block"       // Append waits until acks make room or ctx ends
)

// Defaults for zero fields of Caps and Options.
const (
	DefaultMaxCount        = 1_000_000
	DefaultMaxBytes        = 256 << 20
	DefaultMaxBatch        = 4096
	DefaultMaxRecord       = 1 << 20
	DefaultQueue           = 8192
	DefaultCompactMinBytes = 64 << 20

	lockTimeout   = 2 * time.Second
	defaultTick   = time.Second     // age expiry and housekeeping
	compactEvery  = 5 * time.Second // least time between two compaction checks
	compactSuffix = ".compact"
)

// Caps bound one stream. Zero values take defaults: MaxCount 1_000_000, MaxBytes 256 MiB,
// MaxAge 0 (no age limit), Policy DropOldest. Bytes count record data only.
type Caps struct {
	MaxCount int           `json:"max_count"`
	MaxBytes int64         `json:"max_bytes"`
	MaxAge   time.Duration `json:"max_age"`
	Policy   Policy        `json:"policy"`
}

// Options tune Open.
type Options struct {
	// Streams names the streams (e.g. "results", "events") and their caps; at least one.
	Streams map[string]Caps
	// MaxWait is how long the committer may wait for more operations after the first one of
	// a transaction. 0 (default): commit whatever is queued at once (the committer yields
	// the processor to writers about to send, but never waits on a timer); while one commit
	// runs, newcomers queue and share the next.
	MaxWait time.Duration
	// MaxBatch bounds the operations in one transaction (default 4096).
	MaxBatch int
	// MaxRecord is the largest record in bytes (default 1 MiB); larger ones get ErrTooLarge.
	MaxRecord int
	// Queue bounds the channel of pending operations (default 8192), and the appends a
	// Block stream keeps waiting for room.
	Queue int
	// CompactMinBytes: compaction is considered only when the file is larger (default 64 MiB).
	CompactMinBytes int64
	// Now is the clock for record timestamps and MaxAge (default time.Now).
	Now func() time.Time
	// Logger receives compactions and failures (default slog.Default()).
	Logger *slog.Logger

	// SalvageFrom names a damaged outbox file (moved aside): Open stores the records it can
	// read from it in the new file, under their own sequence numbers (salvage.go), and
	// SalvageReport says what it found.
	SalvageFrom string
	// Recognise, for a salvage, names the stream a record's data belongs to, or "" when it is
	// not a record (damaged). It places records found outside the file's tree and checks the
	// others (one it gives another stream is skipped). nil: the tree's records are taken
	// unchecked and the others are lost.
	Recognise func(data []byte) string
	// Reserve is the space kept in PATH.reserve for acknowledgements on a full disk
	// (space.go): default 4 MiB; negative: none.
	Reserve int64

	// For tests: housekeeping period (default 1 s), least time between compaction checks
	// (default 5 s), wait for the file lock (default 2 s).
	tick, compactEvery, lockTimeout time.Duration
	lease                           uint64 // sequence lease size (tests; default seqLease)
}

// Stats describe the outbox.
type Stats struct {
	FileBytes int64 `json:"file_bytes"`
	// DiskFull: the disk is full and new records are refused (counted in Refused) since
	// DiskFullSince.
	DiskFull      bool                   `json:"disk_full"`
	DiskFullSince time.Time              `json:"disk_full_since,omitzero"`
	Commits       uint64                 `json:"commits"` // write transactions committed
	Compactions   uint64                 `json:"compactions"`
	Streams       map[string]StreamStats `json:"streams"`
}

// StreamStats describe one stream. Count and Bytes are what it holds now; Appended, Acked
// and Dropped are totals over the file's life.
type StreamStats struct {
	Count    int       `json:"count"`
	Bytes    int64     `json:"bytes"`
	OldestTS time.Time `json:"oldest_ts,omitzero"` // append time of the oldest record; zero when empty
	LastSeq  uint64    `json:"last_seq"`           // the last sequence number given out
	Appended uint64    `json:"appended"`
	Acked    uint64    `json:"acked"`
	Dropped  Dropped   `json:"dropped"`
	Refused  Refused   `json:"refused"` // appends not stored since Open (a full disk, write errors)
	Caps     Caps      `json:"caps"`
}

// Dropped counts records that were lost on purpose, by cause.
type Dropped struct {
	Oldest uint64 `json:"oldest"` // evicted by drop-oldest to make room
	Newest uint64 `json:"newest"` // refused by drop-newest
	Age    uint64 `json:"age"`    // expired by MaxAge
}

// Outbox is an open outbox file. Its methods and its Streams' are safe for concurrent use.
type Outbox struct {
	path string
	opt  Options
	log  *slog.Logger

	// dbMu guards db against compaction and Close, which swap it: readers hold RLock for a
	// View. The committer writes through db without the lock: it is the only goroutine
	// that changes db, and Close does so only after the committer has stopped.
	dbMu       sync.RWMutex
	db         *bolt.DB
	fatal      error             // set when the file could not be reopened after compaction
	leased     map[string]uint64 // the sequence lease (seqlease.go); committer-owned after Open
	leaseRetry time.Time         // after a failed renewal, when to try again
	fresh      bool              // the file was new (or empty) at Open
	salvaged   *Salvage          // what Open salvaged from Options.SalvageFrom
	lease      leaseFile         // the lease file as Open found it
	leaseKnown bool              // it was there and readable
	// The numbering epoch (seqlease.go), set by Open; epochChanged: load must persist it.
	epoch        uint64
	epochNew     bool
	epochChanged bool
	// Disk-full mode (space.go): set by the committer, read by Stats.
	full      atomic.Bool
	fullSince atomic.Int64 // unix nano; 0 when not full
	// Committer-owned: failed commits not yet logged.
	failOps, failCommits int
	failLogged           time.Time

	streams map[string]*Stream
	list    []*Stream // by index, in name order

	ops chan *op
	// release asks the committer to drop the file's resident pages: readers nudge it after
	// each releaseEvery bytes read (resident_linux.go).
	release   chan struct{}
	readSince atomic.Int64
	closing   chan struct{} // closed by Close: stop taking operations
	done      chan struct{} // closed by the committer when it has stopped
	closed    atomic.Bool

	commits     atomic.Uint64
	compactions atomic.Uint64

	// Committer-owned.
	lastCompactCheck time.Time
}

// Open opens the outbox file at path, creating it (mode 0600) and its directory if needed.
// Another process holding the file makes Open fail after a short wait; a file that is not
// an outbox makes it fail with an error naming the file.
func Open(path string, opt Options) (*Outbox, error) {
	opt, err := opt.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("outbox %s: %w", path, err)
	}
	if err := durable.MkdirAll(filepath.Dir(path)); err != nil {
		return nil, fmt.Errorf("outbox %s: create its directory: %w", path, err)
	}
	_, statErr := os.Stat(path)
	created := errors.Is(statErr, os.ErrNotExist)
	fresh := created || emptyFile(path) // bbolt makes an empty file a new one
	// A .compact file is a compaction that a crash interrupted before its rename: the
	// original is whole, the copy may not be.
	if err := os.Remove(path + compactSuffix); err == nil {
		opt.Logger.Warn("outbox: removed an unfinished compaction", "file", path+compactSuffix)
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("outbox %s: remove stale %s: %w", path, path+compactSuffix, err)
	}
	// bbolt trusts the file it maps: a truncated one faults (SIGBUS) when it reads past the
	// end. Check the meta pages and size first.
	if _, err := boltcheck.Preflight(path); err != nil {
		if errors.Is(err, boltcheck.ErrDamaged) {
			return nil, fmt.Errorf("outbox %s is damaged (%v): move it aside; the agent will create a new one: %w", path, err, ErrDamaged)
		}
		return nil, fmt.Errorf("outbox %s: %w", path, err)
	}
	db, err := openBolt(path, opt.lockTimeout)
	if err != nil {
		return nil, err
	}
	o := &Outbox{
		path:    path,
		opt:     opt,
		log:     opt.Logger,
		db:      db,
		streams: make(map[string]*Stream, len(opt.Streams)),
		ops:     make(chan *op, opt.Queue),
		release: make(chan struct{}, 1),
		closing: make(chan struct{}),
		done:    make(chan struct{}),
	}
	names := make([]string, 0, len(opt.Streams))
	for name := range opt.Streams {
		names = append(names, name)
	}
	slices.Sort(names)
	for i, name := range names {
		s := &Stream{
			o:    o,
			name: name,
			idx:  i,
			bkt:  streamBucket(name),
			caps: opt.Streams[name],
			wake: make(chan struct{}),
		}
		if s.caps.Policy == Block {
			s.slots = make(chan struct{}, opt.Queue)
		}
		o.streams[name] = s
		o.list = append(o.list, s)
	}
	lf, err := readLeaseFile(path)
	if err != nil {
		// Without it a replaced outbox could repeat sequence numbers; this one continues from
		// its own (a new one starts a new epoch), and a new lease is written below.
		opt.Logger.Warn("outbox: the sequence lease file is unreadable; sequence numbers continue from the outbox file", "file", path, "err", err)
		lf = leaseFile{Streams: map[string]uint64{}}
	}
	o.lease, o.leaseKnown = lf, err == nil && lf.Schema != ""
	o.leased = lf.Streams
	o.fresh = fresh
	// Every page is read once (load walks them), faults and panics turned into errors.
	if err := boltcheck.Guard(o.load); err != nil {
		if errors.Is(err, boltcheck.ErrDamaged) {
			// bbolt may still hold its locks after a fault: abandon this handle (its Close
			// could wait forever); the caller moves the file aside.
			return nil, fmt.Errorf("outbox %s is damaged (%v): move it aside; the agent will create a new one: %w", path, err, ErrDamaged)
		}
		db.Close()
		return nil, err
	}
	if opt.SalvageFrom != "" {
		rep := o.salvage(opt.SalvageFrom)
		o.salvaged = &rep
	}
	if created {
		// bbolt fsyncs the file, not its directory entry: without this a power cut could
		// take the whole new file, and what was appended to it, away.
		if err := durable.Sync(filepath.Dir(path)); err != nil {
			db.Close()
			return nil, fmt.Errorf("outbox %s: fsync its directory: %w", path, err)
		}
	}
	if err := o.renewLeases(); err != nil {
		if !isNoSpace(err) {
			db.Close()
			return nil, err
		}
		o.enterFull(err) // the lease is written again once space returns
	}
	if err := o.ensureReserve(); err != nil {
		if isNoSpace(err) {
			o.enterFull(err)
		} else {
			o.log.Warn("outbox: no space reserve for acknowledgements on a full disk", "err", err)
		}
	}
	o.maybeCompact(true)
	if o.fatal != nil {
		return nil, o.fatal
	}
	go o.run()
	return o, nil
}

func (opt Options) withDefaults() (Options, error) {
	if len(opt.Streams) == 0 {
		return opt, errors.New("no streams declared: declare at least one in Options.Streams")
	}
	streams := make(map[string]Caps, len(opt.Streams))
	for name, c := range opt.Streams {
		if name == "" {
			return opt, errors.New("a stream has an empty name")
		}
		if c.MaxCount < 0 || c.MaxBytes < 0 || c.MaxAge < 0 {
			return opt, fmt.Errorf("stream %q: negative caps %+v: use 0 for the default", name, c)
		}
		if c.MaxCount == 0 {
			c.MaxCount = DefaultMaxCount
		}
		if c.MaxBytes == 0 {
			c.MaxBytes = DefaultMaxBytes
		}
		switch c.Policy {
		case "":
			c.Policy = DropOldest
		case DropOldest, DropNewest, Block:
		default:
			return opt, fmt.Errorf("stream %q: unknown policy %q: want %s, %s or %s", name, c.Policy, DropOldest, DropNewest, Block)
		}
		streams[name] = c
	}
	opt.Streams = streams
	if opt.MaxWait < 0 || opt.MaxBatch < 0 || opt.MaxRecord < 0 || opt.Queue < 0 || opt.CompactMinBytes < 0 {
		return opt, errors.New("negative option: use 0 for the default")
	}
	if opt.MaxBatch == 0 {
		opt.MaxBatch = DefaultMaxBatch
	}
	if opt.MaxRecord == 0 {
		opt.MaxRecord = DefaultMaxRecord
	}
	if opt.Queue == 0 {
		opt.Queue = DefaultQueue
	}
	if opt.CompactMinBytes == 0 {
		opt.CompactMinBytes = DefaultCompactMinBytes
	}
	if opt.Now == nil {
		opt.Now = time.Now
	}
	if opt.Logger == nil {
		opt.Logger = slog.Default()
	}
	if opt.tick <= 0 {
		opt.tick = defaultTick
	}
	if opt.compactEvery <= 0 {
		opt.compactEvery = compactEvery
	}
	if opt.lockTimeout <= 0 {
		opt.lockTimeout = lockTimeout
	}
	if opt.lease == 0 {
		opt.lease = seqLease
	}
	switch {
	case opt.Reserve == 0:
		opt.Reserve = defaultReserve
	case opt.Reserve < 0:
		opt.Reserve = 0
	}
	return opt, nil
}

// boltOptions: the map freelist and an unsynced freelist make commits cheaper (bbolt
// rebuilds the freelist at open by walking the file). Never NoSync: power loss.
func boltOptions(lockTimeout time.Duration) *bolt.Options {
	return &bolt.Options{
		Timeout:        lockTimeout,
		FreelistType:   bolt.FreelistMapType,
		NoFreelistSync: true,
	}
}

// openBolt opens path and turns bbolt's errors into ones that say what to do.
func openBolt(path string, lockTimeout time.Duration) (db *bolt.DB, err error) {
	opts := boltOptions(lockTimeout)
	var file *os.File
	opts.OpenFile = func(name string, flag int, perm os.FileMode) (*os.File, error) {
		f, err := os.OpenFile(name, flag, perm)
		file = f
		return f, err
	}
	defer func() {
		// bbolt panics on some damaged files instead of returning an error, leaving its
		// file open and locked: close it, so that the file can be moved aside and a new
		// outbox opened in its place.
		if r := recover(); r != nil {
			if file != nil {
				file.Close()
			}
			db, err = nil, fmt.Errorf("outbox %s is damaged (%v): move it aside; the agent will create a new one: %w", path, r, ErrDamaged)
		}
	}()
	db, err = bolt.Open(path, 0o600, opts)
	switch {
	case err == nil:
		return db, nil
	case errors.Is(err, bolt.ErrTimeout):
		return nil, fmt.Errorf("outbox %s is locked by another process (is another edge-agent running?)", path)
	case errors.Is(err, os.ErrPermission), errors.Is(err, os.ErrNotExist):
		return nil, fmt.Errorf("open outbox %s: %w", path, err)
	default:
		// Invalid, checksum or version mismatch, too small, unreadable meta pages.
		return nil, fmt.Errorf("outbox %s is not a usable outbox file (%v): move it aside; the agent will create a new one: %w", path, err, ErrDamaged)
	}
}

// Stream returns the named stream, or nil when Options.Streams did not declare it.
func (o *Outbox) Stream(name string) *Stream { return o.streams[name] }

// Stats returns counters for the outbox and each stream.
func (o *Outbox) Stats() Stats {
	st := Stats{
		Commits:     o.commits.Load(),
		Compactions: o.compactions.Load(),
		Streams:     make(map[string]StreamStats, len(o.list)),
	}
	if fi, err := os.Stat(o.path); err == nil {
		st.FileBytes = fi.Size()
	}
	for _, s := range o.list {
		st.Streams[s.name] = s.Stats()
	}
	if since := o.fullSince.Load(); o.full.Load() {
		st.DiskFull, st.DiskFullSince = true, time.Unix(0, since)
	}
	return st
}

// Close stops the committer after it has committed what was queued, and closes the file.
// Appends still waiting for room in a Block stream get ErrClosed. Later calls return
// ErrClosed.
func (o *Outbox) Close() error {
	if !o.closed.CompareAndSwap(false, true) {
		return ErrClosed
	}
	close(o.closing)
	<-o.done
	o.dbMu.Lock()
	defer o.dbMu.Unlock()
	if o.db == nil {
		return o.fatal
	}
	// Write the freelist once on a clean close: the next Open then reads it instead of
	// walking every page of the file (seconds on an SD card with a large backlog, and every
	// page touched). After a crash the walk is still there to rebuild it.
	o.db.NoFreelistSync = false
	serr := o.db.Update(func(*bolt.Tx) error { return nil })
	if err := o.renewLeases(); err != nil { // the acknowledged marks as of now
		o.log.Warn("outbox: could not renew the sequence lease at close", "file", o.path, "err", err)
	}
	err := o.db.Close()
	o.db = nil
	if err == nil && serr != nil {
		o.log.Warn("outbox: could not save the free page list; the next start rebuilds it", "file", o.path, "err", serr)
	}
	if err != nil {
		return fmt.Errorf("close outbox %s: %w", o.path, err)
	}
	return nil
}

// view runs fn in a read-only transaction on the current file.
func (o *Outbox) view(fn func(*bolt.Tx) error) error {
	o.dbMu.RLock()
	defer o.dbMu.RUnlock()
	if o.db == nil {
		if o.fatal != nil {
			return o.fatal
		}
		return ErrClosed
	}
	return guard(func() error { return o.db.View(fn) })
}

// guard runs a transaction with a fault or panic of a damaged page turned into an error
// wrapping ErrDamaged: the operation fails, the process does not.
func guard(fn func() error) error {
	err := boltcheck.Guard(fn)
	if errors.Is(err, boltcheck.ErrDamaged) {
		return fmt.Errorf("%w: %v", ErrDamaged, err)
	}
	return err
}

// The operations Append and Ack hand to the committer.
type opKind uint8

const (
	opAppend opKind = iota
	opAck
)

// An op's state decides, exactly once, whether the committer applies it or its caller gave
// up on it: Append returns a ctx error only for a record that was not stored.
const (
	opPending int32 = iota
	opTaken
	opCancelled
)

type op struct {
	kind    opKind
	s       *Stream
	val     []byte // append: 8 bytes for the timestamp, then the data
	through uint64 // ack
	state   atomic.Int32
	reply   chan result // capacity 1: the committer never waits on a caller

	res result // set by the committer inside a transaction
}

type result struct {
	seq uint64
	err error
}

// send hands op to the committer and waits for its reply.
func (o *Outbox) send(ctx context.Context, op *op) (uint64, error) {
	select {
	case o.ops <- op:
	case <-ctx.Done():
		return 0, ctx.Err()
	case <-o.closing:
		return 0, ErrClosed
	}
	select {
	case r := <-op.reply:
		return r.seq, r.err
	case <-ctx.Done():
		if op.state.CompareAndSwap(opPending, opCancelled) {
			return 0, ctx.Err()
		}
		// The committer has it in a transaction: its outcome is one commit away.
		r := <-op.reply
		return r.seq, r.err
	case <-o.done:
		// The committer replies before it stops; an op still pending was queued after its
		// last drain and never will be applied.
		if op.state.CompareAndSwap(opPending, opCancelled) {
			return 0, ErrClosed
		}
		r := <-op.reply
		return r.seq, r.err
	}
}
