//go:build cgo

package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/csv"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/edge-agent/edge-agent/internal/testenv"
	"github.com/edge-agent/edge-agent/models/bundle"
	"github.com/edge-agent/edge-agent/models/sign"
)

// edgectl runs the command in-process and returns its exit code, stdout and stderr.
func edgectl(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := run(args, &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

// mustRun runs edgectl and fails the test unless it exits 0.
func mustRun(t *testing.T, args ...string) string {
	t.Helper()
	code, stdout, stderr := edgectl(t, args...)
	if code != 0 {
		t.Fatalf("edgectl %s: exit %v; want 0\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, stdout, stderr)
	}
	return stdout
}

// keygen makes an unencrypted key pair in dir and returns its prefix and key id (read from
// the .pub file with models/sign, not from edgectl's output).
func keygen(t *testing.T, dir, name string) (prefix, id string) {
	t.Helper()
	prefix = filepath.Join(dir, name)
	mustRun(t, "keygen", "--out", prefix, "--unencrypted")
	pub, err := os.ReadFile(prefix + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	k, err := sign.ParsePublicKey(string(pub))
	if err != nil {
		t.Fatalf("ParsePublicKey(%s.pub): %v", prefix, err)
	}
	return prefix, k.ID()
}

// minisign runs the real minisign CLI with stdin /dev/null and returns its exit code and
// combined output.
func minisign(t *testing.T, dir string, args ...string) (int, string) {
	t.Helper()
	bin, err := exec.LookPath("minisign")
	if err != nil {
		t.Fatal("minisign is not installed: apt-get install minisign (the interop tests need the real CLI)")
	}
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput() // Stdin nil = /dev/null: a password prompt would fail, not hang
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			return ee.ExitCode(), string(out)
		}
		t.Fatalf("minisign %v: %v", args, err)
	}
	return 0, string(out)
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func sha256File(t *testing.T, path string) (string, int64) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:]), int64(len(b))
}

// members reads a (possibly gzipped) tar in order.
func members(t *testing.T, path string) (names []string, data map[string][]byte) {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var r io.Reader = bytes.NewReader(raw)
	if bytes.HasPrefix(raw, []byte{0x1f, 0x8b}) {
		zr, err := gzip.NewReader(r)
		if err != nil {
			t.Fatal(err)
		}
		r = zr
	}
	tr := tar.NewReader(r)
	data = map[string][]byte{}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return names, data
		}
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, h.Name)
		data[h.Name] = b
	}
}

// inspectJSON returns the manifest `bundle inspect --json` prints.
func inspectJSON(t *testing.T, path string) bundle.Manifest {
	t.Helper()
	out := mustRun(t, "bundle", "inspect", "--json", path)
	var m bundle.Manifest
	dec := json.NewDecoder(strings.NewReader(out))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		t.Fatalf("inspect --json: %v\n%s", err, out)
	}
	return m
}

