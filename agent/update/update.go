// Package update replaces the agent's own binary with a signed new one and makes sure a
// working binary remains whatever happens: a bad signature, a binary that cannot start on
// this board, one that crashes or never becomes ready, or a power cut at any step.
//
// The files live next to the executable, so a new binary finds them before it reads any
// configuration:
//
//	<exe>                      the binary the service runs
//	<exe>.previous             the binary that ran before the last update (a hard link)
//	.<name>.new                the new binary while it is prepared (github.com/minio/selfupdate)
//	.<name>.update.json        the pending update, until the new binary confirms it
//	.<name>.update-result.json the outcome of the last update
//	.<name>.update-floor.json  the version floor: the last confirmed version and the highest
//	                           downgrade sequence taken (anti-rollback)
//
// Apply: read (bounded) → sha256 → minisign signature → architecture → version floor (a
// version at or below the running one, or the last confirmed one, is refused unless signed as
// a downgrade whose sequence is above every downgrade taken) → selfupdate prepares .<name>.new →
// fsync → preflight (run it with "version" on this board) → pending file → hard-link the
// running binary to <exe>.previous → rename .<name>.new over <exe>. Every step up to the
// last rename leaves the old binary in place; the rename is atomic, so <exe> is always a
// whole binary, old or new. (selfupdate's own commit renames <exe> away before putting the
// new one in place; a power cut between the two renames would leave no binary, so the commit
// is done here.)
//
// Begin, first thing in `edge-agent run`: with a pending update whose binary is the one
// running, it counts the start (durably). The new binary then has ConfirmWithin to reach
// ready and Confirm; if it fails to start, exits with an error, never confirms, or crashes
// MaxStarts times (a service manager restarts it), Revert puts <exe>.previous back and the
// caller executes it.
//
// Guard is the same count made by the previous binary, which the service manager runs before
// every start (ExecStartPre=-<exe>.previous guard): a new binary that exits at once, hangs
// before it counts, or whose own Begin is broken is still reverted, because the revert does
// not depend on any code of the new binary.
//
// Imports: the standard library, selfupdate and internal/durable only; signature checking
// is injected (Options.Verify).
package update

import (
	"bytes"
	"context"
	"crypto"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/minio/selfupdate"

	"github.com/edge-agent/edge-agent/internal/durable"
)

// MaxBinaryBytes bounds a new binary.
const MaxBinaryBytes = 256 << 20

// MaxStarts is how many times a new binary may start without confirming before the previous
// one is restored (a crash on the first start gets one more try: it may have been a power
// cut).
const MaxStarts = 2

// DefaultConfirmWithin is how long a new binary has to reach ready after it starts.
const DefaultConfirmWithin = 2 * time.Minute

// preflightTimeout bounds the new binary's "version" run before it is installed.
const preflightTimeout = 20 * time.Second

// Schemas of the files.
const (
	PendingSchema = "edge-agent/update-pending/v1"
	ResultSchema  = "edge-agent/update-result/v1"
	FloorSchema   = "edge-agent/update-floor/v1"
)

// Outcomes in Result.
const (
	OutcomeConfirmed  = "confirmed"
	OutcomeRolledBack = "rolled-back"
)

// ErrReverted is Begin's error when it restored the previous binary: the caller executes
// the executable again (it is the previous binary now).
var ErrReverted = errors.New("the new binary failed; the previous one is restored")

// Options configure Apply.
type Options struct {
	// Exe is the binary to replace (default: the running executable).
	Exe string
	// Verify checks a minisign signature of the binary and returns what it vouches for: the
	// signing key, and the version and architecture the signature was made for.
	Verify func(bin, sig []byte) (Signed, error)
	// ConfirmWithin is how long the new binary has to reach ready (default 2m).
	ConfirmWithin time.Duration
	// FromVersion is the running version, recorded in the pending file.
	FromVersion string
}

// Signed is what a verified binary signature vouches for.
type Signed struct {
	KeyID   string
	Version string // the version the binary must report (edge-agent VERSION)
	Arch    string // GOARCH the binary was built for
	// Downgrade is the downgrade sequence the signature names (0: an ordinary release).
	Downgrade uint64
}

// elfMachines are the ELF machine types of the architectures edge-agent is built for.
var elfMachines = map[string]elf.Machine{
	"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64, "arm": elf.EM_ARM, "386": elf.EM_386, "riscv64": elf.EM_RISCV,
}

