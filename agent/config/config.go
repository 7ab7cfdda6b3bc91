// Package config is the agent's YAML configuration: types, defaults and validation. Errors
// name the field ("models[1].delegate: ...") and say what is accepted. Read by cmd/edge-agent
// and agent/agent.go only; it imports the spec types it embeds (models/spec, hal/sensor) and
// the registries it validates names against, never a stage package.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/edge-agent/edge-agent/agent/infer"
	"github.com/edge-agent/edge-agent/hal/sensor"
	"github.com/edge-agent/edge-agent/models/spec"
)

// DefaultPath is where the service reads its configuration.
const DefaultPath = "/etc/edge-agent/config.yaml"

// MaxBytes bounds a configuration file.
const MaxBytes = 1 << 20

// Config is the whole file.
type Config struct {
	// Device is this board's id in results and topics (default: the host name).
	Device string `yaml:"device"`
	// StateDir holds the agent's durable state (default /var/lib/edge-agent).
	StateDir string `yaml:"state_dir"`
	Log      Log    `yaml:"log"`
	// Engine is the inference engine (default tflite).
	Engine string `yaml:"engine"`
	// HostRoot prefixes /sys, /proc and /dev for hardware detection (default /).
	HostRoot string `yaml:"host_root"`
	// EdgeTPULibrary is the Edge TPU delegate plugin (default libedgetpu.so.1).
	EdgeTPULibrary string `yaml:"edgetpu_library"`
	// Stdout writes every result as a JSON line to standard output (default true).
	Stdout *bool `yaml:"stdout"`
	// ShutdownTimeout bounds draining queued frames on SIGTERM (default 10s).
	ShutdownTimeout time.Duration `yaml:"shutdown_timeout"`

	// TrustedKeys are minisign public keys (base64 lines or paths to .pub files) that model
	// bundles must be signed with; several allow key rotation. Bundles are always verified.
	TrustedKeys []string `yaml:"trusted_keys"`
	// ModelsDir is the model store (default <state_dir>/models).
	ModelsDir string `yaml:"models_dir"`
	// Inbox is a folder watched for dropped bundles (default <state_dir>/inbox).
	Inbox string `yaml:"inbox"`
	// KeepVersions is how many versions of each model the store keeps (default 3, min 2).
	KeepVersions int `yaml:"keep_versions"`
	// Probation decides when a new version is trusted, or rolled back.
	Probation Probation `yaml:"probation"`

	Sources []sensor.Spec `yaml:"sources"`
	Models  []Model       `yaml:"models"`

	dir string // directory of the file, for relative paths
}

// Probation of a newly activated model version: it passes after Inferences results or
// Duration, and is rolled back when, after at least MinSamples, its error rate or NaN/Inf
// rate is above the maximum.
type Probation struct {
	Inferences       int           `yaml:"inferences"`         // default 100
	Duration         time.Duration `yaml:"duration"`           // default 60s
	MinSamples       int           `yaml:"min_samples"`        // default 10
	MaxErrorRate     float64       `yaml:"max_error_rate"`     // default 0.2
	MaxNonFiniteRate float64       `yaml:"max_nonfinite_rate"` // default 0.01
}

// Log settings.
type Log struct {
	Level  string `yaml:"level"`  // debug | info | warn | error (default info)
	Format string `yaml:"format"` // text | json (default text)
}

// Model is one served model.
type Model struct {
	Name string `yaml:"name"`
	// Path is a fixed .tflite file. Without it the model is served from signed bundles in the
	// model store (installed with `edge-agent models install` or dropped into the inbox), and
	// its processing comes from the bundle's manifest.
	Path    string `yaml:"path"`
	Version string `yaml:"version"`
	// Sources names the sources whose frames this model reads.
	Sources  []string `yaml:"sources"`
	Delegate string   `yaml:"delegate"` // auto | cpu | xnnpack | edgetpu | gpu (default auto)
	Threads  int      `yaml:"threads"`  // CPU threads (0 = number of CPUs, at most 4)
	Workers  int      `yaml:"workers"`  // concurrent inferences = interpreters (default 1)
	Queue    int      `yaml:"queue"`    // frames waiting for this model (default 4)
	// Spec is the pre- and post-processing (the same schema as a bundle manifest's).
	Spec spec.Model `yaml:",inline"`
}

// Load reads, defaults and validates a file.
func Load(path string) (*Config, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxBytes+1))
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	if len(data) > MaxBytes {
		return nil, fmt.Errorf("config %s: larger than %d bytes", path, MaxBytes)
	}
	c, err := Parse(data, filepath.Dir(path))
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	return c, nil
}

