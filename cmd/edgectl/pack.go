package main

import (
	"context"
	"encoding/base64"
	"encoding/csv"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/edge-agent/edge-agent/agent"
	"github.com/edge-agent/edge-agent/agent/config"
	"github.com/edge-agent/edge-agent/agent/infer"
	"github.com/edge-agent/edge-agent/hal/accel"
	"github.com/edge-agent/edge-agent/hal/sensor"
	"github.com/edge-agent/edge-agent/hal/sensor/file"
	"github.com/edge-agent/edge-agent/internal/yamlstrict"
	"github.com/edge-agent/edge-agent/models/bundle"
	"github.com/edge-agent/edge-agent/models/sign"
	"github.com/edge-agent/edge-agent/models/spec"
)

// packSpec is the YAML `edgectl bundle pack --spec` reads. Paths are relative to it.
type packSpec struct {
	Name            string     `yaml:"name"`
	Version         string     `yaml:"version"`
	Sequence        uint64     `yaml:"sequence"`
	Model           string     `yaml:"model"`
	Labels          string     `yaml:"labels"`
	Extras          []string   `yaml:"extras"`
	Delegate        string     `yaml:"delegate"`
	MinAgentVersion string     `yaml:"min_agent_version"`
	Expires         *time.Time `yaml:"expires"`
	AllowDowngrade  bool       `yaml:"allow_downgrade"`
	Notes           string     `yaml:"notes"`
	Processing      spec.Model `yaml:"processing"`
	// Samples is a folder of inputs (PNG, JPEG, .npy) or a CSV of numbers: the reference
	// statistics for drift detection and the golden vectors are computed from them.
	Samples   string  `yaml:"samples"`
	Golden    *int    `yaml:"golden"`    // golden vectors taken from the first samples (default 3; 0: none)
	Tolerance float64 `yaml:"tolerance"` // absolute tolerance of golden outputs (default 1e-3)
	Bins      int     `yaml:"bins"`      // histogram bins of the reference statistics (default 20)
}

// DefaultBundleLifetime is how long a packed bundle stays installable when its spec sets no
// expires: long enough for a staged rollout and devices that were offline, short enough that
// an old bundle cannot be replayed for ever.
const DefaultBundleLifetime = 90 * 24 * time.Hour

// maxSamples bounds how many samples pack reads.
const maxSamples = 10000

func cmdPack(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("pack", flag.ContinueOnError)
	fs.SetOutput(stderr)
	specPath := fs.String("spec", "", "bundle spec YAML (required)")
	keyPath := fs.String("key", "", "secret key to sign with (required)")
	pwFile := fs.String("password-file", "", "password of the secret key")
	out := fs.String("o", "", "output bundle file (required; .tar.gz compresses)")
	expiresIn := fs.Duration("expires-in", DefaultBundleLifetime, "devices refuse to install the bundle this long after packing, unless the spec sets expires")
	noExpiry := fs.Bool("no-expiry", false, "no expiry: the bundle stays installable forever (a replay of it too)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *specPath == "" || *keyPath == "" || *out == "" || fs.NArg() > 0 {
		return usageError{errors.New("--spec, --key and -o are required")}
	}
	if *expiresIn <= 0 {
		return usageError{fmt.Errorf("--expires-in %v: give a positive duration, or --no-expiry", *expiresIn)}
	}
	ps, err := readPackSpec(*specPath)
	if err != nil {
		return err
	}
	now := time.Now().UTC()
	switch {
	case ps.Expires != nil && !ps.Expires.After(now):
		return fmt.Errorf("spec %s: expires %s is not in the future: every device would refuse the bundle; set a later expires", *specPath, ps.Expires.UTC().Format(time.RFC3339))
	case ps.Expires == nil && !*noExpiry:
		e := now.Add(*expiresIn).Truncate(time.Second)
		ps.Expires = &e
	}
	priv, err := readSecretKey(*keyPath, *pwFile)
	if err != nil {
		return err
	}
	man, files, err := buildManifest(ps)
	if err != nil {
		return err
	}
	tmp := *out + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	defer os.Remove(tmp)
	final, err := bundle.Pack(f, man, files, func(m []byte) ([]byte, error) {
		return sign.Sign(priv, m, sign.BundleComment(man.Name, man.Sequence))
	}, bundle.PackOptions{Gzip: strings.HasSuffix(*out, ".gz") || strings.HasSuffix(*out, ".tgz")})
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if err := os.Rename(tmp, *out); err != nil {
		return err
	}
	st, _ := os.Stat(*out)
	fmt.Fprintf(stdout, "packed %s: %s %s (sequence %d), %d files, %d golden vectors, reference from %d samples, %d bytes\n",
		*out, final.Name, final.Version, final.Sequence, len(final.Files), len(final.Golden), refSamples(final.Reference), st.Size())
	return nil
}

