package bundle

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edge-agent/edge-agent/internal/testenv"
)

// packFiles writes the labels and an extra beside the real MNIST model and returns the
// archive path → local path map Pack takes.
func packFiles(t *testing.T) map[string]string {
	t.Helper()
	dir := t.TempDir()
	labels := filepath.Join(dir, "labels.txt")
	extra := filepath.Join(dir, "README.md")
	if err := os.WriteFile(labels, []byte("0\n1\n2\n3\n4\n5\n6\n7\n8\n9\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(extra, []byte("# MNIST\nTrained on the MNIST digits.\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return map[string]string{
		"model.tflite":    testenv.Data(t, "mnist_model.tflite"),
		"labels.txt":      labels,
		"extra/README.md": extra,
	}
}

func pack(t *testing.T, m Manifest, files map[string]string, s testSigner, gz bool) ([]byte, Manifest) {
	t.Helper()
	var buf bytes.Buffer
	got, err := Pack(&buf, m, files, s.sign, PackOptions{Gzip: gz})
	if err != nil {
		t.Fatalf("Pack: %v", err)
	}
	return buf.Bytes(), got
}

func TestPackOpenRoundTrip(t *testing.T) {
	s := newTestSigner(1)
	files := packFiles(t)
	for _, gz := range []bool{false, true} {
		t.Run(fmt.Sprintf("gzip=%v", gz), func(t *testing.T) {
			archive, packed := pack(t, testManifest(), files, s, gz)
			again, _ := pack(t, testManifest(), files, s, gz)
			if !bytes.Equal(archive, again) {
				t.Errorf("packing twice gave different archives (%d and %d bytes); want identical bytes", len(archive), len(again))
			}
			if got, want := archive[0] == 0x1f && archive[1] == 0x8b, gz; got != want {
				t.Errorf("archive starts with gzip magic: got %v; want %v", got, want)
			}
			var paths []string
			for _, f := range packed.Files {
				paths = append(paths, f.Path)
			}
			if want := []string{"extra/README.md", "labels.txt", "model.tflite"}; !reflect.DeepEqual(paths, want) {
				t.Errorf("manifest files: got %q; want %q", paths, want)
			}
			if packed.Schema != Schema {
				t.Errorf("schema: got %q; want %q", packed.Schema, Schema)
			}

			parent, dir := stagingDir(t)
			b, err := Open(bytes.NewReader(archive), dir, OpenOptions{Verify: s.verify})
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			if !reflect.DeepEqual(b.Manifest, packed) {
				gotJSON, _ := json.Marshal(b.Manifest)
				wantJSON, _ := json.Marshal(packed)
				t.Errorf("opened manifest:\n got %s\nwant %s", gotJSON, wantJSON)
			}
			if b.KeyID != s.id {
				t.Errorf("KeyID: got %q; want %q", b.KeyID, s.id)
			}
			if b.Size != int64(len(archive)) {
				t.Errorf("Size: got %d; want %d", b.Size, len(archive))
			}
			if b.Dir != dir {
				t.Errorf("Dir: got %q; want %q", b.Dir, dir)
			}
			for archivePath, local := range files {
				want, _ := os.ReadFile(local)
				got, err := os.ReadFile(b.Path(archivePath))
				if err != nil || !bytes.Equal(got, want) {
					t.Errorf("%s: got %d bytes (err %v); want the %d bytes of %s", archivePath, len(got), err, len(want), local)
				}
			}
			checkContained(t, parent, dir)

			// The archive's own headers: manifest, signature, then files in path order;
			// regular, 0644, owner 0, mtime Created.
			var r io.Reader = bytes.NewReader(archive)
			if gz {
				if r, err = gzip.NewReader(r); err != nil {
					t.Fatal(err)
				}
			}
			tr := tar.NewReader(r)
			var names []string
			for {
				h, err := tr.Next()
				if err == io.EOF {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
				names = append(names, h.Name)
				if h.Typeflag != tar.TypeReg || h.Mode != 0o644 || h.Uid != 0 || h.Gid != 0 || !h.ModTime.Equal(testCreated) {
					t.Errorf("%s: type %q mode %o uid %d gid %d mtime %v; want regular 0644 0:0 %v", h.Name, h.Typeflag, h.Mode, h.Uid, h.Gid, h.ModTime, testCreated)
				}
			}
			if want := []string{ManifestName, SignatureName, "extra/README.md", "labels.txt", "model.tflite"}; !reflect.DeepEqual(names, want) {
				t.Errorf("members: got %q; want %q", names, want)
			}
		})
	}
}

func TestPackSetsCreatedAndSchema(t *testing.T) {
	m := testManifest()
	m.Created = time.Time{}
	before := time.Now().Add(-time.Second)
	_, got := pack(t, m, packFiles(t), newTestSigner(1), false)
	if got.Created.Before(before) || got.Created.After(time.Now()) {
		t.Errorf("Created: got %v; want about now", got.Created)
	}
	if got.Schema != Schema {
		t.Errorf("Schema: got %q; want %q", got.Schema, Schema)
	}
}

func TestPackRefuses(t *testing.T) {
	s := newTestSigner(1)
	good := packFiles(t)
	with := func(k, v string) map[string]string {
		f := map[string]string{}
		for a, b := range good {
			f[a] = b
		}
		f[k] = v
		return f
	}
	badVersion := testManifest()
	badVersion.Version = "one"
	tests := []struct {
		name    string
		m       Manifest
		files   map[string]string
		sign    func([]byte) ([]byte, error)
		wantErr error // nil: any error
	}{
		{"no signer", testManifest(), good, nil, nil},
		{"signer fails", testManifest(), good, func([]byte) ([]byte, error) { return nil, errors.New("no key") }, nil},
		{"empty signature", testManifest(), good, func([]byte) ([]byte, error) { return nil, nil }, nil},
		{"unsafe path", testManifest(), with("../x", good["labels.txt"]), s.sign, ErrUnsafePath},
		{"reserved path", testManifest(), with(ManifestName, good["labels.txt"]), s.sign, nil},
		{"directory as file", testManifest(), with("dir", t.TempDir()), s.sign, nil},
		{"missing local file", testManifest(), with("gone", filepath.Join(t.TempDir(), "gone")), s.sign, nil},
		{"file inside a file", testManifest(), with("labels.txt/x", good["labels.txt"]), s.sign, ErrManifest},
		{"invalid manifest", badVersion, good, s.sign, ErrManifest},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			_, err := Pack(&buf, tt.m, tt.files, tt.sign, PackOptions{})
			if err == nil {
				t.Fatalf("Pack: got no error; want one")
			}
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Errorf("Pack: got %v; want %v", err, tt.wantErr)
			}
			if buf.Len() != 0 {
				t.Errorf("Pack wrote %d bytes before failing; want 0", buf.Len())
			}
		})
	}
}

