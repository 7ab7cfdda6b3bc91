package deploy

// Bundles pushed over MQTT arrive in chunks, each with its own sha256 in the deploy
// command. The Assembler keeps them in <dir>/<sha256>.part (sized to the bundle up front,
// each chunk written at its offset) and records which chunks are verified in
// <dir>/<sha256>.have, so a transfer that stops (the pusher quit, the agent restarted)
// resumes with what is missing. A chunk's bytes are fsynced before its bit is, so a set bit
// always means verified data on disk.

import (
	"bytes"
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/edge-agent/edge-agent/internal/durable"
)

// Chunk bounds of a pushed bundle.
const (
	MinChunkSize = 4 << 10
	MaxChunkSize = 1 << 20
	// MaxChunks bounds the chunk list; the command carrying it is at most 64 KiB anyway.
	MaxChunks = 1024
	// KeepPartial is how many partial pushed bundles the downloads folder keeps: starting
	// another one removes the oldest.
	KeepPartial = 2
)

// Errors of Put that say the chunk was refused and should be asked for again.
var (
	ErrChunkHash  = errors.New("chunk sha256 mismatch")
	ErrChunkIndex = errors.New("chunk index or size out of range")
)

// PushSpec describes a pushed bundle: the args of a deploy command with "push".
type PushSpec struct {
	SHA256    string   `json:"sha256"`     // the whole bundle, hex
	Size      int64    `json:"size"`       // bytes
	ChunkSize int      `json:"chunk_size"` // bytes per chunk; the last one may be shorter
	Chunks    []string `json:"chunks"`     // sha256 (hex) of each chunk, in order
}

// Check validates s against maxBytes and returns it with its hashes in lower case.
func (s PushSpec) Check(maxBytes int64) (PushSpec, error) {
	want := `(edgectl deploy computes them from the bundle file)`
	s.SHA256 = strings.ToLower(s.SHA256)
	switch {
	case !isSHA256(s.SHA256):
		return s, fmt.Errorf("push: sha256 %q is not 64 hex digits %s", s.SHA256, want)
	case s.Size < 1 || s.Size > maxBytes:
		return s, fmt.Errorf("push: size %d is out of range: a pushed bundle is 1 to %d bytes (serve a larger one over HTTP and deploy it by url)", s.Size, maxBytes)
	case s.ChunkSize < MinChunkSize || s.ChunkSize > MaxChunkSize:
		return s, fmt.Errorf("push: chunk_size %d is out of range: use %d to %d bytes %s", s.ChunkSize, MinChunkSize, MaxChunkSize, want)
	}
	n := (s.Size + int64(s.ChunkSize) - 1) / int64(s.ChunkSize)
	switch {
	case n > MaxChunks:
		return s, fmt.Errorf("push: %d bytes in chunks of %d make %d chunks, more than %d: use larger chunks", s.Size, s.ChunkSize, n, MaxChunks)
	case int64(len(s.Chunks)) != n:
		return s, fmt.Errorf("push: %d chunk hashes for %d bytes in chunks of %d; want %d %s", len(s.Chunks), s.Size, s.ChunkSize, n, want)
	}
	s.Chunks = slices.Clone(s.Chunks)
	for i, c := range s.Chunks {
		s.Chunks[i] = strings.ToLower(c)
		if !isSHA256(s.Chunks[i]) {
			return s, fmt.Errorf("push: the sha256 of chunk %d, %q, is not 64 hex digits %s", i, c, want)
		}
	}
	return s, nil
}

func isSHA256(s string) bool {
	b, err := hex.DecodeString(s)
	return err == nil && len(b) == sha256.Size
}

// haveHeader is the first line of a .have file: the layout its bitmap belongs to.
type haveHeader struct {
	Schema    string `json:"schema"`
	SHA256    string `json:"sha256"`
	Size      int64  `json:"size"`
	ChunkSize int    `json:"chunk_size"`
}

const haveSchema = "edge-agent/bundle-have/v1"

// Assembler puts one pushed bundle together. It is not safe for concurrent use: one
// receiver owns it.
type Assembler struct {
	spec       PushSpec
	part, have string
	pf, hf     *os.File
	bits       []byte // one bit per chunk: verified and on disk
	bitsAt     int64  // offset of the bitmap in the .have file
	n, got     int
	gotBytes   int64
}

