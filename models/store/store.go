// Package store owns the on-disk model store: every installed, verified version of each
// bundle-served model, the active pointer per model, and an append-only history of what
// happened to them. It decides nothing about which version should serve (agent/deploy does);
// it makes sure that whatever it was told survives a crash or power cut at any instant.
//
// Layout under the root directory (the agent's state dir + "/models"):
//
//	.lock                          flock held by the owning process (holds its pid)
//	staging/<random>.unverified/   bundles being unpacked and verified (Stage, Discard)
//	versions/<name>/<version>/     installed bundle contents + version.json; immutable
//	active/<name>.json             the active pointer (Pointer)
//	history/<name>.jsonl           one Event per line, most recent last, bounded to ~1 MiB
//	highest/<name>.json            the highest sequence ever installed (Highest), kept after
//	                               the version itself is pruned: the anti-rollback mark
//
// Crash safety. Every change has one commit point, a rename(2), and everything it depends on
// is fsync'd before it and the directory holding it after it:
//   - Install fsyncs version.json and every file and directory of the staging tree, then
//     renames staging/<x>.unverified to versions/<name>/<version>. Before the rename the
//     version does not exist (staging garbage that Open removes); after it, it is complete.
//   - Activate writes active/<name>.json.tmp, fsyncs it and renames it over the pointer
//     (tailscale's atomic file write); the history is rewritten the same way when trimmed.
//   - A version is removed by renaming it to <version>.deleting first, then RemoveAll; Open
//     finishes deletes that a crash interrupted.
//
// Open recovers before it returns: it empties staging/, removes *.tmp files and *.deleting
// directories, removes version directories without a valid version.json, cuts a torn last
// line off history files, and repairs each active pointer so that it names an installed
// version (see Open).
//
// One process owns a store: Open takes an exclusive flock on root/.lock and refuses a second
// owner with ErrLocked. Other processes may look with OpenReadOnly. Within the owner a mutex
// serialises every method, so a *Store is safe for concurrent use.
//
// Installed versions are immutable by contract: nothing here writes into one after Install,
// and callers must not either (the files keep the modes the bundle reader gave them).
// The store needs a Unix filesystem (flock, rename over, directory fsync).
//
// Imports: the standard library and golang.org/x/sys/unix only; never agent/... or hal/...
// (models/* sit below agent/*).
package store

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

const (
	// MetaName is the file Install writes into every version directory. A bundle may not
	// carry a file of that name at its top level.
	MetaName = "version.json"
	// DefaultKeep is how many versions per model Options.Keep defaults to.
	DefaultKeep = 3
	// MinKeep is the least Options.Keep: the active and the previous version.
	MinKeep = 2
	// MaxHistoryBytes bounds a history file: past it, the file is rewritten keeping its
	// newer half.
	MaxHistoryBytes = 1 << 20

	lockName     = ".lock"
	tmpSuffix    = ".tmp"
	deletingExt  = ".deleting"
	stagingExt   = ".unverified"
	maxNameBytes = 128
)

// Errors the store wraps, for decisions with errors.Is.
var (
	ErrLocked       = errors.New("model store is owned by another process")
	ErrReadOnly     = errors.New("model store is open read-only")
	ErrClosed       = errors.New("model store is closed")
	ErrInvalidName  = errors.New("invalid model name or version")
	ErrExists       = errors.New("version is already installed")
	ErrNotInstalled = errors.New("version is not installed")
	ErrInUse        = errors.New("version is the active or the previous one")
	ErrNotStaging   = errors.New("not a staging directory of this store")
)

// Options tune Open.
type Options struct {
	// Keep is how many versions of each model are kept (default 3, at least 2); the active
	// and the previous version are kept beyond that.
	Keep int
	// Now is the clock for timestamps (default time.Now).
	Now func() time.Time
	// Logger receives what Open repaired and failures after a commit point (history,
	// pruning) that do not undo the change. Default slog.Default().
	Logger *slog.Logger
}

// VersionMeta describes an installed version; it is stored as version.json inside it.
type VersionMeta struct {
	Name      string    `json:"name"`
	Version   string    `json:"version"`
	Sequence  uint64    `json:"sequence"`
	KeyID     string    `json:"key_id,omitempty"`
	SHA256    string    `json:"sha256,omitempty"` // of the bundle archive
	Installed time.Time `json:"installed"`
	Files     int       `json:"files"` // regular files of the bundle (version.json aside)
}