// Parse decodes YAML (unknown fields are errors, so typos are caught), applies defaults and
// validates. dir resolves relative paths.
func Parse(data []byte, dir string) (*Config, error) {
	var c Config
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil && !errors.Is(err, io.EOF) { // EOF: empty file, all defaults
		return nil, fmt.Errorf("parse: %w", err)
	}
	c.dir = dir
	c.applyDefaults()
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

func (c *Config) applyDefaults() {
	if c.Device == "" {
		c.Device, _ = os.Hostname()
	}
	if c.StateDir == "" {
		c.StateDir = "/var/lib/edge-agent"
	}
	if c.Log.Level == "" {
		c.Log.Level = "info"
	}
	if c.Log.Format == "" {
		c.Log.Format = "text"
	}
	if c.Engine == "" {
		c.Engine = "tflite"
	}
	if c.HostRoot == "" {
		c.HostRoot = "/"
	}
	if c.Stdout == nil {
		t := true
		c.Stdout = &t
	}
	if c.ShutdownTimeout == 0 {
		c.ShutdownTimeout = 10 * time.Second
	}
	if c.ModelsDir == "" {
		c.ModelsDir = filepath.Join(c.StateDir, "models")
	}
	if c.Inbox == "" {
		c.Inbox = filepath.Join(c.StateDir, "inbox")
	}
	if c.KeepVersions == 0 {
		c.KeepVersions = 3
	}
	for i, k := range c.TrustedKeys {
		if strings.HasPrefix(k, "./") || strings.HasPrefix(k, "../") {
			c.TrustedKeys[i] = c.Resolve(k)
		}
	}
	for i := range c.Models {
		m := &c.Models[i]
		if m.Delegate == "" {
			m.Delegate = infer.DelegateAuto
		}
		if m.Version == "" {
			m.Version = "0"
		}
		m.Workers = max(m.Workers, 1)
		if m.Queue == 0 {
			m.Queue = 4
		}
		m.Path = c.Resolve(m.Path)
		if m.Spec.Output.LabelsFile != "" {
			m.Spec.Output.LabelsFile = c.Resolve(m.Spec.Output.LabelsFile)
		}
	}
	for i := range c.Sources {
		s := &c.Sources[i]
		s.CSV.Path = c.Resolve(s.CSV.Path)
		s.File.Path = c.Resolve(s.File.Path)
	}
}

// Resolve makes a path from the file relative to the file's directory.
func (c *Config) Resolve(p string) string {
	if p == "" || filepath.IsAbs(p) || c.dir == "" {
		return p
	}
	return filepath.Join(c.dir, p)
}

// Validate checks the whole configuration and reports every problem, each naming its field.
func (c *Config) Validate() error {
	var errs []error
	bad := func(field, format string, a ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", field, fmt.Sprintf(format, a...)))
	}
	if strings.ContainsAny(c.Device, "/+#") || c.Device == "" {
		bad("device", "%q must be non-empty without '/', '+' or '#' (it is used in MQTT topics)", c.Device)
	}
	if !slices.Contains([]string{"debug", "info", "warn", "error"}, c.Log.Level) {
		bad("log.level", "%q is not one of debug, info, warn, error", c.Log.Level)
	}
	if !slices.Contains([]string{"text", "json"}, c.Log.Format) {
		bad("log.format", "%q is not one of text, json", c.Log.Format)
	}
	if c.ShutdownTimeout < 0 {
		bad("shutdown_timeout", "must not be negative")
	}
	names := map[string]bool{}
	kinds := sensor.Kinds.Names()
	for i, s := range c.Sources {
		f := fmt.Sprintf("sources[%d]", i)
		switch {
		case s.Name == "":
			bad(f+".name", "is required")
		case names[s.Name]:
			bad(f+".name", "%q is used twice", s.Name)
		}
		names[s.Name] = true
		if !slices.Contains(kinds, s.Kind) {
			bad(f+".kind", "%q is not a source kind (known: %s)", s.Kind, strings.Join(kinds, ", "))
		}
		if s.Interval < 0 || s.Rate < 0 {
			bad(f+".interval", "interval and rate must not be negative")
		}
		if s.Queue < 0 || s.Queue > 10000 {
			bad(f+".queue", "%d is outside 0..10000", s.Queue)
		}
	}
	if c.KeepVersions < 2 || c.KeepVersions > 100 {
		bad("keep_versions", "%d is outside 2..100 (the active and the previous version are always kept)", c.KeepVersions)
	}
	if p := c.Probation; p.Inferences < 0 || p.Duration < 0 || p.MinSamples < 0 || p.MaxErrorRate < 0 || p.MaxErrorRate > 1 || p.MaxNonFiniteRate < 0 || p.MaxNonFiniteRate > 1 {
		bad("probation", "counts and durations must be ≥ 0 and rates within 0..1")
	}
	models := map[string]bool{}
	for i, m := range c.Models {
		f := fmt.Sprintf("models[%d]", i)
		switch {
		case m.Name == "":
			bad(f+".name", "is required")
		case models[m.Name]:
			bad(f+".name", "%q is used twice", m.Name)
		case strings.ContainsAny(m.Name, "/+# "):
			bad(f+".name", "%q must not contain '/', '+', '#' or spaces", m.Name)
		}
		models[m.Name] = true
		if m.Path == "" {
			if len(c.TrustedKeys) == 0 {
				bad(f+".path", "is empty, so the model is served from signed bundles, which needs trusted_keys (bundles are never accepted unsigned)")
			}
			if m.Spec.Input.Kind != "" || m.Spec.Output.Kind != "" || m.Spec.Output.LabelsFile != "" || len(m.Spec.Output.Labels) > 0 {
				bad(f+".input/output", "come from the bundle's manifest for a model served from bundles; remove them or set path")
			}
		}
		if !slices.Contains(infer.Delegates, m.Delegate) {
			bad(f+".delegate", "%q is not one of %s", m.Delegate, strings.Join(infer.Delegates, ", "))
		}
		if m.Threads < 0 || m.Threads > 64 {
			bad(f+".threads", "%d is outside 0..64", m.Threads)
		}
		if m.Workers > 16 {
			bad(f+".workers", "%d is over 16 (each worker holds an interpreter in memory)", m.Workers)
		}
		if m.Queue < 0 || m.Queue > 10000 {
			bad(f+".queue", "%d is outside 0..10000", m.Queue)
		}
		for j, s := range m.Sources {
			if !names[s] {
				bad(fmt.Sprintf("%s.sources[%d]", f, j), "no source is named %q", s)
			}
		}
		if err := m.Spec.Validate(); err != nil {
			for _, e := range unjoin(err) {
				errs = append(errs, fmt.Errorf("%s.%w", f, e))
			}
		}
	}
	return errors.Join(errs...)
}

func unjoin(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}
