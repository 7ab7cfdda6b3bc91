package bundle

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"time"
)

// Caps on the two leading members, applied by Pack and by Open.
const (
	MaxManifestBytes  = 1 << 20 // manifest.json
	MaxSignatureBytes = 8 << 10 // manifest.json.minisig
)

// PackOptions tunes Pack.
type PackOptions struct {
	Gzip bool // compress the tar with gzip
}

// Pack writes a signed bundle to w. files maps each archive path to the local file that
// holds it. Pack fills m.Files (sorted by path, with each file's sha256 and size), sets
// m.Schema and m.Created when they are zero, validates the manifest, marshals it, asks sign
// for the detached signature of exactly those bytes, and writes manifest.json,
// manifest.json.minisig and then the files in path order: regular members only, mode 0644,
// owner 0:0, modification time m.Created (whole seconds). With the same inputs and a fixed
// m.Created the archive is byte-for-byte reproducible.
//
// Nothing is written to w until every check has passed and the signature exists; a file
// that changes between hashing and writing fails Pack (w then holds a partial archive).
// It returns the manifest as written.
func Pack(w io.Writer, m Manifest, files map[string]string, sign func(manifest []byte) ([]byte, error), opt PackOptions) (Manifest, error) {
	if sign == nil {
		return m, errors.New("pack bundle: no signer: bundles are always signed")
	}
	paths := make([]string, 0, len(files))
	for p := range files {
		paths = append(paths, p)
	}
	slices.Sort(paths)
	m.Files = make([]File, 0, len(paths))
	for _, p := range paths {
		if err := CheckPath(p); err != nil {
			return m, fmt.Errorf("pack bundle: %w: %v", ErrUnsafePath, err)
		}
		if p == ManifestName || p == SignatureName {
			return m, fmt.Errorf("pack bundle: archive path %q is reserved", p)
		}
		sum, size, err := hashFile(files[p])
		if err != nil {
			return m, fmt.Errorf("pack bundle: %s: %w", p, err)
		}
		m.Files = append(m.Files, File{Path: p, SHA256: sum, Size: size})
	}
	if m.Schema == "" {
		m.Schema = Schema
	}
	if m.Created.IsZero() {
		m.Created = time.Now().UTC().Truncate(time.Second)
	}
	if err := m.Validate(); err != nil {
		return m, fmt.Errorf("pack bundle: %w", err)
	}
	raw, err := marshalManifest(m)
	if err != nil {
		return m, fmt.Errorf("pack bundle: %w", err)
	}
	if len(raw) > MaxManifestBytes {
		return m, fmt.Errorf("pack bundle: %w: manifest.json is %d bytes, the limit is %d", ErrTooLarge, len(raw), MaxManifestBytes)
	}
	sig, err := sign(raw)
	if err != nil {
		return m, fmt.Errorf("pack bundle: sign manifest: %w", err)
	}
	if len(sig) == 0 || len(sig) > MaxSignatureBytes {
		return m, fmt.Errorf("pack bundle: signer returned %d bytes; want 1..%d", len(sig), MaxSignatureBytes)
	}

	out := w
	var gz *gzip.Writer
	if opt.Gzip {
		gz = gzip.NewWriter(w) // no name, zero mtime: reproducible
		out = gz
	}
	tw := tar.NewWriter(out)
	mtime := m.Created.Truncate(time.Second)
	header := func(name string, size int64) *tar.Header {
		return &tar.Header{Typeflag: tar.TypeReg, Name: name, Size: size, Mode: 0o644, ModTime: mtime}
	}
	for _, mem := range []struct {
		name string
		data []byte
	}{{ManifestName, raw}, {SignatureName, sig}} {
		if err := tw.WriteHeader(header(mem.name, int64(len(mem.data)))); err != nil {
			return m, fmt.Errorf("pack bundle: %s: %w", mem.name, err)
		}
		if _, err := tw.Write(mem.data); err != nil {
			return m, fmt.Errorf("pack bundle: %s: %w", mem.name, err)
		}
	}
	for _, f := range m.Files {
		if err := tw.WriteHeader(header(f.Path, f.Size)); err != nil {
			return m, fmt.Errorf("pack bundle: %s: %w", f.Path, err)
		}
		if err := copyFile(tw, files[f.Path], f); err != nil {
			return m, fmt.Errorf("pack bundle: %s: %w", f.Path, err)
		}
	}
	if err := tw.Close(); err != nil {
		return m, fmt.Errorf("pack bundle: %w", err)
	}
	if gz != nil {
		if err := gz.Close(); err != nil {
			return m, fmt.Errorf("pack bundle: %w", err)
		}
	}
	return m, nil
}

// marshalManifest is the one encoding of a manifest: indented, HTML characters left as
// they are, a final newline. The signature covers exactly these bytes.
func marshalManifest(m Manifest) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(m); err != nil {
		return nil, fmt.Errorf("marshal manifest: %w", err)
	}
	return buf.Bytes(), nil
}

func openRegular(local string) (*os.File, int64, error) {
	f, err := os.Open(local)
	if err != nil {
		return nil, 0, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, err
	}
	if !st.Mode().IsRegular() {
		f.Close()
		return nil, 0, fmt.Errorf("%s is not a regular file (%v)", local, st.Mode().Type())
	}
	return f, st.Size(), nil
}

func hashFile(local string) (sum string, size int64, err error) {
	f, _, err := openRegular(local)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := sha256.New()
	size, err = io.Copy(h, f)
	if err != nil {
		return "", 0, fmt.Errorf("read %s: %w", local, err)
	}
	return hex.EncodeToString(h.Sum(nil)), size, nil
}

// copyFile writes exactly want.Size bytes of local to w and checks they are the bytes that
// were hashed.
func copyFile(w io.Writer, local string, want File) error {
	f, size, err := openRegular(local)
	if err != nil {
		return err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(w, h), io.LimitReader(f, want.Size))
	if err != nil {
		return fmt.Errorf("read %s: %w", local, err)
	}
	if n != want.Size || size != want.Size || hex.EncodeToString(h.Sum(nil)) != want.SHA256 {
		return fmt.Errorf("%s changed while the bundle was being packed", local)
	}
	return nil
}