// refusal is one crafted bad bundle.
type refusal struct {
	name    string
	archive func(t *testing.T, gz bool) []byte
	opt     func(*OpenOptions)
	want    error
}

func refusals() []refusal {
	s, other := newTestSigner(1), newTestSigner(2)
	files := smallFiles()
	m := withFiles(testManifest(), files)
	// build crafts head(m) followed by the file members, after edit changes them.
	build := func(edit func(ms []member) []member) func(*testing.T, bool) []byte {
		return func(t *testing.T, gz bool) []byte {
			ms := append(head(t, s, m), bodies(files)...)
			return craftTar(t, gz, edit(ms)...)
		}
	}
	// signedBy crafts a bundle whose manifest is changed by edit and signed by signer.
	signedBy := func(signer testSigner, edit func(*Manifest)) func(*testing.T, bool) []byte {
		return func(t *testing.T, gz bool) []byte {
			mm := withFiles(testManifest(), files)
			mm.Inputs = append([]Tensor(nil), mm.Inputs...)
			edit(&mm)
			return craftTar(t, gz, append(head(t, signer, mm), bodies(files)...)...)
		}
	}
	rawManifest := func(edit func(raw []byte) []byte) func(*testing.T, bool) []byte {
		return func(t *testing.T, gz bool) []byte {
			raw, err := marshalManifest(m)
			if err != nil {
				t.Fatal(err)
			}
			return craftTar(t, gz, append(signedHead(s, edit(raw)), bodies(files)...)...)
		}
	}
	// ms[0] manifest, ms[1] signature, ms[2] labels.txt, ms[3] model.tflite
	add := func(extra ...member) func([]member) []member {
		return func(ms []member) []member { return append(ms, extra...) }
	}
	insertAt := func(i int, extra member) func([]member) []member {
		return func(ms []member) []member { return append(ms[:i:i], append([]member{extra}, ms[i:]...)...) }
	}
	link := func(name string, typ byte, target string) member { return member{name: name, typ: typ, link: target} }

	return []refusal{
		{name: "unsigned", archive: build(func(ms []member) []member { return append(ms[:1:1], ms[2:]...) }), want: ErrUnsigned},
		{name: "empty archive", archive: func(t *testing.T, gz bool) []byte { return craftTar(t, gz) }, want: ErrUnsigned},
		{name: "bad signature", archive: build(func(ms []member) []member {
			sig := bytes.Clone(ms[1].body)
			sig[10] ^= 1
			ms[1].body = sig
			return ms
		}), want: ErrSignature},
		{name: "manifest tampered after signing", archive: build(func(ms []member) []member {
			ms[0].body = bytes.Replace(ms[0].body, []byte(`"sequence": 7`), []byte(`"sequence": 9`), 1)
			return ms
		}), want: ErrSignature},
		{name: "signed by another key", archive: signedBy(other, func(*Manifest) {}), want: ErrSignature},
		{name: "manifest not first", archive: build(func(ms []member) []member { return append([]member{ms[3]}, append(ms[:3:3], ms[4:]...)...) }), want: ErrUnsigned},
		{name: "signature first", archive: build(func(ms []member) []member { ms[0], ms[1] = ms[1], ms[0]; return ms }), want: ErrUnsigned},
		{name: "manifest is a symlink", archive: build(func(ms []member) []member {
			return append([]member{link(ManifestName, tar.TypeSymlink, "/etc/passwd")}, ms[1:]...)
		}), want: ErrUnsupportedEntry},
		{name: "manifest over 1 MiB", archive: build(func(ms []member) []member {
			ms[0].body = append(bytes.Clone(ms[0].body), bytes.Repeat([]byte(" "), MaxManifestBytes)...)
			return ms
		}), want: ErrTooLarge},
		{name: "signature over 8 KiB", archive: build(func(ms []member) []member {
			ms[1].body = make([]byte, MaxSignatureBytes+1)
			return ms
		}), want: ErrTooLarge},
		{name: "tampered file", archive: build(func(ms []member) []member {
			b := bytes.Clone(ms[3].body)
			b[0] ^= 1
			ms[3].body = b
			return ms
		}), want: ErrChecksum},
		{name: "size differs", archive: build(func(ms []member) []member {
			ms[3].body = append(bytes.Clone(ms[3].body), '!')
			return ms
		}), want: ErrChecksum},
		{name: "extra unlisted file", archive: build(add(reg("notes.txt", []byte("hi")))), want: ErrExtraFile},
		{name: "missing file", archive: build(func(ms []member) []member { return ms[:3] }), want: ErrMissingFile},
		{name: "duplicate member", archive: build(add(reg("labels.txt", files["labels.txt"]))), want: ErrDuplicate},
		{name: "manifest again", archive: build(add(reg(ManifestName, []byte("{}")))), want: ErrDuplicate},
		{name: "absolute path", archive: build(insertAt(2, reg("/etc/cron.d/x", []byte("x")))), want: ErrUnsafePath},
		{name: "dot dot", archive: build(insertAt(2, reg("../x", []byte("x")))), want: ErrUnsafePath},
		{name: "dot dot inside", archive: build(insertAt(2, reg("a/../../x", []byte("x")))), want: ErrUnsafePath},
		{name: "dot dot directory", archive: build(insertAt(2, member{name: "../d/", typ: tar.TypeDir})), want: ErrUnsafePath},
		{name: "control character", archive: build(insertAt(2, reg("a\nb", []byte("x")))), want: ErrUnsafePath},
		{name: "symlink", archive: build(insertAt(2, link("labels.txt", tar.TypeSymlink, "/etc/passwd"))), want: ErrUnsupportedEntry},
		{name: "symlink to a dir, then a file through it", archive: build(insertAt(2, link("extra", tar.TypeSymlink, "/tmp"))), want: ErrUnsupportedEntry},
		{name: "hardlink", archive: build(insertAt(2, link("labels.txt", tar.TypeLink, "/etc/passwd"))), want: ErrUnsupportedEntry},
		{name: "char device", archive: build(insertAt(2, member{name: "labels.txt", typ: tar.TypeChar})), want: ErrUnsupportedEntry},
		{name: "fifo", archive: build(insertAt(2, member{name: "labels.txt", typ: tar.TypeFifo})), want: ErrUnsupportedEntry},
		{name: "sparse file", archive: build(func(ms []member) []member {
			return append(ms[:2:2], paxHeader([2]string{"GNU.sparse.major", "0"}, [2]string{"GNU.sparse.minor", "1"},
				[2]string{"GNU.sparse.size", fmt.Sprint(len(files["labels.txt"]))}, [2]string{"GNU.sparse.numblocks", "1"},
				[2]string{"GNU.sparse.map", "0,4"}), reg("labels.txt", files["labels.txt"][:4]), ms[3])
		}), want: ErrUnsupportedEntry},
		{name: "sparse signature", archive: build(func(ms []member) []member {
			return append([]member{ms[0], paxHeader([2]string{"GNU.sparse.major", "0"}, [2]string{"GNU.sparse.minor", "1"},
				[2]string{"GNU.sparse.size", fmt.Sprint(len(ms[1].body))}, [2]string{"GNU.sparse.numblocks", "1"},
				[2]string{"GNU.sparse.map", "0,4"}), reg(SignatureName, ms[1].body[:4])}, ms[2:]...)
		}), want: ErrUnsupportedEntry},
		{name: "archive over MaxArchiveBytes", archive: build(add()), opt: func(o *OpenOptions) { o.MaxArchiveBytes = 512 }, want: ErrTooLarge},
		{name: "declared files over MaxUnpackedBytes", archive: signedBy(s, func(m *Manifest) {
			m.Files = append(m.Files, File{Path: "weights.bin", SHA256: strings.Repeat("0", 64), Size: 2 << 20})
		}), opt: func(o *OpenOptions) { o.MaxUnpackedBytes = 1 << 20 }, want: ErrTooLarge},
		{name: "tar stream over MaxUnpackedBytes", archive: build(add()), opt: func(o *OpenOptions) { o.MaxUnpackedBytes = 4096 }, want: ErrTooLarge},
		{name: "too many files", archive: build(add()), opt: func(o *OpenOptions) { o.MaxFiles = 1 }, want: ErrTooLarge},
		{name: "too many directories", archive: build(add(member{name: "a/", typ: tar.TypeDir}, member{name: "b/", typ: tar.TypeDir}, member{name: "c/", typ: tar.TypeDir})), opt: func(o *OpenOptions) { o.MaxFiles = 2 }, want: ErrTooLarge},
		{name: "expired", archive: signedBy(s, func(m *Manifest) {
			exp := testCreated.Add(24 * time.Hour)
			m.Expires = &exp
		}), opt: func(o *OpenOptions) { o.Now = func() time.Time { return testCreated.Add(25 * time.Hour) } }, want: ErrExpired},
		{name: "invalid version", archive: signedBy(s, func(m *Manifest) { m.Version = "one" }), want: ErrManifest},
		{name: "sequence zero", archive: signedBy(s, func(m *Manifest) { m.Sequence = 0 }), want: ErrManifest},
		{name: "model not listed", archive: signedBy(s, func(m *Manifest) { m.Model = "other.tflite" }), want: ErrManifest},
		{name: "wrong schema", archive: signedBy(s, func(m *Manifest) { m.Schema = "edge-agent/bundle/v2" }), want: ErrManifest},
		{name: "bad sha in manifest", archive: signedBy(s, func(m *Manifest) { m.Files[0].SHA256 = "ABC" }), want: ErrManifest},
		{name: "unsafe path in manifest", archive: signedBy(s, func(m *Manifest) { m.Files[0].Path = "../labels.txt" }), want: ErrManifest},
		{name: "unknown manifest field", archive: rawManifest(func(raw []byte) []byte {
			return bytes.Replace(raw, []byte(`"name":`), []byte(`"debug_shell": true, "name":`), 1)
		}), want: ErrManifest},
		{name: "manifest not JSON", archive: rawManifest(func([]byte) []byte { return []byte("name: mnist\n") }), want: ErrManifest},
		{name: "data after the manifest object", archive: rawManifest(func(raw []byte) []byte { return append(bytes.Clone(raw), "{}"...) }), want: ErrManifest},
		{name: "not an archive", archive: func(*testing.T, bool) []byte { return bytes.Repeat([]byte("garbage!"), 200) }, want: ErrCorrupt},
		{name: "data after the end of the archive", archive: func(t *testing.T, gz bool) []byte {
			if gz {
				// gzip: a second gzip member of junk after the first.
				var buf bytes.Buffer
				w := gzip.NewWriter(&buf)
				w.Write([]byte("junk"))
				w.Close()
				return append(validArchive(t, s, true), buf.Bytes()...)
			}
			return append(validArchive(t, s, false), "junk"...)
		}, want: ErrCorrupt},
	}
}

