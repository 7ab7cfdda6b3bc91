// Package config is the agent's YAML configuration: types, defaults and validation. Errors
// name the field ("models[1].delegate: ...") and say what is accepted. Read by cmd/edge-agent
// and agent/agent.go only; it imports the spec types it embeds (models/spec, hal/sensor) and
// the registries it validates names against, never a stage package.
package config

import (
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/edge-agent/edge-agent/agent/infer"
	"github.com/edge-agent/edge-agent/hal/sensor"
	"github.com/edge-agent/edge-agent/internal/yamlstrict"
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

	// TrustedKeys is the single key set of agents before keys had roles: it stands in for
	// each of commands.trusted_keys, bundles.trusted_keys and update.trusted_keys that is
	// empty, with a warning at every start (docs/security.md#upgrading).
	TrustedKeys []string `yaml:"trusted_keys"`
	// Bundles: who may sign model bundles.
	Bundles Bundles `yaml:"bundles"`
	// ModelsDir is the model store (default <state_dir>/models).
	ModelsDir string `yaml:"models_dir"`
	// Inbox is a folder watched for dropped bundles (default <state_dir>/inbox).
	Inbox string `yaml:"inbox"`
	// KeepVersions is how many versions of each model the store keeps (default 3, min 2).
	KeepVersions int `yaml:"keep_versions"`
	// Probation decides when a new version is trusted, or rolled back.
	Probation Probation `yaml:"probation"`

	// Outbox is the durable buffer every result and event waits in until the broker has it.
	Outbox Outbox `yaml:"outbox"`
	// MQTT is the fleet connection; without a broker the agent runs offline and buffers.
	MQTT MQTT `yaml:"mqtt"`
	// Commands are the fleet commands taken from the MQTT command topics.
	Commands Commands `yaml:"commands"`
	// Update is the agent's self-update (edge-agent update, the selfupdate command).
	Update Update `yaml:"update"`
	// Deploy bounds the downloads deploy and selfupdate commands make.
	Deploy Deploy `yaml:"deploy"`
	// Drift is the drift monitor (docs/drift.md).
	Drift Drift `yaml:"drift"`
	// Status is the local HTTP server: status page, metrics, health, predict API.
	Status Status `yaml:"status"`

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

// Outbox bounds the durable buffer (docs/configuration.md#outbox). Results and events are
// separate streams with their own caps; the policy decides what happens when one is full.
type Outbox struct {
	Path       string        `yaml:"path"`        // default <state_dir>/outbox.db
	MaxResults int           `yaml:"max_results"` // default 1,000,000
	MaxBytes   ByteSize      `yaml:"max_bytes"`   // results' payload bytes, default 256MiB
	MaxAge     time.Duration `yaml:"max_age"`     // 0 = keep until sent or evicted by the caps
	Policy     string        `yaml:"policy"`      // drop-oldest (default) | drop-newest | block
	MaxEvents  int           `yaml:"max_events"`  // default 10,000 (always drop-oldest)
	// CommitWait lets a commit wait for more results to share its fsync (default 0: appends
	// that arrive while a commit runs share the next one anyway).
	CommitWait time.Duration `yaml:"commit_wait"`
}

// Outbox policies.
var OutboxPolicies = []string{"drop-oldest", "drop-newest", "block"}

// MQTT is the fleet connection (docs/mqtt.md). Field meanings follow agent/link's Config.
type MQTT struct {
	// Broker is tcp://host:1883 or ssl://host:8883; empty means offline mode.
	Broker       string        `yaml:"broker"`
	Prefix       string        `yaml:"prefix"` // default edge
	Groups       []string      `yaml:"groups"` // fleet groups whose commands this device takes
	Username     string        `yaml:"username"`
	Password     string        `yaml:"password"`
	PasswordFile string        `yaml:"password_file"` // read at start; keeps the secret out of the config
	CAFile       string        `yaml:"ca_file"`
	CertFile     string        `yaml:"cert_file"`
	KeyFile      string        `yaml:"key_file"`
	ServerName   string        `yaml:"server_name"`
	KeepAlive    time.Duration `yaml:"keepalive"`       // default 30s
	Timeout      time.Duration `yaml:"connect_timeout"` // default 10s
	BackoffMin   time.Duration `yaml:"backoff_min"`     // default 1s
	BackoffMax   time.Duration `yaml:"backoff_max"`     // default 2m
	InFlight     int           `yaml:"in_flight"`       // messages awaiting PUBACK per stream, default 8
	BatchMax     int           `yaml:"batch_max"`       // results per message, default 100
	BatchBytes   ByteSize      `yaml:"batch_bytes"`     // default 256KiB
	BatchWait    time.Duration `yaml:"batch_wait"`      // default 200ms
	Gzip         bool          `yaml:"gzip"`
	AckTimeout   time.Duration `yaml:"ack_timeout"`   // default 30s
	StatusEvery  time.Duration `yaml:"status_every"`  // default 60s
	MetricsEvery time.Duration `yaml:"metrics_every"` // default 30s; 0 after defaults is impossible, negative disables
}

// Deploy settings (docs/security.md#downloads).
type Deploy struct {
	// AllowedURLs are the URL prefixes (http(s)://host[:port][/path]; no port: any) that
	// deploy and selfupdate commands may download from, redirects included. Default: the MQTT
	// broker's host, where the fleet server usually lives; none without a broker.
	AllowedURLs []string `yaml:"allowed_urls"`
	// DownloadBudget bounds a download on disk (default 512MiB; one at a time).
	DownloadBudget ByteSize `yaml:"download_budget"`
}

// Bundles settings (docs/security.md).
type Bundles struct {
	// TrustedKeys are minisign public keys (base64 lines or paths to .pub files) that model
	// bundles must be signed with; several allow key rotation. Bundles are always verified.
	TrustedKeys []string `yaml:"trusted_keys"`
}

// Update settings (docs/operations.md#updating-the-agent).
type Update struct {
	// TrustedKeys sign agent binaries (edgectl sign); the only keys a new binary is taken from.
	TrustedKeys []string `yaml:"trusted_keys"`
	// ConfirmWithin is how long a new binary has to reach ready before the previous one is
	// restored (default 2m).
	ConfirmWithin time.Duration `yaml:"confirm_within"`
}

// Commands settings (docs/mqtt.md#commands).
type Commands struct {
	// TrustedKeys sign fleet commands: the key of edgectl and edgectl serve.
	TrustedKeys []string `yaml:"trusted_keys"`
	// RequireSigned (default true) refuses every command that is not a minisign-signed
	// envelope by one of TrustedKeys, addressed to this device; without a key no command is
	// taken. false is an opt-out that takes plain commands too, warned about at every start.
	RequireSigned *bool `yaml:"require_signed"`
}

// Key roles, as the warnings and the status page name them.
const (
	RoleCommands = "commands"
	RoleBundles  = "bundles"
	RoleUpdate   = "update"
)

// SignedCommands reports whether only signed commands are taken (the default).
func (c *Config) SignedCommands() bool {
	return c.Commands.RequireSigned == nil || *c.Commands.RequireSigned
}

// Keys returns the trusted keys of a role (RoleCommands, RoleBundles, RoleUpdate): its own
// list, or the legacy top-level trusted_keys when that is empty.
func (c *Config) Keys(role string) []string {
	var own []string
	switch role {
	case RoleCommands:
		own = c.Commands.TrustedKeys
	case RoleBundles:
		own = c.Bundles.TrustedKeys
	case RoleUpdate:
		own = c.Update.TrustedKeys
	}
	if len(own) > 0 {
		return own
	}
	return c.TrustedKeys
}

// SharedKeyRoles are the roles that trust the legacy top-level trusted_keys, because their
// own list is empty: one key set for several purposes, which the agent warns about.
func (c *Config) SharedKeyRoles() []string {
	if len(c.TrustedKeys) == 0 {
		return nil
	}
	var roles []string
	for _, r := range []struct {
		name string
		own  []string
	}{{RoleCommands, c.Commands.TrustedKeys}, {RoleBundles, c.Bundles.TrustedKeys}, {RoleUpdate, c.Update.TrustedKeys}} {
		if len(r.own) == 0 {
			roles = append(roles, r.name)
		}
	}
	return roles
}

// ByteSize is a size in bytes written as a number or with a unit: 512KiB, 256MiB, 1GiB, 10MB.
type ByteSize int64

// UnmarshalYAML accepts an integer or a number with a unit.
func (b *ByteSize) UnmarshalYAML(n *yaml.Node) error {
	v, err := ParseByteSize(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %w", n.Line, err)
	}
	*b = v
	return nil
}

// ParseByteSize reads "1048576", "512KiB", "256MiB", "1GiB", "10MB", "64kB".
func ParseByteSize(s string) (ByteSize, error) {
	s = strings.TrimSpace(s)
	units := []struct {
		suffix string
		mult   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"kB", 1000}, {"KB", 1000}, {"MB", 1e6}, {"GB", 1e9}, {"B", 1}}
	mult := int64(1)
	for _, u := range units {
		if strings.HasSuffix(s, u.suffix) {
			s, mult = strings.TrimSpace(strings.TrimSuffix(s, u.suffix)), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 || n > (1<<62)/mult {
		return 0, fmt.Errorf("%q is not a size: write a whole number of bytes or use KiB, MiB, GiB, kB, MB, GB", s)
	}
	return ByteSize(n * mult), nil
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
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("parse: %w", err)
	}
	if len(doc.Content) == 0 || doc.Content[0].Kind == yaml.ScalarNode && doc.Content[0].Tag == "!!null" {
		// An empty file is more often a failed copy or a wrong path than a wish for every
		// default (no models, the status page on :8080): say so rather than serve nothing.
		return nil, errors.New("the file is empty or holds only comments: write the sources and models to serve (docs/configuration.md; packaging/config.yaml is a starting point)")
	}
	var c Config
	if err := yamlstrict.Check(&doc, reflect.TypeFor[Config]()); err != nil {
		return nil, err
	}
	if err := doc.Decode(&c); err != nil {
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
	o := &c.Outbox
	if o.Path == "" {
		o.Path = filepath.Join(c.StateDir, "outbox.db")
	}
	o.Path = c.Resolve(o.Path)
	if o.MaxResults == 0 {
		o.MaxResults = 1_000_000
	}
	if o.MaxBytes == 0 {
		o.MaxBytes = 256 << 20
	}
	if o.Policy == "" {
		o.Policy = "drop-oldest"
	}
	if o.MaxEvents == 0 {
		o.MaxEvents = 10_000
	}
	q := &c.MQTT
	if q.Prefix == "" {
		q.Prefix = "edge"
	}
	for _, f := range []*string{&q.PasswordFile, &q.CAFile, &q.CertFile, &q.KeyFile} {
		*f = c.Resolve(*f)
	}
	if q.MetricsEvery == 0 {
		q.MetricsEvery = 30 * time.Second
	}
	if c.Update.ConfirmWithin == 0 {
		c.Update.ConfirmWithin = 2 * time.Minute
	}
	if c.Deploy.AllowedURLs == nil {
		if u, err := url.Parse(q.Broker); err == nil && u.Hostname() != "" {
			host := u.Hostname()
			if strings.Contains(host, ":") {
				host = "[" + host + "]" // IPv6
			}
			c.Deploy.AllowedURLs = []string{"https://" + host, "http://" + host}
		}
	}
	if c.Deploy.DownloadBudget == 0 {
		c.Deploy.DownloadBudget = 512 << 20
	}
	c.Drift.applyDefaults()
	c.Status.applyDefaults(c)
	for _, keys := range [][]string{c.TrustedKeys, c.Bundles.TrustedKeys, c.Commands.TrustedKeys, c.Update.TrustedKeys} {
		for i, k := range keys {
			if strings.HasPrefix(k, "./") || strings.HasPrefix(k, "../") {
				keys[i] = c.Resolve(k)
			}
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
		if g := m.Spec.Output.Embedding.Gallery; g != "" {
			m.Spec.Output.Embedding.Gallery = c.Resolve(g)
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
	if c.Deploy.DownloadBudget < 1<<20 {
		bad("deploy.download_budget", "%d bytes is too small for a bundle: give at least 1MiB", c.Deploy.DownloadBudget)
	}
	if c.Update.ConfirmWithin < 5*time.Second {
		bad("update.confirm_within", "%v is too short for a new binary to load its models: give at least 5s", c.Update.ConfirmWithin)
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
	if o := c.Outbox; o.MaxResults < 1 || o.MaxEvents < 1 || o.MaxBytes < 1<<10 || o.MaxAge < 0 || o.CommitWait < 0 || o.CommitWait > time.Second {
		bad("outbox", "max_results and max_events must be ≥ 1, max_bytes ≥ 1KiB, max_age ≥ 0 and commit_wait within 0..1s")
	}
	if !slices.Contains(OutboxPolicies, c.Outbox.Policy) {
		bad("outbox.policy", "%q is not one of %s", c.Outbox.Policy, strings.Join(OutboxPolicies, ", "))
	}
	if q := c.MQTT; q.Password != "" && q.PasswordFile != "" {
		bad("mqtt.password_file", "set either mqtt.password or mqtt.password_file, not both")
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
			if len(c.Keys(RoleBundles)) == 0 {
				bad(f+".path", "is empty, so the model is served from signed bundles, which needs bundles.trusted_keys (bundles are never accepted unsigned)")
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
	c.Drift.validate(bad)
	c.Status.validate(bad)
	return errors.Join(errs...)
}

func unjoin(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}