// Pointer is active/<name>.json: the version a model serves.
type Pointer struct {
	Name        string    `json:"name"`
	Version     string    `json:"version"`
	Sequence    uint64    `json:"sequence"`
	Previous    string    `json:"previous"` // the version active before, "" if none
	ActivatedAt time.Time `json:"activated_at"`
	Reason      string    `json:"reason"`
}

// Event is one line of history/<name>.jsonl.
type Event struct {
	At      time.Time `json:"at"`
	Name    string    `json:"name"`
	Version string    `json:"version,omitempty"`
	Event   string    `json:"event"` // installed, activated, pruned, removed, pointer repaired, or what Record was given
	Reason  string    `json:"reason,omitempty"`
}

// Store is an open model store. See the package comment for what it guarantees.
type Store struct {
	root     string
	keep     int
	now      func() time.Time
	log      *slog.Logger
	readOnly bool

	mu     sync.Mutex
	lock   *os.File // the flock on root/.lock; nil when read-only
	closed bool

	// crashPoint, when set (tests only), is called with a name before every step whose
	// interruption must leave the store consistent: before each fsync and rename.
	crashPoint func(name string)
}

// Open opens (creating if needed) the store at root, takes ownership of it and recovers
// what a crash left behind. Each active pointer that does not name an installed version is
// repaired: it falls back to its previous version when that is installed, and a pointer
// that cannot be read is rebuilt from the "activated" events in the history; when neither
// gives an installed version the pointer is removed. Every repair is a "pointer repaired"
// history event. A second Open of the same root, by any process, fails with ErrLocked until
// the owner calls Close or exits.
func Open(root string, opt Options) (*Store, error) {
	s, err := newStore(root, opt)
	if err != nil {
		return nil, fmt.Errorf("store: open %s: %w", root, err)
	}
	for _, d := range []string{s.root, s.dir("staging"), s.dir("versions"), s.dir("active"), s.dir("history"), s.dir("highest")} {
		if err := os.MkdirAll(d, 0o750); err != nil {
			return nil, fmt.Errorf("store: open %s: %w", root, err)
		}
	}
	if s.lock, err = lockRoot(s.root); err != nil {
		return nil, fmt.Errorf("store: open %s: %w", root, err)
	}
	if err := s.recover(); err != nil {
		s.lock.Close()
		return nil, fmt.Errorf("store: open %s: recover: %w", root, err)
	}
	return s, nil
}

// OpenReadOnly opens the store at root for looking only, without taking ownership, so it
// works while the daemon runs (every change the owner makes is an atomic rename). It
// neither creates nor repairs anything; a missing root reads as an empty store. Methods
// that change the store return ErrReadOnly.
func OpenReadOnly(root string) (*Store, error) {
	s, err := newStore(root, Options{})
	if err != nil {
		return nil, fmt.Errorf("store: open %s: %w", root, err)
	}
	s.readOnly = true
	return s, nil
}

func newStore(root string, opt Options) (*Store, error) {
	if root == "" {
		return nil, errors.New("no root directory given")
	}
	abs, err := filepath.Abs(root)
	if err != nil {
		return nil, err
	}
	keep := opt.Keep
	if keep == 0 {
		keep = DefaultKeep
	}
	if keep < MinKeep {
		return nil, fmt.Errorf("keep %d: keep at least %d versions (the active and the previous)", opt.Keep, MinKeep)
	}
	s := &Store{root: abs, keep: keep, now: opt.Now, log: opt.Logger}
	if s.now == nil {
		s.now = time.Now
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	return s, nil
}

// lockRoot takes the exclusive flock on root/.lock and writes our pid into it.
func lockRoot(root string) (*os.File, error) {
	path := filepath.Join(root, lockName)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o640)
	if err != nil {
		return nil, fmt.Errorf("lock: %w", err)
	}
	for {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		defer f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			holder := "another process"
			if b, rerr := os.ReadFile(path); rerr == nil {
				if pid, perr := strconv.Atoi(strings.TrimSpace(string(b))); perr == nil {
					holder = "pid " + strconv.Itoa(pid)
				}
			}
			return nil, fmt.Errorf("%w: %s is held by %s; one process owns a model store (stop the daemon, or only read with OpenReadOnly)", ErrLocked, path, holder)
		}
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	// The pid only makes the error above friendlier; failing to write it is harmless.
	if err := f.Truncate(0); err == nil {
		f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return f, nil
}

// Close releases the store; a read-only store just stops answering.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	if s.lock != nil {
		err := s.lock.Close() // releases the flock
		s.lock = nil
		if err != nil {
			return fmt.Errorf("store: close: %w", err)
		}
	}
	return nil
}