// OpenAssembler opens (or starts) the assembly of spec in dir, keeping the chunks a
// previous run verified. s must have passed Check. Starting a new bundle removes the oldest
// partial ones beyond KeepPartial.
func OpenAssembler(dir string, s PushSpec) (*Assembler, error) {
	if err := durable.MkdirAll(dir); err != nil {
		return nil, fmt.Errorf("push: downloads folder: %w", err)
	}
	a := &Assembler{spec: s, n: len(s.Chunks),
		part: filepath.Join(dir, s.SHA256+".part"), have: filepath.Join(dir, s.SHA256+".have")}
	if _, err := os.Stat(a.part); os.IsNotExist(err) {
		if err := prunePartial(dir, KeepPartial-1); err != nil {
			return nil, err
		}
	}
	var err error
	if a.pf, err = os.OpenFile(a.part, os.O_RDWR|os.O_CREATE, 0o640); err != nil {
		return nil, fmt.Errorf("push: %w", err)
	}
	if a.hf, err = os.OpenFile(a.have, os.O_RDWR|os.O_CREATE, 0o640); err != nil {
		a.pf.Close()
		return nil, fmt.Errorf("push: %w", err)
	}
	if err := a.load(); err != nil {
		a.Close()
		return nil, fmt.Errorf("push: open %s: %w (check free space and permissions in the state dir)", a.part, err)
	}
	return a, nil
}

// load reads the bitmap, or starts a new one when the .have file is missing, damaged or
// for another layout (a pusher that chose another chunk size): then the .part file is
// checked chunk by chunk against the hashes, so its verified bytes are not fetched again.
func (a *Assembler) load() error {
	hdr, _ := json.Marshal(haveHeader{Schema: haveSchema, SHA256: a.spec.SHA256, Size: a.spec.Size, ChunkSize: a.spec.ChunkSize})
	hdr = append(hdr, '\n')
	a.bitsAt = int64(len(hdr))
	a.bits = make([]byte, (a.n+7)/8)
	old, err := io.ReadAll(io.LimitReader(a.hf, a.bitsAt+int64(len(a.bits))+1))
	if err != nil {
		return err
	}
	fi, err := a.pf.Stat()
	if err != nil {
		return err
	}
	if fi.Size() == a.spec.Size && len(old) == len(hdr)+len(a.bits) && bytes.Equal(old[:len(hdr)], hdr) {
		copy(a.bits, old[len(hdr):])
	} else {
		if err := a.pf.Truncate(a.spec.Size); err != nil {
			return err
		}
		if fi.Size() > 0 {
			a.rescan()
		}
		if err := a.pf.Sync(); err != nil {
			return err
		}
		if err := a.hf.Truncate(0); err != nil {
			return err
		}
		if _, err := a.hf.WriteAt(append(hdr, a.bits...), 0); err != nil {
			return err
		}
		if err := a.hf.Sync(); err != nil {
			return err
		}
		if err := durable.Sync(filepath.Dir(a.part)); err != nil {
			return err
		}
	}
	for i := range a.n {
		if a.has(i) {
			a.got++
			a.gotBytes += int64(a.chunkLen(i))
		}
	}
	return nil
}

// rescan sets the bit of every chunk of the .part file that matches its hash.
func (a *Assembler) rescan() {
	buf := make([]byte, a.spec.ChunkSize)
	for i := range a.n {
		b := buf[:a.chunkLen(i)]
		if _, err := a.pf.ReadAt(b, int64(i)*int64(a.spec.ChunkSize)); err != nil {
			continue
		}
		if sum := sha256.Sum256(b); hex.EncodeToString(sum[:]) == a.spec.Chunks[i] {
			a.bits[i/8] |= 1 << (i % 8)
		}
	}
}

func (a *Assembler) has(i int) bool { return a.bits[i/8]&(1<<(i%8)) != 0 }

func (a *Assembler) chunkLen(i int) int {
	return int(min(int64(a.spec.ChunkSize), a.spec.Size-int64(i)*int64(a.spec.ChunkSize)))
}

