package bundle

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/edge-agent/edge-agent/models/spec"
)

// testSigner signs and verifies with plain Ed25519 over the manifest bytes. The agent wires
// in models/sign (minisign) instead; that package is tested on its own, including against
// the minisign CLI. Bundle only needs functions with the same shape.
type testSigner struct {
	id   string
	priv ed25519.PrivateKey
}

// newTestSigner returns a deterministic signer: the same seed gives the same key.
func newTestSigner(seed byte) testSigner {
	priv := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{seed}, ed25519.SeedSize))
	pub := priv.Public().(ed25519.PublicKey)
	return testSigner{id: hex.EncodeToString(pub[:8]), priv: priv}
}

func (s testSigner) sign(manifest []byte) ([]byte, error) {
	return ed25519.Sign(s.priv, manifest), nil
}

func (s testSigner) verify(manifest, sig []byte) (string, error) {
	pub := s.priv.Public().(ed25519.PublicKey)
	if len(sig) != ed25519.SignatureSize || !ed25519.Verify(pub, manifest, sig) {
		return "", errors.New("signature is not by key " + s.id)
	}
	return s.id, nil
}

func acceptAll(manifest, sig []byte) (string, error) { return "anyone", nil }

var testCreated = time.Date(2026, 11, 24, 16, 0, 0, 0, time.UTC)

// testManifest is a valid manifest without files (Pack or withFiles fills them).
func testManifest() Manifest {
	return Manifest{
		Name:     "mnist",
		Version:  "1.2.0",
		Sequence: 7,
		Created:  testCreated,
		Model:    "model.tflite",
		Inputs:   []Tensor{{DType: "float32", Shape: []int{1, 784}}},
		Outputs:  []Tensor{{DType: "float32", Shape: []int{1, 10}}},
		Processing: spec.Model{
			Input:  spec.Input{Kind: spec.InputImage, Image: spec.Image{Resize: spec.ResizeArea, Color: "grey", Std: []float64{255}}},
			Output: spec.Output{Kind: spec.OutputClassification, LabelsFile: "labels.txt"},
		},
		Notes: "test bundle <&>",
	}
}

// smallFiles is the content of the crafted bundles: small, so crafting is cheap.
func smallFiles() map[string][]byte {
	return map[string][]byte{
		"model.tflite": []byte("not really a tflite model, but bytes with a hash"),
		"labels.txt":   []byte("zero\none\ntwo\nthree\nfour\nfive\nsix\nseven\neight\nnine\n"),
	}
}

// withFiles returns m listing files (sorted), as Pack would.
func withFiles(m Manifest, files map[string][]byte) Manifest {
	m.Schema = Schema
	m.Files = nil
	for p, b := range files {
		sum := sha256.Sum256(b)
		m.Files = append(m.Files, File{Path: p, SHA256: hex.EncodeToString(sum[:]), Size: int64(len(b))})
	}
	slices.SortFunc(m.Files, func(a, b File) int { return strings.Compare(a.Path, b.Path) })
	return m
}

// member is one tar entry of a crafted archive. typ 0 means a regular file.
type member struct {
	name string
	typ  byte
	body []byte
	link string
	raw  []byte // written as is, instead of a header made by archive/tar
}

func reg(name string, body []byte) member { return member{name: name, typ: tar.TypeReg, body: body} }