func refSamples(r *bundle.Reference) int {
	if r == nil {
		return 0
	}
	return r.Samples
}

func readPackSpec(path string) (*packSpec, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var ps packSpec
	if err := yamlstrict.Decode(b, &ps); err != nil {
		return nil, fmt.Errorf("spec %s: %w", path, err)
	}
	dir := filepath.Dir(path)
	abs := func(p string) string {
		if p == "" || filepath.IsAbs(p) {
			return p
		}
		return filepath.Join(dir, p)
	}
	ps.Model, ps.Labels, ps.Samples = abs(ps.Model), abs(ps.Labels), abs(ps.Samples)
	for i := range ps.Extras {
		ps.Extras[i] = abs(ps.Extras[i])
	}
	if ps.Model == "" {
		return nil, fmt.Errorf("spec %s: model: the .tflite file is required", path)
	}
	if ps.Golden == nil {
		three := 3
		ps.Golden = &three
	} else if *ps.Golden < 0 {
		return nil, fmt.Errorf("spec %s: golden: %d; want 0 (none) or more", path, *ps.Golden)
	}
	if ps.Tolerance == 0 {
		ps.Tolerance = 1e-3
	}
	if ps.Bins == 0 {
		ps.Bins = 20
	}
	return &ps, nil
}

// buildManifest loads the model, reads its tensors, and computes the reference statistics
// and golden vectors from the samples by running the model as the agent will.
func buildManifest(ps *packSpec) (bundle.Manifest, map[string]string, error) {
	man := bundle.Manifest{
		Schema: bundle.Schema, Name: ps.Name, Version: ps.Version, Sequence: ps.Sequence,
		Model: filepath.Base(ps.Model), Processing: ps.Processing, Delegate: ps.Delegate,
		MinAgentVersion: ps.MinAgentVersion, Expires: ps.Expires, AllowDowngrade: ps.AllowDowngrade, Notes: ps.Notes,
	}
	files := map[string]string{man.Model: ps.Model}
	if ps.Labels != "" {
		files["labels.txt"] = ps.Labels
		man.Processing.Output.LabelsFile = "labels.txt"
	}
	for _, e := range ps.Extras {
		if _, dup := files[filepath.Base(e)]; dup {
			return man, nil, fmt.Errorf("extras: %s has the same name as another file", e)
		}
		files[filepath.Base(e)] = e
	}
	eng, err := infer.Engines.New("tflite")
	if err != nil {
		return man, nil, err
	}
	// Run on the CPU kernels with one thread: the golden outputs are then the reference any
	// delegate is compared with.
	local := config.Model{Name: man.Name, Path: ps.Model, Version: man.Version, Delegate: infer.DelegateCPU, Threads: 1, Workers: 1, Spec: man.Processing}
	local.Spec.Output.LabelsFile = ps.Labels
	if g := man.Processing.Output.Embedding.Gallery; g != "" {
		// The gallery ships as one of the extras, named by its base name in the manifest.
		src, ok := files[g]
		if !ok {
			return man, nil, fmt.Errorf("processing.output.embedding.gallery: %q is not one of the extras; list the gallery file under extras", g)
		}
		local.Spec.Output.Embedding.Gallery = src
	}
	serving, err := agent.LoadServing(eng, local, accel.Report{}, nil)
	if err != nil {
		return man, nil, err
	}
	model := serving.Model.(infer.Model)
	defer model.Close()
	info := model.Info()
	for _, t := range info.Inputs {
		man.Inputs = append(man.Inputs, tensorOf(t))
	}
	for _, t := range info.Outputs {
		man.Outputs = append(man.Outputs, tensorOf(t))
	}
	if ps.Samples == "" {
		return man, files, nil
	}
	frames, err := readSamples(ps.Samples)
	if err != nil {
		return man, nil, err
	}
	// Vector features are named as the preprocessor orders them: by processing.input.vector.
	// features, else in the frames' own order, whose names (a CSV's header) are the best ones.
	features := ps.Processing.Input.Vector.Features
	if len(features) == 0 {
		features = frames[0].Names
	}
	ref := newRefStats(info.Inputs[0], features, ps.Bins)
	var classCounts []float64
	classTensor := -1
	if ps.Processing.Output.Kind == spec.OutputClassification {
		classTensor = ps.Processing.Output.Classification.Tensor
	}
	for i, fr := range frames {
		in, err := serving.Pre.Apply(fr, nil)
		if err != nil {
			return man, nil, fmt.Errorf("sample %s: %w", fr.Ref, err)
		}
		out, err := model.Infer(context.Background(), in)
		if err != nil {
			return man, nil, fmt.Errorf("sample %s: %w", fr.Ref, err)
		}
		ref.add(in[0].Floats(info.Inputs[0].Quant))
		if classTensor >= 0 && classTensor < len(out) {
			scores := out[classTensor].Floats(info.Outputs[classTensor].Quant)
			if classCounts == nil {
				classCounts = make([]float64, len(scores))
			}
			if len(scores) == len(classCounts) {
				classCounts[argmax(scores)]++
			}
		}
		if i < *ps.Golden {
			g := bundle.Golden{Tolerance: ps.Tolerance}
			for _, t := range in {
				if t.Len() > 1024 { // images: raw bytes keep the manifest under its size cap
					g.RawInputs = append(g.RawInputs, base64.StdEncoding.EncodeToString(t.Data))
				} else {
					g.Inputs = append(g.Inputs, t.Floats(infer.Quant{})) // values as the model takes them
				}
			}
			if len(g.RawInputs) > 0 && len(g.Inputs) > 0 { // one encoding per vector
				g.Inputs, g.RawInputs = nil, nil
				for _, t := range in {
					g.RawInputs = append(g.RawInputs, base64.StdEncoding.EncodeToString(t.Data))
				}
			}
			for o, t := range out {
				g.Outputs = append(g.Outputs, t.Floats(info.Outputs[o].Quant))
			}
			man.Golden = append(man.Golden, g)
		}
	}
	man.Reference = ref.reference(len(frames))
	if classCounts != nil {
		for i := range classCounts {
			classCounts[i] /= float64(len(frames))
		}
		man.Reference.Classes = classCounts
	}
	return man, files, nil
}