// Root is the store's directory.
func (s *Store) Root() string { return s.root }

// Path is the directory of an installed version ("" when name or version is invalid).
func (s *Store) Path(name, version string) string {
	if checkName("model name", name) != nil || checkName("version", version) != nil {
		return ""
	}
	return filepath.Join(s.root, "versions", name, version)
}

// Stage makes a fresh, empty staging directory for a bundle to be unpacked into; hand it to
// Install or Discard.
func (s *Store) Stage() (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.writable(); err != nil {
		return "", fmt.Errorf("store: stage: %w", err)
	}
	var b [8]byte
	rand.Read(b[:])
	dir := filepath.Join(s.dir("staging"), hex.EncodeToString(b[:])+stagingExt)
	if err := os.Mkdir(dir, 0o750); err != nil {
		return "", fmt.Errorf("store: stage: %w", err)
	}
	return dir, nil
}

// Discard removes a staging directory Stage made. Discarding one that is gone (installed,
// or already discarded) is not an error.
func (s *Store) Discard(dir string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.writable(); err != nil {
		return fmt.Errorf("store: discard %s: %w", dir, err)
	}
	d, err := s.stagingChild(dir)
	if err != nil {
		return fmt.Errorf("store: discard %s: %w", dir, err)
	}
	if err := os.RemoveAll(d); err != nil {
		return fmt.Errorf("store: discard %s: %w", dir, err)
	}
	return nil
}

// Install moves a verified staging directory into versions/<name>/<version>, with meta
// written beside the files as version.json (Installed and Files are filled in when zero).
// It refuses invalid names (ErrInvalidName), an installed version (ErrExists), a directory
// Stage did not make (ErrNotStaging), and anything but regular files and directories in
// the tree. On success the staging directory is gone; on failure it is left for Discard.
func (s *Store) Install(stagingDir string, meta VersionMeta) (err error) {
	defer func() {
		if err != nil {
			err = fmt.Errorf("store: install %s@%s: %w", meta.Name, meta.Version, err)
		}
	}()
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.writable(); err != nil {
		return err
	}
	if err := checkNames(meta.Name, meta.Version); err != nil {
		return err
	}
	dir, err := s.stagingChild(stagingDir)
	if err != nil {
		return err
	}
	if fi, err := os.Stat(dir); err != nil {
		return err
	} else if !fi.IsDir() {
		return fmt.Errorf("%w: %s is not a directory", ErrNotStaging, dir)
	}
	dst := s.Path(meta.Name, meta.Version)
	if _, err := os.Lstat(dst); err == nil {
		return ErrExists
	} else if !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if _, err := os.Lstat(filepath.Join(dir, MetaName)); err == nil {
		return fmt.Errorf("the bundle holds a top-level %s, a name the model store reserves for its metadata", MetaName)
	}
	files, err := countFiles(dir)
	if err != nil {
		return err
	}
	if meta.Installed.IsZero() {
		meta.Installed = s.now().UTC()
	}
	if meta.Files == 0 {
		meta.Files = files
	}
	raw, err := json.MarshalIndent(meta, "", "  ")
	if err != nil {
		return err
	}
	s.point("install.write-meta")
	if err := os.WriteFile(filepath.Join(dir, MetaName), append(raw, '\n'), 0o640); err != nil {
		return fmt.Errorf("write %s: %w", MetaName, err)
	}
	s.point("install.sync-tree")
	if err := syncTree(dir); err != nil {
		return fmt.Errorf("fsync staged files: %w", err)
	}
	parent := filepath.Dir(dst)
	s.point("install.mkdir")
	if err := mkdirSynced(parent); err != nil {
		return err
	}
	s.point("install.rename")
	if err := os.Rename(dir, dst); err != nil {
		return fmt.Errorf("move into place: %w", err)
	}
	s.point("install.fsync-dirs")
	if err := syncDir(parent); err != nil {
		return fmt.Errorf("fsync %s: %w", parent, err)
	}
	// Committed: the version is complete. The staging dir's entry may come back after a
	// power cut as an empty husk that Open removes; no need to fail over it.
	syncDir(s.dir("staging"))
	s.history(meta.Name, meta.Version, "installed", fmt.Sprintf("sequence %d, key %s", meta.Sequence, meta.KeyID))
	// The mark after the commit: a crash before it leaves the version installed, which
	// Highest counts anyway, so the mark never claims a sequence that was not installed.
	if err := s.raiseHighest(meta); err != nil {
		s.log.Error("store: keep the highest sequence; it is still derived from the installed versions", "model", meta.Name, "err", err)
	}
	return nil
}