// checkExecutable refuses anything but an ELF executable for this machine's architecture, so
// that a signed script, or a binary for another board, is never written or run.
func checkExecutable(data []byte, signed Signed) error {
	if signed.Arch != runtime.GOARCH {
		return fmt.Errorf("it is signed for %s, and this device is %s: send the %s build", signed.Arch, runtime.GOARCH, runtime.GOARCH)
	}
	f, err := elf.NewFile(bytes.NewReader(data))
	if err != nil {
		return fmt.Errorf("it is not an ELF executable (%v): only edge-agent binaries are installed", err)
	}
	defer f.Close()
	if want, ok := elfMachines[runtime.GOARCH]; ok && f.Machine != want {
		return fmt.Errorf("it is an ELF file for %v, not for this device's %s", f.Machine, runtime.GOARCH)
	}
	if f.Type != elf.ET_EXEC && f.Type != elf.ET_DYN {
		return fmt.Errorf("it is an ELF %v, not an executable", f.Type)
	}
	return nil
}

// Pending is the pending update file.
type Pending struct {
	Schema        string        `json:"schema"`
	Version       string        `json:"version"`
	SHA256        string        `json:"sha256"`
	KeyID         string        `json:"key_id"`
	FromVersion   string        `json:"from_version"`
	Applied       time.Time     `json:"applied"`
	ConfirmWithin time.Duration `json:"confirm_within"`
	Downgrade     uint64        `json:"downgrade,omitempty"`
	// Starts counts the new binary's starts (Begin, in the new binary); GuardStarts those the
	// service manager made (Guard, in the previous binary).
	Starts      int `json:"starts"`
	GuardStarts int `json:"guard_starts,omitempty"`
}

// Floor is the version floor: no update to a version at or below Version is taken unless it
// is signed as a downgrade above DowngradeSeq.
type Floor struct {
	Schema       string    `json:"schema"`
	Version      string    `json:"version"`
	DowngradeSeq uint64    `json:"downgrade_seq"`
	Updated      time.Time `json:"updated"`
	// DowngradesLost: the floor was found damaged, so which downgrades were taken is not
	// known and none is taken (fail closed) until the file is removed by hand. Kept across
	// updates.
	DowngradesLost bool `json:"downgrades_lost,omitempty"`
}

// errFloorDamaged: the floor file is there but not a floor (torn, or another schema).
var errFloorDamaged = errors.New("damaged")

// Result is the outcome of the last update.
type Result struct {
	Schema      string    `json:"schema"`
	Outcome     string    `json:"outcome"`
	Version     string    `json:"version"`
	FromVersion string    `json:"from_version"`
	Reason      string    `json:"reason,omitempty"`
	At          time.Time `json:"at"`
	Reported    bool      `json:"reported"` // an event was sent for it
}

// Executable is the running binary's path with symlinks resolved (the file to replace).
func Executable() (string, error) {
	exe, err := os.Executable()
	if err != nil {
		return "", err
	}
	return filepath.EvalSymlinks(exe)
}

type paths struct{ exe, previous, next, pending, result, floor string }

func pathsOf(exe string) paths {
	dir, name := filepath.Dir(exe), filepath.Base(exe)
	return paths{
		exe:      exe,
		previous: exe + ".previous",
		next:     filepath.Join(dir, "."+name+".new"),
		pending:  filepath.Join(dir, "."+name+".update.json"),
		result:   filepath.Join(dir, "."+name+".update-result.json"),
		floor:    filepath.Join(dir, "."+name+".update-floor.json"),
	}
}

