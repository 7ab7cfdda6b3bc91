package bundle

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// Errors Open and ReadManifest wrap, for decisions with errors.Is. ErrManifest (manifest.go)
// is wrapped by every manifest decoding and validation error.
var (
	ErrUnsigned         = errors.New("bundle is not signed")                          // no manifest.json + manifest.json.minisig as the first two members
	ErrSignature        = errors.New("bundle signature does not verify")              // the verifier refused; its error is wrapped too
	ErrUnsafePath       = errors.New("unsafe path in bundle")                         // absolute, "..", unclean, control characters
	ErrUnsupportedEntry = errors.New("unsupported archive entry")                     // symlink, hard link, device, fifo, sparse file
	ErrTooLarge         = errors.New("bundle exceeds a size limit")                   // archive, unpacked bytes, file count, manifest, signature
	ErrRatio            = errors.New("bundle exceeds the compression ratio limit")    // likely a decompression bomb
	ErrTruncated        = errors.New("bundle archive is truncated")                   // gzip or tar stream ends early
	ErrCorrupt          = errors.New("bundle archive is corrupt")                     // malformed gzip or tar data
	ErrChecksum         = errors.New("bundle file does not match its manifest entry") // sha256 or size differs
	ErrExtraFile        = errors.New("bundle holds a file its manifest does not list")
	ErrMissingFile      = errors.New("bundle lacks a file its manifest lists")
	ErrExpired          = errors.New("bundle has expired")
	ErrDuplicate        = errors.New("bundle holds a member twice")
)

// Default limits of OpenOptions.
const (
	DefaultMaxArchiveBytes  = 512 << 20
	DefaultMaxUnpackedBytes = 1 << 30
	DefaultMaxRatio         = 100
	DefaultMaxFiles         = 64
)

// ratioFloor is how many bytes may be unpacked before MaxRatio applies: the start of any
// archive (tar headers, a small manifest) compresses far better than its bulk.
const ratioFloor = 1 << 20

// OpenOptions are the trust and the limits for reading an untrusted bundle. Zero limits
// take the defaults.
type OpenOptions struct {
	// Verify checks the detached signature over the exact manifest.json bytes and returns
	// the id of the key that made it. Open refuses to run without it.
	Verify func(manifest, sig []byte) (keyID string, err error)
	// MaxArchiveBytes caps the bytes read from the input (compressed, for a gzip bundle).
	MaxArchiveBytes int64
	// MaxUnpackedBytes caps the bytes of the tar stream after decompression, and the sum of
	// the sizes the manifest declares.
	MaxUnpackedBytes int64
	// MaxRatio caps unpacked/compressed bytes, checked as bytes flow (after the first MiB),
	// so a decompression bomb stops early.
	MaxRatio float64
	// MaxFiles caps the files the manifest lists, and separately the directory entries.
	MaxFiles int
	// Now is the clock for expiry; default time.Now.
	Now func() time.Time
}