func TestOpenRefuses(t *testing.T) {
	s := newTestSigner(1)
	for _, tt := range refusals() {
		for _, gz := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/gzip=%v", tt.name, gz), func(t *testing.T) {
				archive := tt.archive(t, gz)
				opt := OpenOptions{Verify: s.verify}
				if tt.opt != nil {
					tt.opt(&opt)
				}
				parent, dir := stagingDir(t)
				b, err := Open(bytes.NewReader(archive), dir, opt)
				if !errors.Is(err, tt.want) {
					t.Fatalf("Open: got %v (bundle %v); want %v", err, b, tt.want)
				}
				t.Logf("refused: %v", err)
				if got := dirEntries(t, dir); len(got) != 0 {
					t.Errorf("staging dir after refusal holds %q; want nothing", got)
				}
				checkContained(t, parent, dir)
			})
		}
	}
}

func TestOpenTruncated(t *testing.T) {
	s := newTestSigner(1)
	for _, gz := range []bool{false, true} {
		archive := validArchive(t, s, gz)
		n := len(archive)
		cuts := []int{0, 1, 2, 5, 11, 100, 511, 512, 700, 1024, 1536, n / 2, n - 1024, n - 600, n - 512, n - 100, n - 1}
		if gz {
			cuts = append(cuts, n-4, n-8, n-9)
		}
		for _, cut := range cuts {
			if cut < 0 || cut >= n {
				continue
			}
			t.Run(fmt.Sprintf("gzip=%v/cut=%d_of_%d", gz, cut, n), func(t *testing.T) {
				parent, dir := stagingDir(t)
				_, err := Open(bytes.NewReader(archive[:cut]), dir, OpenOptions{Verify: s.verify})
				if !errors.Is(err, ErrTruncated) {
					t.Fatalf("Open: got %v; want %v", err, ErrTruncated)
				}
				t.Logf("refused: %v", err)
				if got := dirEntries(t, dir); len(got) != 0 {
					t.Errorf("staging dir holds %q; want nothing", got)
				}
				checkContained(t, parent, dir)
			})
		}
	}
}