// Apply verifies a new binary (bin, at most MaxBinaryBytes, with its minisign signature sig
// and, when wantSHA256 is not empty, that sha256) and installs it in place of Options.Exe.
// It returns the pending update; the new binary runs when the caller executes Exe again.
// On any error the running binary is untouched.
func Apply(ctx context.Context, bin io.Reader, sig []byte, wantSHA256 string, opt Options) (Pending, error) {
	if opt.Exe == "" {
		exe, err := Executable()
		if err != nil {
			return Pending{}, fmt.Errorf("find the running binary: %w", err)
		}
		opt.Exe = exe
	}
	if opt.ConfirmWithin <= 0 {
		opt.ConfirmWithin = DefaultConfirmWithin
	}
	if opt.Verify == nil {
		return Pending{}, errors.New("no signature check configured: set trusted_keys")
	}
	p := pathsOf(opt.Exe)
	data, err := io.ReadAll(io.LimitReader(bin, MaxBinaryBytes+1))
	if err != nil {
		return Pending{}, fmt.Errorf("read the new binary: %w (nothing changed; try again)", err)
	}
	if len(data) > MaxBinaryBytes {
		return Pending{}, fmt.Errorf("the new binary is larger than %d bytes: refused", MaxBinaryBytes)
	}
	sum := sha256.Sum256(data)
	got := hex.EncodeToString(sum[:])
	if wantSHA256 != "" && !strings.EqualFold(wantSHA256, got) {
		return Pending{}, fmt.Errorf("the new binary's sha256 is %s, not %s: a truncated or wrong download; nothing changed", got, wantSHA256)
	}
	signed, err := opt.Verify(data, sig)
	if err != nil {
		return Pending{}, fmt.Errorf("the new binary's signature: %w; nothing changed (sign it with a key in update.trusted_keys: edgectl sign --key K --version V FILE)", err)
	}
	if err := checkExecutable(data, signed); err != nil {
		return Pending{}, fmt.Errorf("the new binary is refused: %w; nothing changed", err)
	}
	if err := checkFloor(p, opt.FromVersion, signed); err != nil {
		return Pending{}, fmt.Errorf("the new binary is refused: %w; nothing changed", err)
	}
	if err := selfupdate.PrepareAndCheckBinary(bytes.NewReader(data), selfupdate.Options{
		TargetPath: opt.Exe, TargetMode: 0o755, Checksum: sum[:], Hash: crypto.SHA256,
	}); err != nil {
		os.Remove(p.next)
		return Pending{}, fmt.Errorf("write the new binary beside %s: %w (the folder must be writable by the agent)", opt.Exe, err)
	}
	if err := durable.Sync(p.next); err != nil {
		os.Remove(p.next)
		return Pending{}, err
	}
	version, err := preflight(ctx, p.next)
	if err != nil {
		os.Remove(p.next)
		return Pending{}, fmt.Errorf("the new binary does not run on this device: %w; nothing changed", err)
	}
	if version != signed.Version {
		os.Remove(p.next)
		return Pending{}, fmt.Errorf("the new binary reports version %s but its signature is for %s: refused, nothing changed (sign the binary you send: edgectl sign --version %s)", version, signed.Version, version)
	}
	pend := Pending{Schema: PendingSchema, Version: version, SHA256: got, KeyID: signed.KeyID, FromVersion: opt.FromVersion,
		Applied: time.Now().UTC(), ConfirmWithin: opt.ConfirmWithin, Downgrade: signed.Downgrade}
	if err := writeJSON(p.pending, pend); err != nil {
		os.Remove(p.next)
		return Pending{}, err
	}
	// Keep the running binary as previous: a hard link, made under a temporary name and
	// renamed, so a previous from an earlier update is replaced in one step.
	tmp := p.previous + ".tmp"
	os.Remove(tmp)
	if err := os.Link(opt.Exe, tmp); err != nil {
		os.Remove(p.next)
		os.Remove(p.pending)
		return Pending{}, fmt.Errorf("keep the running binary as %s: %w", p.previous, err)
	}
	if err := os.Rename(tmp, p.previous); err != nil {
		os.Remove(p.next)
		os.Remove(p.pending)
		return Pending{}, fmt.Errorf("keep the running binary as %s: %w", p.previous, err)
	}
	if err := durable.Sync(filepath.Dir(opt.Exe)); err != nil {
		return Pending{}, err
	}
	if err := os.Rename(p.next, opt.Exe); err != nil {
		os.Remove(p.pending)
		return Pending{}, fmt.Errorf("install the new binary: %w; the running one is untouched", err)
	}
	return pend, durable.Sync(filepath.Dir(opt.Exe))
}

// ReadFloor returns exe's version floor (the zero Floor when no update was ever confirmed). A
// damaged file gives a Floor with DowngradesLost and an error wrapping errFloorDamaged.
func ReadFloor(exe string) (Floor, error) {
	var f Floor
	b, err := os.ReadFile(pathsOf(exe).floor)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return Floor{}, nil
	case err != nil:
		return Floor{}, err
	}
	if err := json.Unmarshal(b, &f); err != nil {
		return Floor{DowngradesLost: true}, fmt.Errorf("%w: %v", errFloorDamaged, err)
	}
	if f.Schema != FloorSchema {
		return Floor{DowngradesLost: true}, fmt.Errorf("%w: schema %q, want %q", errFloorDamaged, f.Schema, FloorSchema)
	}
	return f, nil
}