func (o OpenOptions) withDefaults() OpenOptions {
	if o.MaxArchiveBytes <= 0 {
		o.MaxArchiveBytes = DefaultMaxArchiveBytes
	}
	if o.MaxUnpackedBytes <= 0 {
		o.MaxUnpackedBytes = DefaultMaxUnpackedBytes
	}
	if o.MaxRatio <= 0 {
		o.MaxRatio = DefaultMaxRatio
	}
	if o.MaxFiles <= 0 {
		o.MaxFiles = DefaultMaxFiles
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return o
}

// Bundle is a verified bundle extracted into Dir.
type Bundle struct {
	Manifest Manifest
	KeyID    string // the key that signed the manifest, as Verify reported it
	Dir      string // where the files are
	Size     int64  // archive bytes read
}

// Path returns the local path of an archive path (a manifest File.Path).
func (b *Bundle) Path(archivePath string) string {
	return filepath.Join(b.Dir, filepath.FromSlash(archivePath))
}

// Open reads an untrusted bundle from r and extracts it into dir, which must exist and be
// empty (the store's staging directory). Nothing but the first two members is read before
// the signature verifies; then every member must be a regular file the manifest lists,
// with its exact size and sha256, written beneath dir only (through os.Root, with O_EXCL).
// Directory entries are skipped; links, devices, fifos and sparse files are refused. The
// limits in opt apply as bytes flow. On any error dir is left empty, and the error wraps
// one of the Err* sentinels (or ErrManifest) when the bundle is at fault.
func Open(r io.Reader, dir string, opt OpenOptions) (_ *Bundle, err error) {
	if opt.Verify == nil {
		return nil, errors.New("open bundle: no verifier: bundles are always verified")
	}
	opt = opt.withDefaults()
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, fmt.Errorf("open bundle: staging directory: %w", err)
	}
	defer root.Close()
	if err := checkEmpty(root); err != nil {
		return nil, fmt.Errorf("open bundle: staging directory %s: %w", dir, err)
	}
	defer func() {
		if err != nil {
			if cerr := emptyDir(root); cerr != nil {
				err = fmt.Errorf("%w (and cleaning %s failed: %v)", err, dir, cerr)
			}
		}
	}()

	s := newStream(r, opt)
	if err := s.start(); err != nil {
		return nil, err
	}
	h, err := s.readHead(opt.Verify, true)
	if err != nil {
		return nil, err
	}
	m := h.m
	if err := checkExpiry(m, opt.Now()); err != nil {
		return nil, err
	}
	if len(m.Files) > opt.MaxFiles {
		return nil, fmt.Errorf("%w: the manifest lists %d files, the limit is %d", ErrTooLarge, len(m.Files), opt.MaxFiles)
	}
	want := make(map[string]File, len(m.Files))
	var total int64
	for _, f := range m.Files {
		if f.Size > opt.MaxUnpackedBytes-total {
			return nil, fmt.Errorf("%w: the manifest's files add up to more than %d bytes (MaxUnpackedBytes)", ErrTooLarge, opt.MaxUnpackedBytes)
		}
		total += f.Size
		want[f.Path] = f
	}

	seen := make(map[string]bool, len(m.Files))
	dirs := 0
	for {
		hdr, err := s.next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
		name := hdr.Name
		if hdr.Typeflag == tar.TypeDir {
			name = strings.TrimSuffix(name, "/")
		}
		if err := CheckPath(name); err != nil {
			return nil, fmt.Errorf("%w: member %q: %v", ErrUnsafePath, hdr.Name, err)
		}
		switch {
		case sparse(hdr):
			return nil, fmt.Errorf("%w: member %q is %s", ErrUnsupportedEntry, name, describe(hdr))
		case hdr.Typeflag == tar.TypeReg:
		case hdr.Typeflag == tar.TypeDir:
			if dirs++; dirs > opt.MaxFiles {
				return nil, fmt.Errorf("%w: more than %d directory entries", ErrTooLarge, opt.MaxFiles)
			}
			continue // directories are created as files need them
		default:
			return nil, fmt.Errorf("%w: member %q is %s; bundles hold regular files only", ErrUnsupportedEntry, name, describe(hdr))
		}
		if seen[name] || name == ManifestName || name == SignatureName {
			return nil, fmt.Errorf("%w: %q", ErrDuplicate, name)
		}
		f, ok := want[name]
		if !ok {
			return nil, fmt.Errorf("%w: %q", ErrExtraFile, name)
		}
		seen[name] = true
		if hdr.Size != f.Size {
			return nil, fmt.Errorf("%w: %q is %d bytes, the manifest says %d", ErrChecksum, name, hdr.Size, f.Size)
		}
		if err := s.extract(root, f); err != nil {
			return nil, err
		}
	}
	for _, f := range m.Files {
		if !seen[f.Path] {
			return nil, fmt.Errorf("%w: %q", ErrMissingFile, f.Path)
		}
	}
	return &Bundle{Manifest: m, KeyID: h.keyID, Dir: dir, Size: s.raw.n}, nil
}

