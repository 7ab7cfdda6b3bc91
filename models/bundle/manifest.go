// Package bundle is the model bundle format: a tar (optionally gzip) holding manifest.json,
// its minisign signature manifest.json.minisig, the .tflite model, labels and extras. It owns
// the manifest schema, packing, and the safe reading of untrusted archives (size and ratio
// caps, no absolute paths, no "..", no links or devices, every file's sha256 and size checked).
// Signature checking is injected (models/sign implements it). It imports models/spec and
// nothing of agent/ or hal/. docs/bundle-format.md documents the format.
package bundle

import (
	"errors"
	"fmt"
	"path"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/edge-agent/edge-agent/models/spec"
)

// Schema is the manifest schema this agent writes and reads.
const Schema = "edge-agent/bundle/v1"

// Well-known archive member names.
const (
	ManifestName  = "manifest.json"
	SignatureName = "manifest.json.minisig"
)

// Manifest describes a bundle. Everything the agent trusts about a model comes from here,
// and the manifest itself is trusted only once its signature verifies.
type Manifest struct {
	Schema   string    `json:"schema"`
	Name     string    `json:"name"`
	Version  string    `json:"version"`  // semver, e.g. 1.4.0
	Sequence uint64    `json:"sequence"` // increases with every release of this model name (anti-rollback)
	Created  time.Time `json:"created"`
	// Model is the archive path of the .tflite file; it must be listed in Files.
	Model string `json:"model"`
	Files []File `json:"files"`

	// Inputs and Outputs are what the model's tensors must be; checked at load.
	Inputs  []Tensor `json:"inputs"`
	Outputs []Tensor `json:"outputs"`
	// Processing is the pre/post-processing (the config's input/output schema). A
	// labels_file in it is an archive path.
	Processing spec.Model `json:"processing"`

	Reference *Reference `json:"reference,omitempty"` // drift reference statistics
	Golden    []Golden   `json:"golden,omitempty"`    // canary vectors

	MinAgentVersion string     `json:"min_agent_version,omitempty"`
	Delegate        string     `json:"delegate,omitempty"` // preferred delegate
	Expires         *time.Time `json:"expires,omitempty"`
	// AllowDowngrade lets this bundle replace a version with a higher sequence: a signed,
	// explicit rollback release.
	AllowDowngrade bool   `json:"allow_downgrade,omitempty"`
	Notes          string `json:"notes,omitempty"`
}

// File is one archive member.
type File struct {
	Path   string `json:"path"`
	SHA256 string `json:"sha256"` // lower-case hex
	Size   int64  `json:"size"`
}

// Tensor is an expected input or output tensor. DType is a name such as "float32".
type Tensor struct {
	Name  string  `json:"name,omitempty"`
	DType string  `json:"dtype"`
	Shape []int   `json:"shape"`
	Scale float32 `json:"scale,omitempty"`
	Zero  int32   `json:"zero_point,omitempty"`
}

// Reference holds statistics of the data the model was validated on, for drift detection.
type Reference struct {
	Samples  int            `json:"samples"`
	Features []FeatureStats `json:"features,omitempty"` // per input feature or image channel
	// Classes is the frequency of each output class (sums to 1) for classifiers.
	Classes []float64 `json:"classes,omitempty"`
}

// FeatureStats summarises one feature or channel.
type FeatureStats struct {
	Name   string    `json:"name"`
	Mean   float64   `json:"mean"`
	Std    float64   `json:"std"`
	Edges  []float64 `json:"edges"`  // histogram bin edges, len(Counts)+1
	Counts []uint64  `json:"counts"` // histogram counts
}

// Golden is one canary vector: model input tensors (after preprocessing, flattened) and the
// expected outputs (dequantised, flattened), equal within Tolerance (absolute). Large inputs
// (images) go in RawInputs instead: each input tensor's bytes in the model's own dtype,
// little-endian, base64 — a 300×300×3 uint8 image is 360 KB there, not megabytes of JSON.
type Golden struct {
	Inputs    [][]float64 `json:"inputs,omitempty"`
	RawInputs []string    `json:"raw_inputs,omitempty"`
	Outputs   [][]float64 `json:"outputs"`
	Tolerance float64     `json:"tolerance"`
}

var (
	nameRE   = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)
	semverRE = regexp.MustCompile(`^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?$`)
	shaRE    = regexp.MustCompile(`^[0-9a-f]{64}$`)
)

// ErrManifest is wrapped by every manifest validation error.
var ErrManifest = errors.New("invalid manifest")