// Put checks chunk i against its hash and, when it is new, writes it, fsyncs it, then
// records it in the bitmap and fsyncs that. It reports whether the chunk was new. A refused
// chunk (ErrChunkIndex, ErrChunkHash) leaves everything as it was; other errors are the
// disk's.
func (a *Assembler) Put(i int, data []byte) (bool, error) {
	if i < 0 || i >= a.n || len(data) != a.chunkLen(i) {
		return false, fmt.Errorf("%w: chunk %d of %d bytes; the bundle has %d chunks", ErrChunkIndex, i, len(data), a.n)
	}
	if sum := sha256.Sum256(data); hex.EncodeToString(sum[:]) != a.spec.Chunks[i] {
		return false, fmt.Errorf("%w: chunk %d has sha256 %x, the command says %s", ErrChunkHash, i, sum, a.spec.Chunks[i])
	}
	if a.has(i) {
		return false, nil
	}
	if _, err := a.pf.WriteAt(data, int64(i)*int64(a.spec.ChunkSize)); err != nil {
		return false, fmt.Errorf("write chunk %d: %w", i, err)
	}
	if err := a.pf.Sync(); err != nil {
		return false, fmt.Errorf("sync chunk %d: %w", i, err)
	}
	a.bits[i/8] |= 1 << (i % 8)
	if _, err := a.hf.WriteAt(a.bits[i/8:i/8+1], a.bitsAt+int64(i/8)); err != nil {
		return false, fmt.Errorf("record chunk %d: %w", i, err)
	}
	if err := a.hf.Sync(); err != nil {
		return false, fmt.Errorf("record chunk %d: %w", i, err)
	}
	a.got++
	a.gotBytes += int64(len(data))
	return true, nil
}

// Missing lists the chunks not yet verified, in order.
func (a *Assembler) Missing() []int {
	var out []int
	for i := range a.n {
		if !a.has(i) {
			out = append(out, i)
		}
	}
	return out
}

// Progress is how many chunks and bytes are verified.
func (a *Assembler) Progress() (chunks int, bytes int64) { return a.got, a.gotBytes }

// Complete reports whether every chunk is verified.
func (a *Assembler) Complete() bool { return a.got == a.n }

// Finish checks the whole file's sha256 and returns its path; the files stay until Remove.
// On a mismatch both files are deleted: the chunks matched the command's hashes, so the
// command's hashes do not describe the bundle it names.
func (a *Assembler) Finish() (string, error) {
	if !a.Complete() {
		return "", fmt.Errorf("push: %d of %d chunks are still missing", a.n-a.got, a.n)
	}
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(a.pf, 0, a.spec.Size)); err != nil {
		return "", fmt.Errorf("push: read %s: %w", a.part, err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != a.spec.SHA256 {
		a.Remove()
		return "", fmt.Errorf("push: %w: the assembled bundle has %s, the command says %s (the partial files were deleted: check that the pusher sends the right file)", ErrChecksum, got, a.spec.SHA256)
	}
	a.Close()
	return a.part, nil
}

// Close closes the files and keeps them, for a later command to resume.
func (a *Assembler) Close() error {
	var err error
	for _, f := range []**os.File{&a.pf, &a.hf} {
		if *f != nil {
			if cerr := (*f).Close(); err == nil {
				err = cerr
			}
			*f = nil
		}
	}
	return err
}

// Remove closes and deletes both files.
func (a *Assembler) Remove() error {
	a.Close()
	var errs []error
	for _, f := range []string{a.part, a.have} {
		if err := os.Remove(f); err != nil && !os.IsNotExist(err) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// prunePartial removes the oldest partial pushed bundles (by modification time) in dir
// until at most keep remain.
func prunePartial(dir string, keep int) error {
	parts, err := filepath.Glob(filepath.Join(dir, "*.part"))
	if err != nil || len(parts) <= keep {
		return err
	}
	type aged struct {
		path string
		mod  int64
	}
	var all []aged
	for _, p := range parts {
		if fi, err := os.Stat(p); err == nil {
			all = append(all, aged{p, fi.ModTime().UnixNano()})
		}
	}
	slices.SortFunc(all, func(x, y aged) int { return cmp.Compare(x.mod, y.mod) })
	for _, p := range all[:max(len(all)-keep, 0)] {
		for _, f := range []string{p.path, strings.TrimSuffix(p.path, ".part") + ".have"} {
			if err := os.Remove(f); err != nil && !os.IsNotExist(err) {
				return fmt.Errorf("push: remove an old partial bundle: %w", err)
			}
		}
	}
	return nil
}