// highestMark is highest/<name>.json.
type highestMark struct {
	Name     string `json:"name"`
	Sequence uint64 `json:"sequence"`
	Version  string `json:"version"` // the version that set it
}

// Highest returns the highest sequence ever installed for name (0 when none): the larger of
// the persisted mark and the installed versions. A damaged mark (torn, or not this model's)
// leaves the installed versions as the highest still known, with a warning; the next install
// rewrites it. An error means the store could not be read: callers must then refuse to
// install, not guess.
func (s *Store) Highest(name string) (uint64, error) {
	if err := checkName("model", name); err != nil {
		return 0, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.highest(name)
}

func (s *Store) highest(name string) (uint64, error) {
	var hi uint64
	path := filepath.Join(s.dir("highest"), name+".json")
	b, err := os.ReadFile(path)
	switch {
	case errors.Is(err, fs.ErrNotExist): // a store from before the mark: the versions say
	case err != nil:
		return 0, fmt.Errorf("store: read the highest sequence of %s: %w", name, err)
	default:
		var m highestMark
		if err := json.Unmarshal(b, &m); err != nil || m.Name != name {
			// Fail closed on what is still known: nothing at or below a kept version installs.
			s.log.Warn("store: the highest-sequence mark is damaged; the highest installed version still kept stands in (a pruned higher one could be installed again)",
				"model", name, "file", path, "err", err)
			break
		}
		hi = m.Sequence
	}
	vs, err := s.versions(name)
	if err != nil {
		return 0, fmt.Errorf("store: list the versions of %s: %w", name, err)
	}
	for _, v := range vs {
		hi = max(hi, v.Sequence)
	}
	return hi, nil
}

// raiseHighest records meta's sequence as the highest when it is.
func (s *Store) raiseHighest(meta VersionMeta) error {
	hi, err := s.highest(meta.Name)
	if err != nil {
		return err
	}
	if hi > meta.Sequence {
		return nil
	}
	if err := os.MkdirAll(s.dir("highest"), 0o750); err != nil {
		return err
	}
	raw, err := json.Marshal(highestMark{Name: meta.Name, Sequence: max(hi, meta.Sequence), Version: meta.Version})
	if err != nil {
		return err
	}
	return s.writeAtomic(filepath.Join(s.dir("highest"), meta.Name+".json"), append(raw, '\n'), "highest")
}

// Activate makes an installed version the active one, remembering the version active
// before as previous, records an "activated" event with reason, and prunes old versions.
// Once the pointer is switched Activate succeeds; a failure to record or prune afterwards
// is logged.
func (s *Store) Activate(name, version, reason string) (err error) {
	defer func() {
		if err != nil {
			err = fmt.Errorf("store: activate %s@%s: %w", name, version, err)
		}
	}()
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.writable(); err != nil {
		return err
	}
	if err := checkNames(name, version); err != nil {
		return err
	}
	meta, ok := s.installed(name, version)
	if !ok {
		return ErrNotInstalled
	}
	p := Pointer{Name: name, Version: version, Sequence: meta.Sequence, ActivatedAt: s.now().UTC(), Reason: reason}
	cur, has, err := s.readPointer(name)
	if err != nil {
		s.log.Warn("model store: replacing an unreadable active pointer", "model", name, "err", err)
	}
	if has {
		p.Previous = cur.Version
		if cur.Version == version {
			p.Previous = cur.Previous
		}
	}
	if err := s.writePointer(p, "activate"); err != nil {
		return err
	}
	s.history(name, version, "activated", reason)
	if err := s.prune(name, p); err != nil {
		s.log.Warn("model store: prune", "model", name, "err", err)
	}
	return nil
}

// Active returns a model's active pointer; false when the model has none.
func (s *Store) Active(name string) (Pointer, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.readable(); err != nil {
		return Pointer{}, false, fmt.Errorf("store: active %s: %w", name, err)
	}
	if err := checkName("model name", name); err != nil {
		return Pointer{}, false, fmt.Errorf("store: active %s: %w", name, err)
	}
	p, ok, err := s.readPointer(name)
	if err != nil {
		return Pointer{}, false, fmt.Errorf("store: active %s: %w", name, err)
	}
	return p, ok, nil
}

// Versions lists a model's installed versions, highest sequence first.
func (s *Store) Versions(name string) ([]VersionMeta, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.readable(); err != nil {
		return nil, fmt.Errorf("store: versions %s: %w", name, err)
	}
	if err := checkName("model name", name); err != nil {
		return nil, fmt.Errorf("store: versions %s: %w", name, err)
	}
	vs, err := s.versions(name)
	if err != nil {
		return nil, fmt.Errorf("store: versions %s: %w", name, err)
	}
	return vs, nil
}

// Models lists the models that have an installed version or an active pointer, sorted.
func (s *Store) Models() ([]string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.readable(); err != nil {
		return nil, fmt.Errorf("store: models: %w", err)
	}
	var names []string
	dirs, err := readDir(s.dir("versions"))
	if err != nil {
		return nil, fmt.Errorf("store: models: %w", err)
	}
	for _, d := range dirs {
		if !d.IsDir() || checkName("model name", d.Name()) != nil {
			continue
		}
		if vs, err := s.versions(d.Name()); err == nil && len(vs) > 0 {
			names = append(names, d.Name())
		}
	}
	ptrs, err := readDir(s.dir("active"))
	if err != nil {
		return nil, fmt.Errorf("store: models: %w", err)
	}
	for _, f := range ptrs {
		if n, ok := strings.CutSuffix(f.Name(), ".json"); ok && f.Type().IsRegular() && checkName("model name", n) == nil {
			names = append(names, n)
		}
	}
	slices.Sort(names)
	return slices.Compact(names), nil
}

// Remove deletes an installed version; it refuses the active and the previous one
// (ErrInUse).
func (s *Store) Remove(name, version string) (err error) {
	defer func() {
		if err != nil {
			err = fmt.Errorf("store: remove %s@%s: %w", name, version, err)
		}
	}()
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.writable(); err != nil {
		return err
	}
	if err := checkNames(name, version); err != nil {
		return err
	}
	if _, ok := s.installed(name, version); !ok {
		return ErrNotInstalled
	}
	p, has, err := s.readPointer(name)
	if err != nil {
		return err
	}
	if has && (p.Version == version || p.Previous == version) {
		return ErrInUse
	}
	if err := s.removeVersion(name, version); err != nil {
		return err
	}
	s.history(name, version, "removed", "on request")
	return nil
}

// prune removes the versions of name beyond the newest s.keep by sequence, never p's
// active or previous version.
func (s *Store) prune(name string, p Pointer) error {
	vs, err := s.versions(name)
	if err != nil {
		return err
	}
	var errs []error
	for i, v := range vs {
		if i < s.keep || v.Version == p.Version || v.Version == p.Previous {
			continue
		}
		if err := s.removeVersion(name, v.Version); err != nil {
			errs = append(errs, err)
			continue
		}
		s.history(name, v.Version, "pruned", fmt.Sprintf("keeping the newest %d versions", s.keep))
	}
	return errors.Join(errs...)
}

// removeVersion renames a version to <version>.deleting (its commit point) and deletes it.
func (s *Store) removeVersion(name, version string) error {
	dir := s.Path(name, version)
	del := dir + deletingExt
	if err := os.RemoveAll(del); err != nil { // a leftover of a failed delete
		return err
	}
	s.point("remove.rename")
	if err := os.Rename(dir, del); err != nil {
		return err
	}
	s.point("remove.fsync-dir")
	if err := syncDir(filepath.Dir(dir)); err != nil {
		return err
	}
	s.point("remove.delete")
	return os.RemoveAll(del)
}

// versions lists name's installed versions, highest sequence first. Callers hold s.mu.
func (s *Store) versions(name string) ([]VersionMeta, error) {
	ents, err := readDir(filepath.Join(s.dir("versions"), name))
	if err != nil {
		return nil, err
	}
	var vs []VersionMeta
	for _, e := range ents {
		if !e.IsDir() || checkName("version", e.Name()) != nil {
			continue
		}
		if m, ok := s.installed(name, e.Name()); ok {
			vs = append(vs, m)
		}
	}
	slices.SortFunc(vs, func(a, b VersionMeta) int {
		switch {
		case a.Sequence != b.Sequence:
			if a.Sequence > b.Sequence {
				return -1
			}
			return 1
		case !a.Installed.Equal(b.Installed):
			return b.Installed.Compare(a.Installed)
		}
		return strings.Compare(a.Version, b.Version)
	})
	return vs, nil
}

// installed reads a version's metadata; false unless it is installed and its version.json
// names it.
func (s *Store) installed(name, version string) (VersionMeta, bool) {
	m, err := readMeta(filepath.Join(s.root, "versions", name, version, MetaName))
	if err != nil || m.Name != name || m.Version != version {
		return VersionMeta{}, false
	}
	return m, true
}

func readMeta(path string) (VersionMeta, error) {
	var m VersionMeta
	b, err := os.ReadFile(path)
	if err != nil {
		return m, err
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return m, fmt.Errorf("%s: %w", path, err)
	}
	return m, nil
}

// readPointer reads active/<name>.json: false when there is none, an error when it is
// unreadable or does not describe name.
func (s *Store) readPointer(name string) (Pointer, bool, error) {
	var p Pointer
	path := s.pointerPath(name)
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return p, false, nil
	}
	if err != nil {
		return p, false, err
	}
	if err := json.Unmarshal(b, &p); err != nil {
		return Pointer{}, false, fmt.Errorf("%s: %w", path, err)
	}
	if p.Name != name || checkName("version", p.Version) != nil {
		return Pointer{}, false, fmt.Errorf("%s: names %q version %q", path, p.Name, p.Version)
	}
	return p, true, nil
}