func tensorOf(t infer.TensorInfo) bundle.Tensor {
	return bundle.Tensor{Name: t.Name, DType: t.DType.String(), Shape: t.Shape, Scale: t.Quant.Scale, Zero: t.Quant.ZeroPoint}
}

func argmax(v []float64) int {
	best := 0
	for i := range v {
		if v[i] > v[best] {
			best = i
		}
	}
	return best
}

// readSamples reads a folder of inputs (sorted by name) or a CSV with a header row.
func readSamples(path string) ([]sensor.Frame, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("samples: %w", err)
	}
	if !st.IsDir() {
		return readCSV(path)
	}
	entries, err := os.ReadDir(path)
	if err != nil {
		return nil, err
	}
	var frames []sensor.Frame
	for _, e := range entries {
		if e.IsDir() || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		if len(frames) == maxSamples {
			break
		}
		p := filepath.Join(path, e.Name())
		data, err := os.ReadFile(p)
		if err != nil {
			return nil, err
		}
		fr, err := file.Decode(p, data, sensor.FileSpec{})
		if err != nil {
			return nil, fmt.Errorf("sample %s: %w", p, err)
		}
		fr.Ref = p
		frames = append(frames, fr)
	}
	if len(frames) == 0 {
		return nil, fmt.Errorf("samples: no inputs in %s", path)
	}
	return frames, nil
}