// checkFloor refuses a binary whose version is not above both the running version and the
// floor, unless it is signed as a downgrade above every downgrade taken. A damaged floor
// leaves the running version as the floor and refuses every downgrade (which were taken is
// lost); a floor that cannot be read at all refuses every update (fail closed).
func checkFloor(p paths, running string, signed Signed) error {
	fl, err := ReadFloor(p.exe)
	if err != nil && !errors.Is(err, errFloorDamaged) {
		return fmt.Errorf("the version floor %s cannot be read (%v), so no update is taken: fix its permissions or the disk", p.floor, err)
	}
	if signed.Downgrade > 0 && fl.DowngradesLost {
		return fmt.Errorf("it is signed as downgrade %d, but the version floor %s was found damaged, so which downgrades this device took is not known: no downgrade is taken until the file is removed by hand (upgrades above %s still are)",
			signed.Downgrade, p.floor, running)
	}
	if signed.Downgrade > 0 {
		if signed.Downgrade <= fl.DowngradeSeq {
			return fmt.Errorf("it is signed as downgrade %d and this device already took downgrade %d: a downgrade is taken once (a replay is refused); sign a new one above %d (edgectl sign --downgrade N)",
				signed.Downgrade, fl.DowngradeSeq, fl.DowngradeSeq)
		}
		return nil
	}
	nv, ok := parseVersion(signed.Version)
	if !ok {
		return fmt.Errorf("its version %q is not a release version (MAJOR.MINOR.PATCH), so it cannot be ordered against this device's: build it from a release tag, or sign it as a downgrade (edgectl sign --downgrade N)", signed.Version)
	}
	for _, floor := range []struct{ what, v string }{{"the version this device runs", running}, {"the last version this device confirmed", fl.Version}} {
		if fv, ok := parseVersion(floor.v); ok && compareVersions(nv, fv) <= 0 {
			return fmt.Errorf("version %s is not above %s (%s): a version at or below it is taken only when signed as a downgrade (edgectl sign --downgrade N, N above %d)",
				signed.Version, floor.v, floor.what, fl.DowngradeSeq)
		}
	}
	return nil
}

// preflight runs the binary with "version" and returns the version it prints.
func preflight(ctx context.Context, path string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, preflightTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, path, "version").Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) && len(ee.Stderr) > 0 {
			err = fmt.Errorf("%w: %s", err, strings.TrimSpace(lastLine(string(ee.Stderr))))
		}
		return "", fmt.Errorf("%q version: %w", filepath.Base(path), err)
	}
	first, _, _ := strings.Cut(string(out), "\n")
	version, ok := strings.CutPrefix(strings.TrimSpace(first), "edge-agent ")
	if !ok || version == "" || strings.ContainsAny(version, " \t") {
		return "", fmt.Errorf("%q version printed %q, not \"edge-agent VERSION\": is it an edge-agent binary?", filepath.Base(path), first)
	}
	return version, nil
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return s[i+1:]
	}
	return s
}

// Trial is a new binary's first run(s): it must Confirm within its deadline.
type Trial struct {
	p        paths
	Pending  Pending
	Deadline time.Time
}

// Begin looks for a pending update of exe (the running binary). Without one, or when the
// binary running is not the pending one (an update interrupted before its last step), it
// returns nil. Otherwise it counts this start durably and returns the trial; after
// MaxStarts unconfirmed starts it restores the previous binary and returns ErrReverted.
func Begin(exe string) (*Trial, error) {
	p := pathsOf(exe)
	os.Remove(p.next) // a leftover of an interrupted Apply
	pend, installed, err := readPending(p)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return nil, nil
	case err != nil:
		os.Remove(p.pending)
		return nil, fmt.Errorf("%v: removed; the running binary stays", err)
	case !installed:
		// Apply stopped before the new binary was in place: nothing changed.
		return nil, errors.Join(os.Remove(p.pending), durable.Sync(filepath.Dir(exe)))
	}
	t := &Trial{p: p, Pending: pend}
	pend.Starts++
	t.Pending = pend
	if pend.Starts > MaxStarts || pend.GuardStarts > MaxStarts {
		return nil, t.Revert(fmt.Sprintf("the new binary started %d times without becoming ready", max(pend.Starts, pend.GuardStarts)-1))
	}
	if err := writeJSON(p.pending, pend); err != nil {
		return nil, err
	}
	within := pend.ConfirmWithin
	if within <= 0 {
		within = DefaultConfirmWithin
	}
	t.Deadline = time.Now().Add(within)
	return t, nil
}