// Validate checks the manifest on its own. Errors name the field.
func (m *Manifest) Validate() error {
	var errs []error
	bad := func(field, format string, a ...any) {
		errs = append(errs, fmt.Errorf("%w: %s: %s", ErrManifest, field, fmt.Sprintf(format, a...)))
	}
	if m.Schema != Schema {
		bad("schema", "%q is not %q (this agent reads version 1 manifests)", m.Schema, Schema)
	}
	if !nameRE.MatchString(m.Name) {
		bad("name", "%q must be 1-64 letters, digits, '.', '_' or '-'", m.Name)
	}
	if !semverRE.MatchString(m.Version) {
		bad("version", "%q is not a semantic version such as 1.2.0", m.Version)
	}
	if m.Sequence == 0 {
		bad("sequence", "must be ≥ 1")
	}
	seen := map[string]bool{}
	for i, f := range m.Files {
		field := fmt.Sprintf("files[%d]", i)
		if err := CheckPath(f.Path); err != nil {
			bad(field+".path", "%v", err)
		}
		if f.Path == ManifestName || f.Path == SignatureName || f.Path == "version.json" { // the store keeps its metadata as version.json
			bad(field+".path", "%q is reserved", f.Path)
		}
		if seen[f.Path] {
			bad(field+".path", "%q listed twice", f.Path)
		}
		seen[f.Path] = true
		if !shaRE.MatchString(f.SHA256) {
			bad(field+".sha256", "want 64 lower-case hex digits")
		}
		if f.Size < 0 {
			bad(field+".size", "must be ≥ 0")
		}
	}
	for i, f := range m.Files {
		if CheckPath(f.Path) != nil {
			continue // reported above
		}
		for dir := path.Dir(f.Path); dir != "." && dir != "/"; dir = path.Dir(dir) {
			if seen[dir] {
				bad(fmt.Sprintf("files[%d].path", i), "%q is inside %q, which is a file", f.Path, dir)
				break
			}
		}
	}
	if !seen[m.Model] {
		bad("model", "%q is not one of the files", m.Model)
	}
	if lf := m.Processing.Output.LabelsFile; lf != "" && !seen[lf] {
		bad("processing.output.labels_file", "%q is not one of the files", lf)
	}
	if g := m.Processing.Output.Embedding.Gallery; g != "" && !seen[g] {
		bad("processing.output.embedding.gallery", "%q is not one of the files (ship the gallery in the bundle)", g)
	}
	for i, t := range append(append([]Tensor{}, m.Inputs...), m.Outputs...) {
		if t.DType == "" || len(t.Shape) == 0 {
			bad(fmt.Sprintf("inputs/outputs[%d]", i), "needs dtype and shape")
		}
	}
	if err := m.Processing.Validate(); err != nil {
		bad("processing", "%v", err)
	}
	for i, g := range m.Golden {
		if n := len(g.Inputs) + len(g.RawInputs); n != len(m.Inputs) || (len(g.Inputs) > 0 && len(g.RawInputs) > 0) {
			bad(fmt.Sprintf("golden[%d].inputs", i), "has %d tensors (inputs or raw_inputs, not both), the model takes %d", n, len(m.Inputs))
		}
		if len(g.Outputs) != len(m.Outputs) {
			bad(fmt.Sprintf("golden[%d].outputs", i), "has %d tensors, the model gives %d", len(g.Outputs), len(m.Outputs))
		}
		if g.Tolerance < 0 {
			bad(fmt.Sprintf("golden[%d].tolerance", i), "must be ≥ 0")
		}
	}
	if m.MinAgentVersion != "" && !semverRE.MatchString(strings.TrimPrefix(m.MinAgentVersion, "v")) {
		bad("min_agent_version", "%q is not a semantic version", m.MinAgentVersion)
	}
	return errors.Join(errs...)
}

// CheckPath accepts a relative, clean, slash-separated archive path without "..".
func CheckPath(p string) error {
	switch {
	case p == "" || p == ".":
		return errors.New("empty path")
	case strings.HasPrefix(p, "/"):
		return fmt.Errorf("absolute path %q", p)
	case strings.Contains(p, "\\"):
		return fmt.Errorf("backslash in path %q", p)
	case path.Clean(p) != p:
		return fmt.Errorf("path %q is not clean", p)
	case p == ".." || strings.HasPrefix(p, "../") || strings.Contains(p, "/../") || strings.HasSuffix(p, "/.."):
		return fmt.Errorf("path %q leaves the bundle", p)
	case len(p) > 255:
		return fmt.Errorf("path longer than 255 bytes")
	}
	for _, r := range p {
		if r < 0x20 || r == 0x7f {
			return fmt.Errorf("control character %U in path %q", r, p)
		}
	}
	return nil
}

// CompareVersions compares two semantic versions (build metadata ignored; a pre-release
// sorts before its release). Invalid versions compare as equal-to-nothing: the caller
// validates first.
func CompareVersions(a, b string) int {
	pa, pb := parseSemver(a), parseSemver(b)
	for i := range 3 {
		if pa.n[i] != pb.n[i] {
			if pa.n[i] < pb.n[i] {
				return -1
			}
			return 1
		}
	}
	switch {
	case pa.pre == pb.pre:
		return 0
	case pa.pre == "":
		return 1
	case pb.pre == "":
		return -1
	case pa.pre < pb.pre:
		return -1
	}
	return 1
}

type semver struct {
	n   [3]int
	pre string
}

func parseSemver(v string) semver {
	var s semver
	v = strings.TrimPrefix(v, "v")
	v, _, _ = strings.Cut(v, "+")
	v, s.pre, _ = strings.Cut(v, "-")
	for i, part := range strings.SplitN(v, ".", 3) {
		s.n[i], _ = strconv.Atoi(part)
	}
	return s
}