func (s *Store) writePointer(p Pointer, point string) error {
	raw, err := json.MarshalIndent(p, "", "  ")
	if err != nil {
		return err
	}
	return s.writeAtomic(s.pointerPath(p.Name), append(raw, '\n'), point)
}

func (s *Store) pointerPath(name string) string {
	return filepath.Join(s.dir("active"), name+".json")
}

func (s *Store) dir(sub string) string { return filepath.Join(s.root, sub) }

// stagingChild checks that dir is a staging directory of this store and cleans it.
func (s *Store) stagingChild(dir string) (string, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	if filepath.Dir(abs) != s.dir("staging") || !strings.HasSuffix(abs, stagingExt) {
		return "", fmt.Errorf("%w: %s (want %s/<x>%s from Stage)", ErrNotStaging, dir, s.dir("staging"), stagingExt)
	}
	return abs, nil
}

// writable and readable report why the store cannot be used. Callers hold s.mu.
func (s *Store) writable() error {
	if s.closed {
		return ErrClosed
	}
	if s.readOnly {
		return ErrReadOnly
	}
	return nil
}

func (s *Store) readable() error {
	if s.closed {
		return ErrClosed
	}
	return nil
}

func (s *Store) point(name string) {
	if s.crashPoint != nil {
		s.crashPoint(name)
	}
}