// readPending reads the pending update (an error wrapping os.ErrNotExist when there is none)
// and reports whether its binary is the one in place, i.e. whether Apply got to its last step.
func readPending(p paths) (pend Pending, installed bool, err error) {
	if err := readJSON(p.pending, &pend); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return pend, false, err
		}
		return pend, false, fmt.Errorf("pending update %s unreadable (%v)", p.pending, err)
	}
	sum, err := fileSHA256(p.exe)
	return pend, err == nil && sum == pend.SHA256, nil
}

// Guard counts a start of exe by the service manager. It is run by the previous binary
// before every start (the unit's ExecStartPre): with a pending update whose binary is in
// place, it counts the start durably, and after MaxStarts unconfirmed ones it restores the
// previous binary and returns a Result saying so. Without a pending update it does nothing.
func Guard(exe string) (*Result, error) {
	p := pathsOf(exe)
	pend, installed, err := readPending(p)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return nil, nil
	case err != nil:
		return nil, fmt.Errorf("%v: the new binary's start settles it", err)
	case !installed:
		return nil, nil // the update never took place; Begin removes the file
	}
	pend.GuardStarts++
	t := &Trial{p: p, Pending: pend}
	if pend.GuardStarts > MaxStarts {
		reason := fmt.Sprintf("the new binary started %d times without becoming ready (counted by the previous binary before each start)", pend.GuardStarts-1)
		if err := t.Revert(reason); !errors.Is(err, ErrReverted) {
			return nil, err
		}
		r, _ := LastResult(exe)
		return &r, nil
	}
	return nil, writeJSON(p.pending, pend)
}

// Confirm records that the new binary is ready: the update is done, and its version (and
// downgrade sequence) becomes the floor.
func (t *Trial) Confirm() error {
	fl, _ := ReadFloor(t.p.exe) // a damaged floor comes back with DowngradesLost, kept below
	fl = Floor{Schema: FloorSchema, Version: t.Pending.Version, DowngradeSeq: max(fl.DowngradeSeq, t.Pending.Downgrade), Updated: time.Now().UTC(),
		DowngradesLost: fl.DowngradesLost}
	if err := writeJSON(t.p.floor, fl); err != nil {
		return fmt.Errorf("record the version floor: %w", err)
	}
	r := Result{Schema: ResultSchema, Outcome: OutcomeConfirmed, Version: t.Pending.Version, FromVersion: t.Pending.FromVersion, At: time.Now().UTC()}
	if err := writeJSON(t.p.result, r); err != nil {
		return err
	}
	return errors.Join(os.Remove(t.p.pending), durable.Sync(filepath.Dir(t.p.exe)))
}

// Revert restores the previous binary (atomically, keeping <exe>.previous) and records why.
// It returns ErrReverted on success: the caller executes the executable again.
func (t *Trial) Revert(reason string) error {
	tmp := t.p.exe + ".restore"
	os.Remove(tmp)
	if err := os.Link(t.p.previous, tmp); err != nil {
		return fmt.Errorf("restore %s: %w (restore it by hand: cp %s %s)", t.p.previous, err, t.p.previous, t.p.exe)
	}
	if err := os.Rename(tmp, t.p.exe); err != nil {
		return fmt.Errorf("restore %s: %w (restore it by hand: cp %s %s)", t.p.previous, err, t.p.previous, t.p.exe)
	}
	r := Result{Schema: ResultSchema, Outcome: OutcomeRolledBack, Version: t.Pending.Version, FromVersion: t.Pending.FromVersion, Reason: reason, At: time.Now().UTC()}
	if err := writeJSON(t.p.result, r); err != nil {
		return err
	}
	if err := errors.Join(os.Remove(t.p.pending), durable.Sync(filepath.Dir(t.p.exe))); err != nil {
		return err
	}
	return ErrReverted
}

// LastResult returns the outcome of the last update of exe, if any.
func LastResult(exe string) (Result, bool) {
	var r Result
	return r, readJSON(pathsOf(exe).result, &r) == nil
}

// MarkReported records that the last result was announced (so it is announced once).
func MarkReported(exe string) error {
	r, ok := LastResult(exe)
	if !ok {
		return nil
	}
	r.Reported = true
	return writeJSON(pathsOf(exe).result, r)
}

func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// writeJSON replaces path atomically and durably.
func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return durable.WriteFile(path, b, 0o644)
}

func readJSON(path string, v any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, v)
}
