package bundle

import (
	"archive/tar"
	"bytes"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

var writeCorpus = flag.Bool("write-corpus", false, "rewrite the seed corpus in testdata/fuzz")

// FuzzOpen feeds arbitrary bytes to Open with a verifier that accepts everything, so the
// fuzzer reaches the extraction code. Open must not panic, must write nothing outside the
// staging dir, must leave it empty on error, and on success must hold exactly the listed files.
//
// Run it with a short minimisation budget, or the workers spend the run minimising the
// seed-sized inputs they find (and the progress line shows 0 execs/sec):
//
//	go test -run '^$' -fuzz '^FuzzOpen$' -fuzztime 30s -fuzzminimizetime 200x ./models/bundle
func FuzzOpen(f *testing.F) {
	for _, seed := range openSeeds(f) {
		f.Add(seed.data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		parent, dir := stagingDir(t)
		b, err := Open(bytes.NewReader(data), dir, OpenOptions{Verify: acceptAll, MaxUnpackedBytes: 16 << 20})
		checkContained(t, parent, dir)
		if err != nil {
			if got := dirEntries(t, dir); len(got) != 0 {
				t.Fatalf("Open failed (%v) but left %q in the staging dir", err, got)
			}
			return
		}
		for _, f := range b.Manifest.Files {
			st, err := os.Lstat(b.Path(f.Path))
			if err != nil || !st.Mode().IsRegular() || st.Size() != f.Size {
				t.Fatalf("Open succeeded but %s is %v (err %v); want a regular file of %d bytes", f.Path, st, err, f.Size)
			}
		}
	})
}

// FuzzManifest decodes arbitrary JSON strictly and validates it; a manifest that validates
// must survive a marshal/decode round trip and still validate.
func FuzzManifest(f *testing.F) {
	for _, seed := range manifestSeeds(f) {
		f.Add(seed.data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := decodeManifest(data)
		if err != nil {
			return
		}
		if err := m.Validate(); err != nil {
			return
		}
		CompareVersions(m.Version, m.MinAgentVersion)
		raw, err := marshalManifest(m)
		if err != nil {
			t.Fatalf("a valid manifest does not marshal: %v", err)
		}
		again, err := decodeManifest(raw)
		if err != nil {
			t.Fatalf("a marshalled manifest does not decode: %v\n%s", err, raw)
		}
		if err := again.Validate(); err != nil {
			t.Fatalf("a valid manifest no longer validates after a round trip: %v\n%s", err, raw)
		}
	})
}

type seed struct {
	name  string
	data  []byte
	valid bool // Open (FuzzOpen) or decode+Validate (FuzzManifest) must accept it
}

func openSeeds(t testing.TB) []seed {
	s := newTestSigner(1)
	files := smallFiles()
	m := withFiles(testManifest(), files)
	hd := head(t, s, m)
	gzipped := craftTar(t, true, append(hd, bodies(files)...)...)

	bomb := withFiles(testManifest(), files)
	bomb.Files = append(bomb.Files, File{Path: "zeros.bin", SHA256: strings.Repeat("0", 64), Size: 2 << 20})
	bombMembers := append(head(t, s, bomb), bodies(files)...)

	return []seed{
		{"valid-plain", craftTar(t, false, append(hd, bodies(files)...)...), true},
		{"valid-gzip", gzipped, true},
		{"valid-with-dirs", craftTar(t, false, append(hd, append([]member{{name: "x/", typ: tar.TypeDir}}, bodies(files)...)...)...), true},
		{"symlink", craftTar(t, false, append(hd, member{name: "labels.txt", typ: tar.TypeSymlink, link: "/etc/passwd"})...), false},
		{"dotdot", craftTar(t, false, append(hd, reg("../labels.txt", files["labels.txt"]))...), false},
		{"extra-file", craftTar(t, false, append(hd, append(bodies(files), reg("extra", []byte("x")))...)...), false},
		{"truncated-gzip", gzipped[:len(gzipped)*2/3], false},
		{"ratio-bomb", craftTar(t, true, append(bombMembers, reg("zeros.bin", make([]byte, 2<<20)))...), false},
		{"sparse", craftTar(t, false, append(hd, paxHeader([2]string{"GNU.sparse.major", "0"}, [2]string{"GNU.sparse.minor", "1"},
			[2]string{"GNU.sparse.size", "1000"}, [2]string{"GNU.sparse.numblocks", "1"}, [2]string{"GNU.sparse.map", "0,4"}),
			reg("labels.txt", []byte("zero")))...), false},
		{"empty", nil, false},
	}
}

func manifestSeeds(t testing.TB) []seed {
	m := withFiles(testManifest(), smallFiles())
	exp := testCreated.AddDate(1, 0, 0)
	m.Expires = &exp
	m.MinAgentVersion = "v0.3.0"
	m.Golden = []Golden{{Inputs: [][]float64{{0, 0.5}}, Outputs: [][]float64{{0.1, 0.9}}, Tolerance: 0.01}}
	m.Reference = &Reference{Samples: 10, Features: []FeatureStats{{Name: "pixel", Mean: 0.13, Std: 0.3, Edges: []float64{0, 0.5, 1}, Counts: []uint64{7, 3}}}, Classes: []float64{0.5, 0.5}}
	raw, err := marshalManifest(m)
	if err != nil {
		t.Fatal(err)
	}
	return []seed{
		{"valid", raw, true},
		{"unknown-field", bytes.Replace(raw, []byte(`"name":`), []byte(`"x": 1, "name":`), 1), false},
		{"bad-version", bytes.Replace(raw, []byte(`"version": "1.2.0"`), []byte(`"version": "1.2"`), 1), false},
		{"file-inside-file", bytes.Replace(raw, []byte(`"path": "model.tflite"`), []byte(`"path": "labels.txt/m"`), 1), false},
		{"absolute-path", bytes.Replace(raw, []byte(`"path": "labels.txt"`), []byte(`"path": "/labels.txt"`), 1), false},
		{"empty-object", []byte(`{}`), false},
		{"null", []byte(`null`), false},
		{"trailing", append(bytes.Clone(raw), `[]`...), false},
	}
}

// TestSeedCorpus checks the committed seeds: the valid ones are accepted and the others
// refused. With -write-corpus it rewrites them first (go test -run TestSeedCorpus -write-corpus).
func TestSeedCorpus(t *testing.T) {
	for _, c := range []struct {
		fuzzer string
		seeds  []seed
		accept func([]byte) error
	}{
		{"FuzzOpen", openSeeds(t), func(data []byte) error {
			_, dir := stagingDir(t)
			_, err := Open(bytes.NewReader(data), dir, OpenOptions{Verify: acceptAll})
			return err
		}},
		{"FuzzManifest", manifestSeeds(t), func(data []byte) error {
			m, err := decodeManifest(data)
			if err != nil {
				return err
			}
			return m.Validate()
		}},
	} {
		dir := filepath.Join("testdata", "fuzz", c.fuzzer)
		if *writeCorpus {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			for _, s := range c.seeds {
				text := fmt.Sprintf("go test fuzz v1\n[]byte(%s)\n", strconv.Quote(string(s.data)))
				if err := os.WriteFile(filepath.Join(dir, s.name), []byte(text), 0o644); err != nil {
					t.Fatal(err)
				}
			}
		}
		for _, s := range c.seeds {
			text, err := os.ReadFile(filepath.Join(dir, s.name))
			if err != nil {
				t.Fatalf("seed %s/%s: %v (regenerate with go test -run TestSeedCorpus -write-corpus)", c.fuzzer, s.name, err)
			}
			data, err := parseCorpusFile(text)
			if err != nil {
				t.Fatalf("seed %s/%s: %v", c.fuzzer, s.name, err)
			}
			err = c.accept(data)
			if got := err == nil; got != s.valid {
				t.Errorf("seed %s/%s accepted: got %v (%v); want %v", c.fuzzer, s.name, got, err, s.valid)
			}
		}
	}
}

// parseCorpusFile reads a one-[]byte file in the "go test fuzz v1" format.
func parseCorpusFile(text []byte) ([]byte, error) {
	body, ok := strings.CutPrefix(string(text), "go test fuzz v1\n[]byte(")
	if !ok {
		return nil, fmt.Errorf("not a go test fuzz v1 file holding one []byte")
	}
	body, ok = strings.CutSuffix(body, ")\n")
	if !ok {
		return nil, fmt.Errorf("not a go test fuzz v1 file holding one []byte")
	}
	s, err := strconv.Unquote(body)
	return []byte(s), err
}