// checkName accepts names that are one safe path element: letters, digits and . _ - +,
// starting with a letter or digit, without "..", and not ending in a suffix the store uses
// for its own files.
func checkName(kind, s string) error {
	switch {
	case s == "":
		return fmt.Errorf("%w: empty %s", ErrInvalidName, kind)
	case len(s) > maxNameBytes:
		return fmt.Errorf("%w: %s %.20q... is longer than %d bytes", ErrInvalidName, kind, s, maxNameBytes)
	case strings.Contains(s, ".."):
		return fmt.Errorf("%w: %s %q contains \"..\"", ErrInvalidName, kind, s)
	}
	for i, r := range s {
		alnum := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9'
		if i == 0 && !alnum {
			return fmt.Errorf("%w: %s %q must start with a letter or digit", ErrInvalidName, kind, s)
		}
		if !alnum && !strings.ContainsRune("._-+", r) {
			return fmt.Errorf("%w: %s %q holds %q (use letters, digits and . _ - +)", ErrInvalidName, kind, s, r)
		}
	}
	for _, suf := range []string{tmpSuffix, deletingExt, stagingExt} {
		if strings.HasSuffix(s, suf) {
			return fmt.Errorf("%w: %s %q ends in %q, which the store reserves", ErrInvalidName, kind, s, suf)
		}
	}
	return nil
}

func checkNames(name, version string) error {
	if err := checkName("model name", name); err != nil {
		return err
	}
	return checkName("version", version)
}