// ReadManifest reads only the first two members of a bundle: the manifest and its
// signature. With opt.Verify set it verifies the signature exactly as Open does. With
// opt.Verify nil NOTHING IS VERIFIED: the manifest and signature are returned as found (sig
// is nil when the second member is not a signature); that is for inspecting a bundle, never
// for trusting it. The manifest is decoded strictly and validated; when only validation
// fails, the decoded manifest and raw bytes are returned with the error so a tool can show
// them. Expiry is not checked (Open checks it). The archive limits of opt apply.
func ReadManifest(r io.Reader, opt OpenOptions) (Manifest, []byte, []byte, error) {
	opt = opt.withDefaults()
	s := newStream(r, opt)
	if err := s.start(); err != nil {
		return Manifest{}, nil, nil, err
	}
	h, err := s.readHead(opt.Verify, opt.Verify != nil)
	if err != nil && !h.decoded {
		return Manifest{}, nil, nil, err
	}
	return h.m, h.raw, h.sig, err
}

func checkExpiry(m Manifest, now time.Time) error {
	if m.Expires != nil && m.Expires.Before(now) {
		return fmt.Errorf("%w: %s %s expired at %s", ErrExpired, m.Name, m.Version, m.Expires.UTC().Format(time.RFC3339))
	}
	return nil
}

// stream is the layered reader: input → rawMeter (archive cap) → bufio (gzip magic) →
// gzip? → tarMeter (unpacked cap, ratio, end detection) → tar.Reader.
type stream struct {
	opt OpenOptions
	raw *rawMeter
	buf *bufio.Reader
	gz  *gzip.Reader
	tm  *tarMeter
	tr  *tar.Reader
}

func newStream(r io.Reader, opt OpenOptions) *stream {
	raw := &rawMeter{r: r, max: opt.MaxArchiveBytes}
	return &stream{opt: opt, raw: raw, buf: bufio.NewReader(raw)}
}

// start detects gzip by its magic number and sets up the tar reader.
func (s *stream) start() error {
	var src io.Reader = s.buf
	if magic, _ := s.buf.Peek(2); len(magic) == 2 && magic[0] == 0x1f && magic[1] == 0x8b {
		gz, err := gzip.NewReader(s.buf)
		if err != nil {
			return s.fail(err)
		}
		s.gz = gz
		src = gz
	}
	s.tm = &tarMeter{r: src, raw: s.raw, max: s.opt.MaxUnpackedBytes, ratio: s.opt.MaxRatio}
	s.tr = tar.NewReader(s.tm)
	return nil
}

// fail turns a read error into the error to report: a limit that tripped, an I/O error of
// the input, a truncated or a corrupt archive.
func (s *stream) fail(err error) error {
	switch {
	case s.tm != nil && s.tm.err != nil:
		return s.tm.err
	case s.raw.capErr != nil:
		return s.raw.capErr
	case s.raw.ioErr != nil:
		return fmt.Errorf("read bundle: %w", s.raw.ioErr)
	case errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF):
		return fmt.Errorf("%w: the input ends after %d bytes", ErrTruncated, s.raw.n)
	}
	return fmt.Errorf("%w: %v", ErrCorrupt, err)
}

// next returns the next member, or io.EOF at a proper end of archive (two zero blocks,
// then nothing but zeros up to the end of the stream, and a sound gzip trailer).
func (s *stream) next() (*tar.Header, error) {
	hdr, err := s.tr.Next()
	if err == io.EOF {
		if s.tm.eof {
			// The stream ended where a header or the end-of-archive marker belonged.
			return nil, fmt.Errorf("%w: the tar stream ends without its end-of-archive marker", ErrTruncated)
		}
		return nil, s.drain()
	}
	if err != nil && !(errors.Is(err, tar.ErrInsecurePath) && hdr != nil) {
		return nil, s.fail(err)
	}
	return hdr, nil
}

// drain reads what follows the end-of-archive marker: zero padding, and for gzip the
// trailer, whose CRC and length are then checked.
func (s *stream) drain() error {
	var block [32 << 10]byte
	for {
		n, err := s.tm.Read(block[:])
		if slices.ContainsFunc(block[:n], func(b byte) bool { return b != 0 }) {
			return fmt.Errorf("%w: data after the end-of-archive marker", ErrCorrupt)
		}
		if err == io.EOF {
			return io.EOF
		}
		if err != nil {
			return s.fail(err)
		}
	}
}

type headInfo struct {
	m        Manifest
	raw, sig []byte
	keyID    string
	decoded  bool // m holds the decoded manifest (it may still fail validation)
}