// TestOpenGzipBomb streams 200 MiB of zeros through gzip (a few hundred KiB compressed) and
// checks Open stops after about a MiB, long before the bomb is spent.
func TestOpenGzipBomb(t *testing.T) {
	const size = 200 << 20
	s := newTestSigner(1)
	m := withFiles(testManifest(), smallFiles())
	m.Files = append(m.Files, File{Path: "zeros.bin", SHA256: strings.Repeat("0", 64), Size: size})
	pr, pw := io.Pipe()
	var produced atomic.Int64
	done := make(chan error, 1)
	go func() {
		gz := gzip.NewWriter(pw)
		tw := tar.NewWriter(gz)
		err := func() error {
			for _, mem := range head(t, s, m) {
				if err := tw.WriteHeader(&tar.Header{Name: mem.name, Typeflag: tar.TypeReg, Size: int64(len(mem.body)), Mode: 0o644}); err != nil {
					return err
				}
				if _, err := tw.Write(mem.body); err != nil {
					return err
				}
			}
			if err := tw.WriteHeader(&tar.Header{Name: "zeros.bin", Typeflag: tar.TypeReg, Size: size, Mode: 0o644}); err != nil {
				return err
			}
			zeros := make([]byte, 64<<10)
			for produced.Load() < size {
				n, err := tw.Write(zeros)
				produced.Add(int64(n))
				if err != nil {
					return err
				}
			}
			if err := tw.Close(); err != nil {
				return err
			}
			return gz.Close()
		}()
		pw.CloseWithError(err)
		done <- err
	}()

	parent, dir := stagingDir(t)
	start := time.Now()
	_, err := Open(pr, dir, OpenOptions{Verify: s.verify, MaxRatio: 100})
	elapsed := time.Since(start)
	pr.CloseWithError(errors.New("reader gone"))
	<-done
	if !errors.Is(err, ErrRatio) {
		t.Fatalf("Open: got %v; want %v", err, ErrRatio)
	}
	if got, limit := produced.Load(), int64(16<<20); got > limit {
		t.Errorf("the bomb had produced %d bytes when Open stopped; want at most %d", got, limit)
	}
	if elapsed > 3*time.Second {
		t.Errorf("Open took %v to stop the bomb; want well under 3s", elapsed)
	}
	if got := dirEntries(t, dir); len(got) != 0 {
		t.Errorf("staging dir holds %q; want nothing", got)
	}
	checkContained(t, parent, dir)
}