// craftTar writes members with archive/tar directly, as an attacker would.
func craftTar(t testing.TB, gz bool, ms ...member) []byte {
	t.Helper()
	var buf bytes.Buffer
	var gw *gzip.Writer
	var tw *tar.Writer
	if gz {
		gw = gzip.NewWriter(&buf)
		tw = tar.NewWriter(gw)
	} else {
		tw = tar.NewWriter(&buf)
	}
	for _, m := range ms {
		if m.raw != nil {
			if err := tw.Flush(); err != nil {
				t.Fatal(err)
			}
			var out io.Writer = &buf
			if gw != nil {
				out = gw
			}
			out.Write(m.raw)
			continue
		}
		typ := m.typ
		if typ == 0 {
			typ = tar.TypeReg
		}
		h := &tar.Header{Name: m.name, Typeflag: typ, Mode: 0o644, Linkname: m.link, ModTime: testCreated, Format: tar.FormatPAX}
		if typ == tar.TypeReg {
			h.Size = int64(len(m.body))
		}
		if typ == tar.TypeChar {
			h.Devmajor, h.Devminor = 1, 3
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatalf("craft %q: %v", m.name, err)
		}
		if _, err := tw.Write(m.body); err != nil {
			t.Fatalf("craft %q: %v", m.name, err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if gw != nil {
		if err := gw.Close(); err != nil {
			t.Fatal(err)
		}
	}
	return buf.Bytes()
}

// head returns the manifest.json and manifest.json.minisig members for m, signed by s.
func head(t testing.TB, s testSigner, m Manifest) []member {
	t.Helper()
	raw, err := marshalManifest(m)
	if err != nil {
		t.Fatal(err)
	}
	return signedHead(s, raw)
}

func signedHead(s testSigner, raw []byte) []member {
	sig, _ := s.sign(raw)
	return []member{reg(ManifestName, raw), reg(SignatureName, sig)}
}

// bodies returns the regular members of files in path order.
func bodies(files map[string][]byte) []member {
	var ms []member
	for _, p := range slices.Sorted(maps.Keys(files)) {
		ms = append(ms, reg(p, files[p]))
	}
	return ms
}

// validArchive is a well-formed small bundle signed by s.
func validArchive(t testing.TB, s testSigner, gz bool) []byte {
	t.Helper()
	files := smallFiles()
	return craftTar(t, gz, append(head(t, s, withFiles(testManifest(), files)), bodies(files)...)...)
}

// stagingDir returns an empty directory inside a parent that holds nothing else, so a test
// can check nothing was written beside it.
func stagingDir(t testing.TB) (parent, dir string) {
	t.Helper()
	parent = t.TempDir()
	dir = filepath.Join(parent, "staging")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return parent, dir
}

// checkContained fails unless parent holds only dir and dir holds no symlinks.
func checkContained(t testing.TB, parent, dir string) {
	t.Helper()
	ents, err := os.ReadDir(parent)
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 1 || ents[0].Name() != filepath.Base(dir) {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Fatalf("parent of the staging dir holds %q; want only %q", names, filepath.Base(dir))
	}
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			t.Fatalf("walk %s: %v", p, err)
		}
		if !d.Type().IsRegular() && !d.IsDir() {
			t.Fatalf("%s is %v; want only regular files and directories", p, d.Type())
		}
		return nil
	})
}

func dirEntries(t testing.TB, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

// paxHeader is a hand-made PAX extended header ('x') carrying records for the next member,
// for records archive/tar will not write itself (GNU.sparse.*).
func paxHeader(records ...[2]string) member {
	var data []byte
	for _, r := range records {
		rec := " " + r[0] + "=" + r[1] + "\n"
		n := len(rec)
		for len(strconv.Itoa(n))+len(rec) != n {
			n = len(strconv.Itoa(n)) + len(rec)
		}
		data = append(data, strconv.Itoa(n)+rec...)
	}
	blk := make([]byte, 512)
	copy(blk[0:], "PaxHeaders/x")
	copy(blk[100:], "0000644\x00")
	copy(blk[108:], "0000000\x00")
	copy(blk[116:], "0000000\x00")
	copy(blk[124:], fmt.Sprintf("%011o\x00", len(data)))
	copy(blk[136:], "00000000000\x00")
	copy(blk[148:], "        ")
	blk[156] = tar.TypeXHeader
	copy(blk[257:], "ustar\x0000")
	sum := 0
	for _, b := range blk {
		sum += int(b)
	}
	copy(blk[148:], fmt.Sprintf("%06o\x00 ", sum))
	raw := append(blk, data...)
	raw = append(raw, make([]byte, (512-len(data)%512)%512)...)
	return member{raw: raw}
}