func readCSV(path string) ([]sensor.Frame, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	r := csv.NewReader(f)
	header, err := r.Read()
	if err != nil {
		return nil, fmt.Errorf("samples %s: header: %w", path, err)
	}
	var frames []sensor.Frame
	for row := 2; len(frames) < maxSamples; row++ {
		rec, err := r.Read()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("samples %s: %w", path, err)
		}
		fr := sensor.Frame{Ref: fmt.Sprintf("%s:%d", path, row)}
		for i, cell := range rec {
			v, err := strconv.ParseFloat(strings.TrimSpace(cell), 64)
			if err != nil {
				continue // non-numeric columns (a label) are not features
			}
			fr.Values = append(fr.Values, v)
			fr.Names = append(fr.Names, header[i])
		}
		frames = append(frames, fr)
	}
	if len(frames) == 0 {
		return nil, fmt.Errorf("samples: no rows in %s", path)
	}
	return frames, nil
}

// refStats accumulates per-feature (vectors) or per-channel (images) statistics of the
// model's input values; histograms are built from the kept values at the end.
type refStats struct {
	names  []string
	stride int         // values per sample that map onto names cyclically (channels) or 1:1 (features)
	values [][]float64 // per name
	bins   int
}

func newRefStats(in infer.TensorInfo, features []string, bins int) *refStats {
	n := in.Elements()
	r := &refStats{bins: bins}
	switch {
	case len(in.Shape) == 4 && in.Shape[3] <= 4: // NHWC image: per channel
		r.stride = in.Shape[3]
		for c := range r.stride {
			r.names = append(r.names, []string{"r", "g", "b", "a"}[c])
		}
		if r.stride == 1 {
			r.names = []string{"grey"}
		}
	case n <= 64: // a feature vector
		r.stride = n
		for i := range n {
			if i < len(features) && features[i] != "" {
				r.names = append(r.names, features[i])
			} else {
				r.names = append(r.names, "f"+strconv.Itoa(i))
			}
		}
	default: // a large flat input (an image as [1,784]): one distribution
		r.stride = 1
		r.names = []string{"input"}
	}
	r.values = make([][]float64, len(r.names))
	return r
}

// maxKept bounds the values kept per feature for the histogram.
const maxKept = 1 << 20

func (r *refStats) add(v []float64) {
	for i, x := range v {
		k := i % r.stride
		if len(r.values[k]) < maxKept {
			r.values[k] = append(r.values[k], x)
		}
	}
}

func (r *refStats) reference(samples int) *bundle.Reference {
	ref := &bundle.Reference{Samples: samples}
	for k, vals := range r.values {
		if len(vals) == 0 {
			continue
		}
		sort.Float64s(vals)
		var sum, sq float64
		for _, x := range vals {
			sum += x
		}
		mean := sum / float64(len(vals))
		for _, x := range vals {
			sq += (x - mean) * (x - mean)
		}
		lo, hi := vals[0], vals[len(vals)-1]
		if hi == lo {
			hi = lo + 1
		}
		fsx := bundle.FeatureStats{Name: r.names[k], Mean: mean, Std: math.Sqrt(sq / float64(len(vals))), Counts: make([]uint64, r.bins)}
		for b := 0; b <= r.bins; b++ {
			fsx.Edges = append(fsx.Edges, lo+(hi-lo)*float64(b)/float64(r.bins))
		}
		for _, x := range vals {
			b := min(int((x-lo)/(hi-lo)*float64(r.bins)), r.bins-1)
			fsx.Counts[b]++
		}
		ref.Features = append(ref.Features, fsx)
	}
	return ref
}