// readHead reads manifest.json and manifest.json.minisig, verifies, decodes, validates.
func (s *stream) readHead(verify func(manifest, sig []byte) (string, error), needSig bool) (headInfo, error) {
	var h headInfo
	hdr, err := s.next()
	if err == io.EOF {
		return h, fmt.Errorf("%w: the archive is empty; manifest.json must be its first member", ErrUnsigned)
	}
	if err != nil {
		return h, err
	}
	if h.raw, err = s.leading(hdr, ManifestName, MaxManifestBytes); err != nil {
		return h, err
	}
	hdr, err = s.next()
	switch {
	case err == io.EOF || (err == nil && hdr.Name != SignatureName):
		if needSig {
			return h, fmt.Errorf("%w: %s must follow %s as the second member", ErrUnsigned, SignatureName, ManifestName)
		}
	case err != nil:
		return h, err
	default:
		if h.sig, err = s.leading(hdr, SignatureName, MaxSignatureBytes); err != nil {
			return h, err
		}
	}
	if verify != nil {
		if h.keyID, err = verify(h.raw, h.sig); err != nil {
			return h, fmt.Errorf("%w: %w", ErrSignature, err)
		}
	}
	m, err := decodeManifest(h.raw)
	if err != nil {
		return h, err
	}
	h.m, h.decoded = m, true
	return h, m.Validate()
}

// leading reads one of the two leading members, which must be a regular file called name.
func (s *stream) leading(hdr *tar.Header, name string, limit int64) ([]byte, error) {
	if hdr.Name != name {
		if err := CheckPath(hdr.Name); err != nil {
			return nil, fmt.Errorf("%w: member %q: %v", ErrUnsafePath, hdr.Name, err)
		}
		return nil, fmt.Errorf("%w: the first member is %q; a bundle starts with %s then %s", ErrUnsigned, hdr.Name, ManifestName, SignatureName)
	}
	if hdr.Typeflag != tar.TypeReg || sparse(hdr) {
		return nil, fmt.Errorf("%w: %s is %s", ErrUnsupportedEntry, name, describe(hdr))
	}
	if hdr.Size > limit {
		return nil, fmt.Errorf("%w: %s is %d bytes, the limit is %d", ErrTooLarge, name, hdr.Size, limit)
	}
	b := make([]byte, hdr.Size)
	if _, err := io.ReadFull(s.tr, b); err != nil {
		return nil, s.fail(err)
	}
	return b, nil
}

// decodeManifest decodes strictly: unknown fields and trailing data are refused.
func decodeManifest(raw []byte) (Manifest, error) {
	var m Manifest
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		return Manifest{}, fmt.Errorf("%w: %s: %v", ErrManifest, ManifestName, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return Manifest{}, fmt.Errorf("%w: %s: data after the JSON object", ErrManifest, ManifestName)
	}
	return m, nil
}