// packMNIST writes an MNIST bundle spec (labels file, samples folder holding the ten shared
// digits) in dir, packs it to out and returns the spec's model and labels paths.
func packMNIST(t *testing.T, dir, key, out string) (model, labels string) {
	t.Helper()
	model = testenv.Data(t, "mnist_model.tflite")
	samples := filepath.Join(dir, "samples")
	if err := os.Mkdir(samples, 0o755); err != nil {
		t.Fatal(err)
	}
	for d := range 10 {
		name := "mnist_digit_" + strconv.Itoa(d) + ".png"
		b, err := os.ReadFile(testenv.Data(t, name))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(samples, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	labels = filepath.Join(dir, "digits.txt")
	writeFile(t, labels, "zero\none\ntwo\nthree\nfour\nfive\nsix\nseven\neight\nnine\n")
	spec := filepath.Join(dir, "bundle.yaml")
	writeFile(t, spec, `name: mnist
version: 1.2.0
sequence: 7
model: `+model+`
labels: digits.txt
samples: samples
golden: 3
processing:
  input:
    image: {resize: area, color: grey, std: [255]}
  output:
    kind: classification
    classification: {top_k: 3}
`)
	stdout := mustRun(t, "bundle", "pack", "--spec", spec, "--key", key, "-o", out)
	if !strings.Contains(stdout, "packed "+out) || !strings.Contains(stdout, "3 golden vectors") || !strings.Contains(stdout, "reference from 10 samples") {
		t.Errorf("pack stdout = %q; want it to name %s, 3 golden vectors and 10 samples", stdout, out)
	}
	return model, labels
}

// irisCSV is go-tflite's iris example data: a header row, four numbers and the species.
func irisCSV(t *testing.T) (path string, header []string, rows [][]float64) {
	t.Helper()
	path = testenv.Data(t, "iris.csv")
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	recs, err := csv.NewReader(f).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	header = recs[0]
	for _, rec := range recs[1:] {
		var row []float64
		for _, cell := range rec[:4] {
			v, err := strconv.ParseFloat(cell, 64)
			if err != nil {
				t.Fatalf("iris.csv: %v", err)
			}
			row = append(row, v)
		}
		rows = append(rows, row)
	}
	return path, header, rows
}

// packIris packs go-tflite's iris model with the CSV as samples and the given extra
// processing.input YAML (indented under input:, or "").
func packIris(t *testing.T, dir, key, out, input string) {
	t.Helper()
	csvPath, _, _ := irisCSV(t)
	spec := filepath.Join(dir, "iris.yaml")
	y := `name: iris
version: 0.3.0
sequence: 2
model: ` + testenv.Data(t, "iris.tflite") + `
samples: ` + csvPath + `
processing:
`
	if input != "" {
		y += "  input:\n" + input
	}
	y += `  output:
    kind: classification
    labels: [Iris-setosa, Iris-versicolor, Iris-virginica]
`
	writeFile(t, spec, y)
	mustRun(t, "bundle", "pack", "--spec", spec, "--key", key, "-o", out)
}

func TestKeygen(t *testing.T) {
	dir := t.TempDir()
	prefix := filepath.Join(dir, "fleet")
	// Without a password file or --unencrypted, keygen refuses: keys are encrypted by default.
	if code, _, stderr := edgectl(t, "keygen", "--out", prefix); code != 2 || !strings.Contains(stderr, "encrypted by default") {
		t.Errorf("keygen without --password-file: exit %v, %q; want 2 saying keys are encrypted by default", code, stderr)
	}
	if _, err := os.Stat(prefix + ".key"); err == nil {
		t.Fatal("the refused keygen wrote a key")
	}
	stdout := mustRun(t, "keygen", "--out", prefix, "--unencrypted")

	pubText, err := os.ReadFile(prefix + ".pub")
	if err != nil {
		t.Fatalf("keygen wrote no .pub: %v", err)
	}
	pub, err := sign.ParsePublicKey(string(pubText))
	if err != nil {
		t.Fatalf("the .pub does not parse: %v", err)
	}
	lines := strings.Split(strings.TrimSpace(string(pubText)), "\n")
	if got, want := lines[0], "untrusted comment: minisign public key "+pub.ID(); got != want {
		t.Errorf(".pub comment = %q; want %q", got, want)
	}
	if !strings.Contains(stdout, "key id   "+pub.ID()) || !strings.Contains(stdout, "commands: {trusted_keys: ["+pub.String()+"]}") {
		t.Errorf("keygen stdout = %q; want the key id %s and the trusted_keys line %s", stdout, pub.ID(), pub.String())
	}
	st, err := os.Stat(prefix + ".key")
	if err != nil {
		t.Fatalf("keygen wrote no .key: %v", err)
	}
	if got, want := st.Mode().Perm(), os.FileMode(0o600); got != want {
		t.Errorf(".key mode = %v; want %v", got, want)
	}
	priv, err := sign.ReadPrivateKey(prefix+".key", nil)
	if err != nil {
		t.Fatalf("ReadPrivateKey without password: %v", err)
	}
	if got, want := priv.ID(), pub.ID(); got != want {
		t.Errorf("secret key id = %v; want %v", got, want)
	}

	// No overwrite without --force; the files stay as they were.
	keyText, _ := os.ReadFile(prefix + ".key")
	code, _, stderr := edgectl(t, "keygen", "--out", prefix, "--unencrypted")
	if code != 1 || !strings.Contains(stderr, "exists; use --force") {
		t.Errorf("second keygen: exit %v, stderr %q; want 1 and \"exists; use --force\"", code, stderr)
	}
	if b, _ := os.ReadFile(prefix + ".key"); !bytes.Equal(b, keyText) {
		t.Errorf("keygen without --force changed %s.key", prefix)
	}
	if b, _ := os.ReadFile(prefix + ".pub"); !bytes.Equal(b, pubText) {
		t.Errorf("keygen without --force changed %s.pub", prefix)
	}
	// Only the .pub left over still blocks.
	other := filepath.Join(dir, "other")
	writeFile(t, other+".pub", "keep me\n")
	if code, _, _ := edgectl(t, "keygen", "--out", other, "--unencrypted"); code != 1 {
		t.Errorf("keygen over an existing .pub: exit %v; want 1", code)
	}
	if _, err := os.Stat(other + ".key"); err == nil {
		t.Errorf("refused keygen still wrote %s.key", other)
	}

	// The real CLI signs with the .key and verifies with the .pub, both as keygen first wrote them.
	writeFile(t, filepath.Join(dir, "f"), "a firmware image, say\n")
	if code, out := minisign(t, dir, "-S", "-s", prefix+".key", "-m", "f"); code != 0 {
		t.Fatalf("minisign -S with the keygen key: exit %v; want 0\n%s", code, out)
	}
	if code, out := minisign(t, dir, "-Vm", "f", "-p", prefix+".pub"); code != 0 || !strings.Contains(out, "Signature and comment signature verified") {
		t.Fatalf("minisign -Vm with the keygen .pub: exit %v, output %q; want 0 and verified", code, out)
	}
	// ...and edgectl's verifier accepts what minisign signed.
	msg, _ := os.ReadFile(filepath.Join(dir, "f"))
	sig, _ := os.ReadFile(filepath.Join(dir, "f.minisig"))
	v, err := sign.NewVerifier(pub)
	if err != nil {
		t.Fatal(err)
	}
	if r, err := v.Verify(msg, sig); err != nil || r.KeyID != pub.ID() {
		t.Errorf("Verify(minisign's signature) = %v, %v; want key %s, nil", r.KeyID, err, pub.ID())
	}

	// --force replaces both files with a new pair.
	mustRun(t, "keygen", "--out", prefix, "--force", "--unencrypted")
	newPub, _ := os.ReadFile(prefix + ".pub")
	if bytes.Equal(newPub, pubText) {
		t.Errorf("keygen --force kept the old .pub")
	}
	// The old signature no longer verifies with the new public key.
	if code, _ := minisign(t, dir, "-Vm", "f", "-p", prefix+".pub"); code == 0 {
		t.Errorf("minisign -Vm with the replaced .pub: exit 0; want a failure")
	}
}

func TestPackMNIST(t *testing.T) {
	dir := t.TempDir()
	prefix, id := keygen(t, dir, "release")
	out := filepath.Join(dir, "mnist.tar.gz")
	model, labels := packMNIST(t, dir, prefix+".key", out)

	raw, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(raw, []byte{0x1f, 0x8b}) {
		t.Errorf("%s does not start with the gzip magic", out)
	}
	if _, err := os.Stat(out + ".tmp"); err == nil {
		t.Errorf("pack left %s.tmp behind", out)
	}

	t.Run("verify", func(t *testing.T) {
		stdout := mustRun(t, "bundle", "verify", "--pub", prefix+".pub", out)
		want := "OK " + out + ": mnist 1.2.0 (sequence 7), signed by " + id + ", 2 files verified\n"
		if stdout != want {
			t.Errorf("verify stdout = %q; want %q", stdout, want)
		}
	})

	t.Run("manifest", func(t *testing.T) {
		m := inspectJSON(t, out)
		if m.Schema != bundle.Schema || m.Name != "mnist" || m.Version != "1.2.0" || m.Sequence != 7 {
			t.Errorf("schema, name, version, sequence = %v %v %v %v; want %v mnist 1.2.0 7", m.Schema, m.Name, m.Version, m.Sequence, bundle.Schema)
		}
		if got, want := m.Model, "mnist_model.tflite"; got != want {
			t.Errorf("model = %v; want %v", got, want)
		}
		if got, want := m.Processing.Output.LabelsFile, "labels.txt"; got != want {
			t.Errorf("processing.output.labels_file = %v; want %v", got, want)
		}
		if got, want := m.Processing.Input.Image.Resize, "area"; got != want {
			t.Errorf("processing.input.image.resize = %v; want %v", got, want)
		}
		if got, want := m.Processing.Output.Classification.TopK, 3; got != want {
			t.Errorf("processing.output.classification.top_k = %v; want %v", got, want)
		}

		// files: pack's archive names, each with the sha256 and size of the real file.
		modelSum, modelSize := sha256File(t, model)
		labelsSum, labelsSize := sha256File(t, labels)
		wantFiles := []bundle.File{
			{Path: "labels.txt", SHA256: labelsSum, Size: labelsSize},
			{Path: "mnist_model.tflite", SHA256: modelSum, Size: modelSize},
		}
		if !slices.Equal(m.Files, wantFiles) {
			t.Errorf("files = %+v; want %+v", m.Files, wantFiles)
		}

		// inputs/outputs are the real model's tensors.
		if len(m.Inputs) != 1 || m.Inputs[0].DType != "float32" || !slices.Equal(m.Inputs[0].Shape, []int{1, 784}) {
			t.Errorf("inputs = %+v; want one float32 [1 784]", m.Inputs)
		}
		if len(m.Outputs) != 1 || m.Outputs[0].DType != "float32" || !slices.Equal(m.Outputs[0].Shape, []int{1, 10}) {
			t.Errorf("outputs = %+v; want one float32 [1 10]", m.Outputs)
		}

		// golden: the first three samples (sorted by name: digits 0, 1, 2).
		if got, want := len(m.Golden), 3; got != want {
			t.Fatalf("golden vectors = %v; want %v", got, want)
		}
		for i, g := range m.Golden {
			if len(g.Inputs) != 1 || len(g.Inputs[0]) != 784 {
				t.Errorf("golden[%d] inputs: %d tensors of %v values; want 1 of 784", i, len(g.Inputs), lens(g.Inputs))
				continue
			}
			if len(g.Outputs) != 1 || len(g.Outputs[0]) != 10 {
				t.Errorf("golden[%d] outputs: %d tensors of %v values; want 1 of 10", i, len(g.Outputs), lens(g.Outputs))
				continue
			}
			if lo, hi := slices.Min(g.Inputs[0]), slices.Max(g.Inputs[0]); lo < 0 || hi > 1 || hi == 0 {
				t.Errorf("golden[%d] inputs span [%v, %v]; want pixels/255 within [0, 1], not all 0", i, lo, hi)
			}
			if got, want := g.Tolerance, 1e-3; got != want {
				t.Errorf("golden[%d] tolerance = %v; want %v", i, got, want)
			}
			if got, want := argmax(g.Outputs[0]), i; got != want {
				t.Errorf("golden[%d] top class = %v; want %v (mnist_digit_%d.png)", i, got, want, i)
			}
		}

		// reference: 10 samples, one distribution over the flat input, 10 class frequencies.
		r := m.Reference
		if r == nil {
			t.Fatal("no reference statistics")
		}
		if got, want := r.Samples, 10; got != want {
			t.Errorf("reference samples = %v; want %v", got, want)
		}
		if got, want := len(r.Features), 1; got != want {
			t.Fatalf("reference features = %v; want %v", got, want)
		}
		f := r.Features[0]
		if got, want := f.Name, "input"; got != want {
			t.Errorf("feature name = %v; want %v", got, want)
		}
		if got, want := len(f.Counts), 20; got != want {
			t.Errorf("histogram bins = %v; want %v", got, want)
		}
		if got, want := len(f.Edges), len(f.Counts)+1; got != want {
			t.Errorf("histogram edges = %v; want %v", got, want)
		}
		var total uint64
		for _, c := range f.Counts {
			total += c
		}
		if got, want := total, uint64(10*784); got != want {
			t.Errorf("histogram counts sum = %v; want %v", got, want)
		}
		if f.Mean <= 0 || f.Mean >= 1 || f.Std <= 0 {
			t.Errorf("feature mean, std = %v, %v; want a mean inside (0, 1) and std > 0", f.Mean, f.Std)
		}
		if !slices.IsSorted(f.Edges) || f.Edges[0] != 0 || f.Edges[len(f.Edges)-1] != 1 {
			t.Errorf("histogram edges = %v; want ascending from 0 to 1", f.Edges)
		}
		if got, want := len(r.Classes), 10; got != want {
			t.Fatalf("class frequencies = %v; want %v", got, want)
		}
		var sum float64
		for _, c := range r.Classes {
			sum += c
		}
		if math.Abs(sum-1) > 1e-9 {
			t.Errorf("class frequencies sum = %v; want 1 within 1e-9", sum)
		}
	})

	t.Run("stock minisign verifies the manifest", func(t *testing.T) {
		names, data := members(t, out)
		want := []string{bundle.ManifestName, bundle.SignatureName, "labels.txt", "mnist_model.tflite"}
		if !slices.Equal(names, want) {
			t.Errorf("members = %v; want %v", names, want)
		}
		x := t.TempDir()
		for _, n := range []string{bundle.ManifestName, bundle.SignatureName} {
			if err := os.WriteFile(filepath.Join(x, n), data[n], 0o644); err != nil {
				t.Fatal(err)
			}
		}
		pub, _ := os.ReadFile(prefix + ".pub")
		if err := os.WriteFile(filepath.Join(x, "key.pub"), pub, 0o644); err != nil {
			t.Fatal(err)
		}
		code, outp := minisign(t, x, "-Vm", "manifest.json", "-p", "key.pub")
		if code != 0 {
			t.Fatalf("minisign -Vm manifest.json: exit %v; want 0\n%s", code, outp)
		}
		if want := "Trusted comment: edge-agent bundle mnist 7"; !strings.Contains(outp, want) {
			t.Errorf("minisign output = %q; want %q", outp, want)
		}
		// The member files hold what the manifest says.
		if sum := sha256.Sum256(data["mnist_model.tflite"]); hex.EncodeToString(sum[:]) != inspectJSON(t, out).Files[1].SHA256 {
			t.Errorf("the archived model's sha256 differs from its manifest entry")
		}
	})

	t.Run("inspect", func(t *testing.T) {
		stdout := mustRun(t, "bundle", "inspect", out)
		for _, want := range []string{
			"model     mnist 1.2.0 (sequence 7), not verified (give --pub to check the signature)",
			"golden    3 vectors", "reference 10 samples, 1 features, 10 classes", "mnist_model.tflite",
		} {
			if !strings.Contains(stdout, want) {
				t.Errorf("inspect stdout = %q; want it to contain %q", stdout, want)
			}
		}
		stdout = mustRun(t, "bundle", "inspect", "--pub", prefix+".pub", out)
		if want := "model     mnist 1.2.0 (sequence 7), signed by " + id + "\n"; !strings.Contains(stdout, want) {
			t.Errorf("inspect --pub stdout = %q; want it to contain %q", stdout, want)
		}
		if strings.Contains(stdout, "not verified") {
			t.Errorf("inspect --pub stdout = %q; want no \"not verified\"", stdout)
		}
	})
}

func lens(v [][]float64) []int {
	var n []int
	for _, x := range v {
		n = append(n, len(x))
	}
	return n
}

func TestPackIrisCSV(t *testing.T) {
	dir := t.TempDir()
	prefix, id := keygen(t, dir, "k")
	_, header, rows := irisCSV(t)
	model := testenv.Data(t, "iris.tflite")

	colMean := func(c int) float64 {
		var s float64
		for _, r := range rows {
			s += r[c]
		}
		return s / float64(len(rows))
	}

	t.Run("feature names from the CSV header", func(t *testing.T) {
		out := filepath.Join(dir, "iris.tar.gz")
		packIris(t, dir, prefix+".key", out, "")
		if stdout := mustRun(t, "bundle", "verify", "--pub", prefix+".pub", out); !strings.Contains(stdout, "signed by "+id+", 1 files verified") {
			t.Errorf("verify stdout = %q; want signed by %s, 1 files verified", stdout, id)
		}
		m := inspectJSON(t, out)
		sum, size := sha256File(t, model)
		if want := []bundle.File{{Path: "iris.tflite", SHA256: sum, Size: size}}; !slices.Equal(m.Files, want) {
			t.Errorf("files = %+v; want %+v", m.Files, want)
		}
		if len(m.Inputs) != 1 || m.Inputs[0].DType != "float32" || !slices.Equal(m.Inputs[0].Shape, []int{1, 4}) {
			t.Errorf("inputs = %+v; want one float32 [1 4]", m.Inputs)
		}
		if len(m.Outputs) != 1 || m.Outputs[0].DType != "float32" || !slices.Equal(m.Outputs[0].Shape, []int{1, 3}) {
			t.Errorf("outputs = %+v; want one float32 [1 3]", m.Outputs)
		}
		if want := []string{"Iris-setosa", "Iris-versicolor", "Iris-virginica"}; !slices.Equal(m.Processing.Output.Labels, want) || m.Processing.Output.LabelsFile != "" {
			t.Errorf("processing.output labels = %v, labels_file %q; want %v inline", m.Processing.Output.Labels, m.Processing.Output.LabelsFile, want)
		}

		r := m.Reference
		if r == nil {
			t.Fatal("no reference statistics")
		}
		if got, want := r.Samples, len(rows); got != want {
			t.Errorf("reference samples = %v; want %v (the CSV's rows)", got, want)
		}
		var names []string
		for i, f := range r.Features {
			names = append(names, f.Name)
			var n uint64
			for _, c := range f.Counts {
				n += c
			}
			if got, want := n, uint64(len(rows)); got != want {
				t.Errorf("feature %s: histogram counts sum = %v; want %v", f.Name, got, want)
			}
			if got, want := f.Mean, colMean(i); math.Abs(got-want) > 1e-5 {
				t.Errorf("feature %s: mean = %v; want %v (the CSV column's mean)", f.Name, got, want)
			}
		}
		if want := header[:4]; !slices.Equal(names, want) {
			t.Errorf("feature names = %v; want the CSV header's numeric columns %v", names, want)
		}
		if got, want := len(r.Classes), 3; got != want {
			t.Fatalf("class frequencies = %v; want %v", got, want)
		}
		var s float64
		for _, c := range r.Classes {
			s += c
		}
		if math.Abs(s-1) > 1e-9 {
			t.Errorf("class frequencies sum = %v; want 1 within 1e-9", s)
		}
		// Golden inputs are the first CSV rows, as float32.
		if got, want := len(m.Golden), 3; got != want {
			t.Fatalf("golden vectors = %v; want %v", got, want)
		}
		for i, g := range m.Golden {
			if len(g.Inputs) != 1 || len(g.Outputs) != 1 || len(g.Outputs[0]) != 3 {
				t.Errorf("golden[%d]: inputs %v, outputs %v; want one of 4 and one of 3", i, lens(g.Inputs), lens(g.Outputs))
				continue
			}
			if !closeTo(g.Inputs[0], rows[i], 1e-6) {
				t.Errorf("golden[%d] inputs = %v; want CSV row %v", i, g.Inputs[0], rows[i])
			}
			if got, want := argmax(g.Outputs[0]), 0; got != want {
				t.Errorf("golden[%d] top class = %v; want %v (rows 1-3 are Iris-setosa)", i, got, want)
			}
		}
	})

	t.Run("processing features order and name the features", func(t *testing.T) {
		sub := t.TempDir()
		out := filepath.Join(sub, "iris.tar")
		packIris(t, sub, prefix+".key", out, "    vector:\n      features: [PetalWidth, PetalLength, SepalWidth, SepalLength]\n")
		m := inspectJSON(t, out)
		var names []string
		for _, f := range m.Reference.Features {
			names = append(names, f.Name)
		}
		if want := []string{"PetalWidth", "PetalLength", "SepalWidth", "SepalLength"}; !slices.Equal(names, want) {
			t.Errorf("feature names = %v; want %v", names, want)
		}
		for i, col := range []int{3, 2, 1, 0} {
			if got, want := m.Reference.Features[i].Mean, colMean(col); math.Abs(got-want) > 1e-5 {
				t.Errorf("feature %s: mean = %v; want %v", names[i], got, want)
			}
		}
		if want := []float64{rows[0][3], rows[0][2], rows[0][1], rows[0][0]}; !closeTo(m.Golden[0].Inputs[0], want, 1e-6) {
			t.Errorf("golden[0] inputs = %v; want %v (reordered by features)", m.Golden[0].Inputs[0], want)
		}
	})
}

func closeTo(got, want []float64, tol float64) bool {
	if len(got) != len(want) {
		return false
	}
	for i := range got {
		if math.Abs(got[i]-want[i]) > tol {
			return false
		}
	}
	return true
}

func TestBundleSign(t *testing.T) {
	dir := t.TempDir()
	k1, id1 := keygen(t, dir, "k1")
	k2, id2 := keygen(t, dir, "k2")
	out := filepath.Join(dir, "iris.tar.gz")
	packIris(t, dir, k1+".key", out, "")
	beforeNames, before := members(t, out)

	stdout := mustRun(t, "bundle", "sign", "--key", k2+".key", out)
	if got, want := stdout, "signed "+out+"\n"; got != want {
		t.Errorf("sign stdout = %q; want %q", got, want)
	}
	raw, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(raw, []byte{0x1f, 0x8b}) {
		t.Errorf("re-signed bundle starts with % x; want the gzip magic 1f 8b", raw[:2])
	}
	if _, err := os.Stat(filepath.Join(dir, ".iris.tar.gz.tmp")); err == nil {
		t.Errorf("sign left its temporary file behind")
	}

	if stdout := mustRun(t, "bundle", "verify", "--pub", k2+".pub", out); !strings.Contains(stdout, "signed by "+id2) {
		t.Errorf("verify with key2: stdout %q; want signed by %s", stdout, id2)
	}
	code, _, stderr := edgectl(t, "bundle", "verify", "--pub", k1+".pub", out)
	if code != 1 || !strings.Contains(stderr, "untrusted") || !strings.Contains(stderr, id2) {
		t.Errorf("verify with key1 only: exit %v, stderr %q; want 1, \"untrusted\" and the signer %s", code, stderr, id2)
	}
	if stdout := mustRun(t, "bundle", "verify", "--pub", k1+".pub", "--pub", k2+".pub", out); !strings.Contains(stdout, "signed by "+id2) {
		t.Errorf("verify with both keys: stdout %q; want signed by %s", stdout, id2)
	}
	if stdout := mustRun(t, "bundle", "inspect", "--pub", k2+".pub", out); !strings.Contains(stdout, "signed by "+id2) || strings.Contains(stdout, id1) {
		t.Errorf("inspect --pub key2: stdout %q; want signed by %s only", stdout, id2)
	}

	// Same members in the same order; only the signature changed, and the stock CLI takes it.
	afterNames, after := members(t, out)
	if !slices.Equal(afterNames, beforeNames) {
		t.Errorf("members after sign = %v; want %v", afterNames, beforeNames)
	}
	for _, n := range beforeNames {
		if changed := !bytes.Equal(after[n], before[n]); changed != (n == bundle.SignatureName) {
			t.Errorf("member %s changed = %v; want %v", n, changed, n == bundle.SignatureName)
		}
	}
	x := t.TempDir()
	for _, n := range []string{bundle.ManifestName, bundle.SignatureName} {
		if err := os.WriteFile(filepath.Join(x, n), after[n], 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if code, outp := minisign(t, x, "-Vm", "manifest.json", "-p", k2+".pub"); code != 0 {
		t.Errorf("minisign -Vm with key2 after sign: exit %v; want 0\n%s", code, outp)
	}
	if code, _ := minisign(t, x, "-Vm", "manifest.json", "-p", k1+".pub"); code == 0 {
		t.Errorf("minisign -Vm with key1 after sign: exit 0; want a failure")
	}

	// An uncompressed bundle stays uncompressed.
	plain := filepath.Join(dir, "iris.tar")
	packIris(t, t.TempDir(), k1+".key", plain, "")
	mustRun(t, "bundle", "sign", "--key", k2+".key", plain)
	if b, _ := os.ReadFile(plain); bytes.HasPrefix(b, []byte{0x1f, 0x8b}) {
		t.Errorf("sign compressed an uncompressed bundle")
	}
	if stdout := mustRun(t, "bundle", "verify", "--pub", k2+".pub", plain); !strings.Contains(stdout, "signed by "+id2) {
		t.Errorf("verify the re-signed .tar: stdout %q; want signed by %s", stdout, id2)
	}
}

func TestVerifyFailures(t *testing.T) {
	dir := t.TempDir()
	k1, _ := keygen(t, dir, "k1")
	k2, _ := keygen(t, dir, "k2")
	out := filepath.Join(dir, "iris.tar")
	packIris(t, dir, k1+".key", out, "")
	good, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.HasPrefix(good, []byte{0x1f, 0x8b}) {
		t.Fatalf("%s is gzipped; want a plain tar for an .tar name", out)
	}
	mustRun(t, "bundle", "verify", "--pub", k1+".pub", out)

	// flip returns a copy of the bundle with one byte changed in the middle of the member
	// holding want (the tar stores member bytes contiguously).
	flip := func(t *testing.T, name string, want []byte) string {
		t.Helper()
		i := bytes.Index(good, want)
		if i < 0 {
			t.Fatalf("%s not found in the archive", name)
		}
		bad := bytes.Clone(good)
		bad[i+len(want)/2] ^= 0x01
		p := filepath.Join(t.TempDir(), "tampered-"+name+".tar")
		if err := os.WriteFile(p, bad, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}

	t.Run("tampered model", func(t *testing.T) {
		model, err := os.ReadFile(testenv.Data(t, "iris.tflite"))
		if err != nil {
			t.Fatal(err)
		}
		p := flip(t, "model", model)
		code, stdout, stderr := edgectl(t, "bundle", "verify", "--pub", k1+".pub", p)
		if code != 1 || stdout != "" {
			t.Errorf("verify tampered model: exit %v, stdout %q; want 1 and nothing", code, stdout)
		}
		for _, want := range []string{"edgectl bundle: " + p, "does not match its manifest entry", `"iris.tflite"`, "sha256"} {
			if !strings.Contains(stderr, want) {
				t.Errorf("verify tampered model: stderr %q; want it to contain %q", stderr, want)
			}
		}
		// inspect reads only the manifest: it still shows it, signed.
		if code, _, stderr := edgectl(t, "bundle", "inspect", "--pub", k1+".pub", p); code != 0 {
			t.Errorf("inspect of a bundle with a tampered model: exit %v (%s); want 0 (the manifest is intact)", code, stderr)
		}
	})

	t.Run("tampered manifest", func(t *testing.T) {
		_, data := members(t, out)
		p := flip(t, "manifest", data[bundle.ManifestName])
		for _, cmd := range []string{"verify", "inspect"} {
			code, _, stderr := edgectl(t, "bundle", cmd, "--pub", k1+".pub", p)
			if code != 1 || !strings.Contains(stderr, "signature does not verify") {
				t.Errorf("%s on a tampered manifest: exit %v, stderr %q; want 1 and \"signature does not verify\"", cmd, code, stderr)
			}
		}
	})

	t.Run("wrong key", func(t *testing.T) {
		for _, cmd := range []string{"verify", "inspect"} {
			code, stdout, stderr := edgectl(t, "bundle", cmd, "--pub", k2+".pub", out)
			if code != 1 || stdout != "" || !strings.Contains(stderr, "untrusted key") {
				t.Errorf("%s with the wrong key: exit %v, stdout %q, stderr %q; want 1, nothing, \"untrusted key\"", cmd, code, stdout, stderr)
			}
		}
	})

	t.Run("not a bundle", func(t *testing.T) {
		p := filepath.Join(dir, "junk.tar")
		writeFile(t, p, strings.Repeat("not a tar archive\n", 100))
		if code, _, stderr := edgectl(t, "bundle", "verify", "--pub", k1+".pub", p); code != 1 || !strings.Contains(stderr, p) {
			t.Errorf("verify junk: exit %v, stderr %q; want 1 naming %s", code, stderr, p)
		}
		missing := filepath.Join(dir, "missing.tar")
		if code, _, stderr := edgectl(t, "bundle", "verify", "--pub", k1+".pub", missing); code != 1 || !strings.Contains(stderr, "no such file") {
			t.Errorf("verify a missing file: exit %v, stderr %q; want 1 and \"no such file\"", code, stderr)
		}
		if code, _, stderr := edgectl(t, "bundle", "verify", "--pub", filepath.Join(dir, "nokey.pub"), out); code != 1 || !strings.Contains(stderr, "nokey.pub") {
			t.Errorf("verify with a missing .pub: exit %v, stderr %q; want 1 naming nokey.pub", code, stderr)
		}
	})

	t.Run("relative --pub path", func(t *testing.T) {
		t.Chdir(dir)
		stdout := mustRun(t, "bundle", "verify", "--pub", "k1.pub", "iris.tar")
		if !strings.HasPrefix(stdout, "OK iris.tar") {
			t.Errorf("verify --pub k1.pub: stdout %q; want OK", stdout)
		}
		mustRun(t, "bundle", "inspect", "--pub", "k1.pub", "iris.tar")
	})

	t.Run("usage errors", func(t *testing.T) {
		pub := k1 + ".pub"
		for _, args := range [][]string{
			{},
			{"frobnicate"},
			{"bundle"},
			{"bundle", "frobnicate"},
			{"bundle", "verify"},
			{"bundle", "verify", "--pub", pub},
			{"bundle", "verify", out},
			{"bundle", "verify", "--pub", pub, out, out},
			{"bundle", "verify", "--bogus", out},
			{"bundle", "inspect"},
			{"bundle", "sign", out},
			{"bundle", "sign", "--key", k1 + ".key"},
			{"bundle", "pack", "--key", k1 + ".key", "-o", out},
			{"bundle", "pack", "--spec", "x.yaml", "-o", out},
			{"keygen"},
		} {
			code, stdout, stderr := edgectl(t, args...)
			if code != 2 || stdout != "" || !strings.Contains(stderr, "Usage:\n  edgectl keygen") {
				t.Errorf("edgectl %q: exit %v, stdout %q, stderr %q; want 2 and the usage on stderr", args, code, stdout, stderr)
			}
		}
		if b, _ := os.ReadFile(out); !bytes.Equal(b, good) {
			t.Errorf("a usage error changed %s", out)
		}
		code, stdout, _ := edgectl(t, "help")
		if code != 0 || !strings.Contains(stdout, "Usage:") {
			t.Errorf("edgectl help: exit %v, stdout %q; want 0 and the usage", code, stdout)
		}
		if code, _, _ := edgectl(t, "bundle", "verify", "-h"); code != 0 {
			t.Errorf("edgectl bundle verify -h: exit %v; want 0", code)
		}
	})
}

// keygen with --password-file writes the encrypted form of minisign -G: the key opens only
// with the password.
func TestKeygenEncrypts(t *testing.T) {
	dir := t.TempDir()
	prefix := filepath.Join(dir, "release")
	pw := filepath.Join(dir, "pw")
	writeFile(t, pw, "correct horse battery staple\n")
	mustRun(t, "keygen", "--out", prefix, "--password-file", pw)
	if _, err := sign.ReadPrivateKey(prefix+".key", nil); !errors.Is(err, sign.ErrWrongPassword) {
		t.Errorf("reading the key without its password: %v; want ErrWrongPassword", err)
	}
	priv, err := sign.ReadPrivateKey(prefix+".key", []byte("correct horse battery staple"))
	if err != nil {
		t.Fatalf("reading the key with its password: %v", err)
	}
	pubText, _ := os.ReadFile(prefix + ".pub")
	pub, err := sign.ParsePublicKey(string(pubText))
	if err != nil || pub.ID() != priv.ID() {
		t.Errorf("the .pub (%v, %v) does not match the secret key %s", pub.ID(), err, priv.ID())
	}
}

// pack gives every bundle an expiry unless told otherwise (90 days, or --expires-in), keeps
// the spec's own, and refuses to sign a bundle that is already expired.
func TestPackExpiry(t *testing.T) {
	dir := t.TempDir()
	prefix, _ := keygen(t, dir, "k")
	spec := filepath.Join(dir, "sin.yaml")
	writeSpec := func(extra string) {
		writeFile(t, spec, "name: sin\nversion: 1.0.0\nsequence: 1\nmodel: "+testenv.Data(t, "sin_model.tflite")+"\n"+extra+
			"processing: {input: {kind: tensor}, output: {kind: regression, regression: {names: [y]}}}\n")
	}
	expires := func(args ...string) (time.Time, bool) {
		t.Helper()
		out := filepath.Join(t.TempDir(), "b.tar.gz")
		mustRun(t, append([]string{"bundle", "pack", "--spec", spec, "--key", prefix + ".key", "-o", out}, args...)...)
		var m struct{ Expires *time.Time }
		if err := json.Unmarshal([]byte(mustRun(t, "bundle", "inspect", "--json", out)), &m); err != nil {
			t.Fatal(err)
		}
		if m.Expires == nil {
			return time.Time{}, false
		}
		return *m.Expires, true
	}
	writeSpec("")
	near := func(got time.Time, want time.Duration) bool {
		d := time.Until(got) - want
		return d > -time.Minute && d < time.Minute
	}
	if e, ok := expires(); !ok || !near(e, 90*24*time.Hour) {
		t.Errorf("default expiry %v (set %v); want about 90 days from now", e, ok)
	}
	if e, ok := expires("--expires-in", "2h"); !ok || !near(e, 2*time.Hour) {
		t.Errorf("--expires-in 2h: expiry %v (set %v); want about 2 h from now", e, ok)
	}
	if e, ok := expires("--no-expiry"); ok {
		t.Errorf("--no-expiry: the bundle expires at %v", e)
	}
	own := time.Now().Add(30 * 24 * time.Hour).UTC().Truncate(time.Second)
	writeSpec("expires: " + own.Format(time.RFC3339) + "\n")
	if e, ok := expires(); !ok || !e.Equal(own) {
		t.Errorf("the spec's expires %v became %v (set %v)", own, e, ok)
	}
	writeSpec("expires: 2020-01-01T00:00:00Z\n")
	out := filepath.Join(dir, "expired.tar.gz")
	code, _, stderr := edgectl(t, "bundle", "pack", "--spec", spec, "--key", prefix+".key", "-o", out)
	if code != 1 || !strings.Contains(stderr, "not in the future") {
		t.Errorf("pack of an expired spec: exit %d, %q; want 1 saying it has expired", code, stderr)
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Errorf("an expired bundle was written (stat: %v)", err)
	}
}

// golden: 0 in a pack spec means no golden vectors; leaving it out means 3; a negative count
// is refused.
func TestPackSpecGoldenCount(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		line string
		want int
	}{{"", 3}, {"golden: 0\n", 0}, {"golden: 5\n", 5}, {"golden: -1\n", -1}} {
		p := filepath.Join(dir, "spec.yaml")
		os.WriteFile(p, []byte("name: m\nversion: \"1\"\nsequence: 1\nmodel: m.tflite\n"+c.line), 0o644)
		ps, err := readPackSpec(p)
		switch {
		case c.want < 0:
			if err == nil || !strings.Contains(err.Error(), "golden") {
				t.Errorf("%q: %v; want a refusal naming golden", c.line, err)
			}
		case err != nil:
			t.Errorf("%q: %v", c.line, err)
		case *ps.Golden != c.want:
			t.Errorf("%q: golden %d; want %d", c.line, *ps.Golden, c.want)
		}
	}
}