func TestOpenSkipsDirectoryEntries(t *testing.T) {
	s := newTestSigner(1)
	files := smallFiles()
	files["sub/deeper/extra.txt"] = []byte("extra")
	m := withFiles(testManifest(), files)
	ms := head(t, s, m)
	ms = append(ms, member{name: "sub/", typ: tar.TypeDir}, member{name: "labels.txt/", typ: tar.TypeDir})
	ms = append(ms, bodies(files)...)
	for _, gz := range []bool{false, true} {
		parent, dir := stagingDir(t)
		b, err := Open(bytes.NewReader(craftTar(t, gz, ms...)), dir, OpenOptions{Verify: s.verify})
		if err != nil {
			t.Fatalf("gzip=%v: Open: got %v; want no error", gz, err)
		}
		got, err := os.ReadFile(b.Path("sub/deeper/extra.txt"))
		if err != nil || string(got) != "extra" {
			t.Errorf("gzip=%v: sub/deeper/extra.txt: got %q, %v; want %q", gz, got, err, "extra")
		}
		checkContained(t, parent, dir)
	}
}

func TestOpenNeedsVerifierAndEmptyDir(t *testing.T) {
	s := newTestSigner(1)
	archive := validArchive(t, s, false)
	_, dir := stagingDir(t)
	if _, err := Open(bytes.NewReader(archive), dir, OpenOptions{}); err == nil || !strings.Contains(err.Error(), "no verifier") {
		t.Errorf("Open without Verify: got %v; want a 'no verifier' error", err)
	}
	keep := filepath.Join(dir, "keep")
	if err := os.WriteFile(keep, []byte("mine"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(bytes.NewReader(archive), dir, OpenOptions{Verify: s.verify}); err == nil {
		t.Errorf("Open into a non-empty dir: got no error; want one")
	}
	if b, err := os.ReadFile(keep); err != nil || string(b) != "mine" {
		t.Errorf("file already in the dir: got %q, %v; want it untouched", b, err)
	}
	if _, err := Open(bytes.NewReader(archive), filepath.Join(dir, "absent"), OpenOptions{Verify: s.verify}); err == nil {
		t.Errorf("Open into a missing dir: got no error; want one")
	}
}

// failingReader returns data then an I/O error.
type failingReader struct{ data []byte }

func (r *failingReader) Read(p []byte) (int, error) {
	if len(r.data) == 0 {
		return 0, errors.New("disk on fire")
	}
	n := copy(p, r.data)
	r.data = r.data[n:]
	return n, nil
}

func TestOpenReportsInputErrors(t *testing.T) {
	s := newTestSigner(1)
	archive := validArchive(t, s, true)
	_, dir := stagingDir(t)
	_, err := Open(&failingReader{data: archive[:len(archive)/2]}, dir, OpenOptions{Verify: s.verify})
	if err == nil || !strings.Contains(err.Error(), "disk on fire") || errors.Is(err, ErrTruncated) || errors.Is(err, ErrCorrupt) {
		t.Errorf("Open: got %v; want the input's own error, not a verdict on the bundle", err)
	}
	if got := dirEntries(t, dir); len(got) != 0 {
		t.Errorf("staging dir holds %q; want nothing", got)
	}
}

func TestReadManifest(t *testing.T) {
	s, other := newTestSigner(1), newTestSigner(2)
	files := smallFiles()
	m := withFiles(testManifest(), files)
	raw, _ := marshalManifest(m)
	unsigned := craftTar(t, true, append([]member{reg(ManifestName, raw)}, bodies(files)...)...)
	invalid := withFiles(testManifest(), files)
	invalid.Version = "one"
	exp := testCreated.Add(-time.Hour)
	expired := withFiles(testManifest(), files)
	expired.Expires = &exp

	tests := []struct {
		name     string
		archive  []byte
		verify   func(m, sig []byte) (string, error)
		wantErr  error
		wantName string // "" = no manifest returned
		wantSig  bool
	}{
		{"verified", validArchive(t, s, true), s.verify, nil, "mnist", true},
		{"not verified", validArchive(t, s, false), nil, nil, "mnist", true},
		{"other key", validArchive(t, s, true), other.verify, ErrSignature, "", false},
		{"unsigned, no verifier", unsigned, nil, nil, "mnist", false},
		{"unsigned, verifier", unsigned, s.verify, ErrUnsigned, "", false},
		{"invalid manifest is still shown", craftTar(t, false, head(t, s, invalid)...), s.verify, ErrManifest, "mnist", true},
		{"expiry is Open's business", craftTar(t, false, head(t, s, expired)...), s.verify, nil, "mnist", true},
		{"truncated", validArchive(t, s, true)[:300], nil, ErrTruncated, "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, gotRaw, sig, err := ReadManifest(bytes.NewReader(tt.archive), OpenOptions{Verify: tt.verify})
			if tt.wantErr == nil && err != nil || tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Fatalf("ReadManifest: got %v; want %v", err, tt.wantErr)
			}
			if got.Name != tt.wantName {
				t.Errorf("name: got %q; want %q", got.Name, tt.wantName)
			}
			if tt.wantName != "" && !bytes.HasPrefix(gotRaw, []byte("{\n  \"schema\"")) {
				t.Errorf("raw manifest: got %.40q; want the manifest.json bytes", gotRaw)
			}
			if (sig != nil) != tt.wantSig {
				t.Errorf("signature returned: got %v; want %v", sig != nil, tt.wantSig)
			}
		})
	}
}