// extract writes the current member to root/f.Path while hashing it, and checks it.
func (s *stream) extract(root *os.Root, f File) error {
	local := filepath.FromSlash(f.Path)
	if d := path.Dir(f.Path); d != "." {
		if err := root.MkdirAll(filepath.FromSlash(d), 0o755); err != nil {
			return fmt.Errorf("extract %q: %w", f.Path, err)
		}
	}
	out, err := root.OpenFile(local, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return fmt.Errorf("extract %q: %w", f.Path, err)
	}
	h := sha256.New()
	src := &readErr{r: io.LimitReader(s.tr, f.Size)}
	n, err := io.Copy(io.MultiWriter(out, h), src)
	switch {
	case src.err != nil:
		out.Close()
		return s.fail(src.err)
	case err != nil:
		out.Close()
		return fmt.Errorf("extract %q: %w", f.Path, err)
	case n < f.Size:
		out.Close()
		return s.fail(io.ErrUnexpectedEOF)
	}
	if err := out.Sync(); err != nil {
		out.Close()
		return fmt.Errorf("extract %q: %w", f.Path, err)
	}
	if err := out.Close(); err != nil {
		return fmt.Errorf("extract %q: %w", f.Path, err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != f.SHA256 {
		return fmt.Errorf("%w: %q has sha256 %s, the manifest says %s", ErrChecksum, f.Path, got, f.SHA256)
	}
	return nil
}

// readErr remembers the error of its reader, to tell read errors from write errors.
type readErr struct {
	r   io.Reader
	err error
}

func (e *readErr) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if err != nil && err != io.EOF {
		e.err = err
	}
	return n, err
}

// rawMeter counts the input bytes and enforces MaxArchiveBytes.
type rawMeter struct {
	r      io.Reader
	n, max int64
	capErr error // a limit tripped (sticky)
	ioErr  error // the input failed (sticky)
}

func (m *rawMeter) Read(p []byte) (int, error) {
	if m.capErr != nil {
		return 0, m.capErr
	}
	if m.ioErr != nil {
		return 0, m.ioErr
	}
	n, err := m.r.Read(p)
	m.n += int64(n)
	if m.n > m.max {
		m.capErr = fmt.Errorf("%w: the archive is larger than %d bytes (MaxArchiveBytes)", ErrTooLarge, m.max)
		return 0, m.capErr
	}
	if err != nil && err != io.EOF {
		m.ioErr = err
	}
	return n, err
}

// tarMeter counts the unpacked tar stream, enforces MaxUnpackedBytes and MaxRatio, and
// notes whether the stream itself ended (eof): a tar reader that reports io.EOF after
// that did not see the end-of-archive marker.
type tarMeter struct {
	r      io.Reader
	raw    *rawMeter
	n, max int64
	ratio  float64
	eof    bool
	err    error // a limit tripped (sticky)
}

func (m *tarMeter) Read(p []byte) (int, error) {
	if m.err != nil {
		return 0, m.err
	}
	n, err := m.r.Read(p)
	m.n += int64(n)
	switch {
	case m.n > m.max:
		m.err = fmt.Errorf("%w: the archive unpacks to more than %d bytes (MaxUnpackedBytes)", ErrTooLarge, m.max)
	case m.n > ratioFloor && float64(m.n) > m.ratio*float64(m.raw.n):
		m.err = fmt.Errorf("%w: %d bytes unpacked from %d (more than %g:1)", ErrRatio, m.n, m.raw.n, m.ratio)
	}
	if m.err != nil {
		return 0, m.err
	}
	if err == io.EOF {
		if n > 0 {
			// Report the end on its own call, so a full read of the last block is not
			// mistaken for a truncated one.
			return n, nil
		}
		m.eof = true
	}
	return n, err
}

func checkEmpty(root *os.Root) error {
	d, err := root.Open(".")
	if err != nil {
		return err
	}
	defer d.Close()
	names, err := d.Readdirnames(1)
	if err == io.EOF || (err == nil && len(names) == 0) {
		return nil
	}
	if err != nil {
		return err
	}
	return fmt.Errorf("not empty (holds %q)", names[0])
}

// emptyDir removes everything beneath root, leaving root itself.
func emptyDir(root *os.Root) error {
	d, err := root.Open(".")
	if err != nil {
		return err
	}
	names, err := d.Readdirnames(-1)
	d.Close()
	if err != nil {
		return err
	}
	var errs []error
	for _, n := range names {
		errs = append(errs, root.RemoveAll(n))
	}
	return errors.Join(errs...)
}

// sparse reports a sparse member (old GNU format or GNU's PAX records): the tar reader
// would fill its holes with zeros no limit on the stream sees, so bundles never hold one.
func sparse(hdr *tar.Header) bool {
	if hdr.Typeflag == tar.TypeGNUSparse {
		return true
	}
	for k := range hdr.PAXRecords {
		if strings.HasPrefix(k, "GNU.sparse.") {
			return true
		}
	}
	return false
}

func describe(hdr *tar.Header) string {
	if sparse(hdr) {
		return "a sparse file"
	}
	switch hdr.Typeflag {
	case tar.TypeSymlink:
		return "a symbolic link"
	case tar.TypeLink:
		return "a hard link"
	case tar.TypeChar:
		return "a character device"
	case tar.TypeBlock:
		return "a block device"
	case tar.TypeFifo:
		return "a fifo"
	case tar.TypeDir:
		return "a directory"
	}
	return fmt.Sprintf("an entry of type %q", hdr.Typeflag)
}