// TestValidateFilePaths covers the path rules Validate applies to files (manifest.go).
func TestValidateFilePaths(t *testing.T) {
	tests := []struct {
		paths []string
		ok    bool
	}{
		{[]string{"model.tflite", "labels.txt", "extra/a", "extra/b/c"}, true},
		{[]string{"model.tflite", "labels.txt", "/abs"}, false},
		{[]string{"model.tflite", "labels.txt", "a\x00b"}, false},
		{[]string{"model.tflite", "labels.txt", "tab\tname"}, false},
		{[]string{"model.tflite", "labels.txt", "labels.txt/inner"}, false},
		{[]string{"model.tflite", "labels.txt", "x", "x/y/z"}, false},
		{[]string{"model.tflite", "labels.txt", "model.tflite"}, false},
	}
	for _, tt := range tests {
		files := map[string][]byte{}
		for _, p := range tt.paths {
			files[p] = []byte(p)
		}
		m := withFiles(testManifest(), files)
		if len(m.Files) < len(tt.paths) { // a duplicate path: list it twice
			m.Files = append(m.Files, m.Files[0])
		}
		err := m.Validate()
		if got := err == nil; got != tt.ok || (!tt.ok && !errors.Is(err, ErrManifest)) {
			t.Errorf("Validate with files %q: got %v; want ok=%v", tt.paths, err, tt.ok)
		}
	}
}

// TestDocExampleManifest keeps the example in docs/bundle-format.md a valid manifest.
func TestDocExampleManifest(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join(testenv.Root(t), "docs", "bundle-format.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, example, ok := strings.Cut(string(doc), "```json\n")
	example, _, ok2 := strings.Cut(example, "```")
	if !ok || !ok2 {
		t.Fatal("docs/bundle-format.md has no ```json example")
	}
	m, err := decodeManifest([]byte(example))
	if err == nil {
		err = m.Validate()
	}
	if err != nil {
		t.Errorf("the example manifest in docs/bundle-format.md: got %v; want a valid manifest", err)
	}
}
