package config

// Overrides: the settings the fleet may change on a device with the config command. They
// are kept beside the state (<state_dir>/config-overrides.json) and applied on top of the
// file at every start, so the file stays the operator's and a fleet change survives
// restarts. The list is short on purpose: nothing that could cut the device off from the
// fleet (broker, credentials, TLS), weaken what must be signed (trusted_keys,
// commands.require_signed) or move its data (paths) can be set remotely.

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/edge-agent/edge-agent/internal/durable"
)

// Setting is one setting the config command may change.
type Setting struct {
	Key string // dotted YAML path, as in the file: "mqtt.metrics_every"
	// Live settings take effect at once; the others when the agent reloads, which the
	// config command triggers (a clean stop and start within the same process).
	Live bool
	// ZeroIsDefault: 0 in the file means the built-in default, so the fleet may not set 0
	// (unset goes back to the file) and Get shows "default".
	ZeroIsDefault bool
}

// Settable lists the settings the fleet may change, in documentation order.
func Settable() []Setting {
	s := []Setting{{Key: "log.level", Live: true}}
	for _, k := range []string{"mqtt.metrics_every", "mqtt.gzip", "outbox.max_results", "outbox.max_bytes", "outbox.max_age", "outbox.policy", "outbox.max_events", "shutdown_timeout"} {
		s = append(s, Setting{Key: k})
	}
	// Defaults of these are applied by the part that reads them (agent/link, agent/deploy).
	for _, k := range []string{
		"mqtt.status_every", "mqtt.batch_max", "mqtt.batch_bytes", "mqtt.batch_wait", "mqtt.in_flight",
		"probation.inferences", "probation.duration", "probation.min_samples", "probation.max_error_rate", "probation.max_nonfinite_rate",
	} {
		s = append(s, Setting{Key: k, ZeroIsDefault: true})
	}
	return s
}

// SettingNamed returns the settable setting with this key.
func SettingNamed(key string) (Setting, bool) {
	i := slices.IndexFunc(Settable(), func(s Setting) bool { return s.Key == key })
	if i < 0 {
		return Setting{}, false
	}
	return Settable()[i], true
}

// SettableKeys are the keys of Settable.
func SettableKeys() []string {
	var keys []string
	for _, s := range Settable() {
		keys = append(keys, s.Key)
	}
	return keys
}

// WithOverrides returns a copy of c with set applied (key → value written as in YAML:
// "10s", "256MiB", "true", "debug") and validated. c is not changed. An unknown key, a value
// of the wrong type or a result that fails validation is an error naming the key.
func (c *Config) WithOverrides(set map[string]string) (*Config, error) {
	cp := *c
	keys := make([]string, 0, len(set))
	for k := range set {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		st, ok := SettingNamed(k)
		if !ok {
			return nil, fmt.Errorf("%s cannot be set by the fleet: settable are %s", k, strings.Join(SettableKeys(), ", "))
		}
		if err := overrideNode(k, set[k]).Decode(&cp); err != nil {
			return nil, fmt.Errorf("%s: %q: %v", k, set[k], yamlReason(err))
		}
		if v, _ := cp.raw(k); st.ZeroIsDefault && isZero(v) {
			return nil, fmt.Errorf("%s: %q: 0 means the built-in default here; unset %s to go back to the file's value", k, set[k], k)
		}
	}
	if err := cp.Validate(); err != nil {
		return nil, err
	}
	return &cp, nil
}

// overrideNode is the YAML document {a: {b: value}} for key "a.b".
func overrideNode(key, value string) *yaml.Node {
	n := &yaml.Node{Kind: yaml.ScalarNode, Value: value}
	parts := strings.Split(key, ".")
	for i := len(parts) - 1; i >= 0; i-- {
		n = &yaml.Node{Kind: yaml.MappingNode, Content: []*yaml.Node{{Kind: yaml.ScalarNode, Value: parts[i]}, n}}
	}
	return n
}

// yamlReason drops yaml's "line 0" noise (the document is built, not read from a file).
func yamlReason(err error) string {
	s := err.Error()
	s = strings.TrimPrefix(s, "yaml: unmarshal errors:\n")
	s = strings.ReplaceAll(s, "line 0: ", "")
	return strings.TrimSpace(s)
}

// Get returns the value of a settable key as YAML text ("30s", "true"), or "default" when it
// is 0 and 0 means the built-in default.
func (c *Config) Get(key string) (string, error) {
	v, err := c.raw(key)
	if st, _ := SettingNamed(key); err == nil && st.ZeroIsDefault && isZero(v) {
		return "default", nil
	}
	return v, err
}

func isZero(v string) bool { return v == "0" || v == "0s" }

// raw is the value of a key as YAML text.
func (c *Config) raw(key string) (string, error) {
	var doc yaml.Node
	if err := doc.Encode(c); err != nil {
		return "", err
	}
	n := &doc
	for _, part := range strings.Split(key, ".") {
		var next *yaml.Node
		for i := 0; i+1 < len(n.Content); i += 2 {
			if n.Content[i].Value == part {
				next = n.Content[i+1]
			}
		}
		if next == nil {
			return "", fmt.Errorf("no setting %s", key)
		}
		n = next
	}
	return n.Value, nil
}

// MarshalYAML writes a ByteSize as a plain byte count.
func (b ByteSize) MarshalYAML() (any, error) { return int64(b), nil }

// OverridesFile is where a device keeps the fleet's settings.
func OverridesFile(stateDir string) string { return filepath.Join(stateDir, "config-overrides.json") }

// Overrides is the overrides file's content.
type Overrides struct {
	Schema  string            `json:"schema"`
	Set     map[string]string `json:"set"`
	Updated time.Time         `json:"updated"`
	By      string            `json:"by,omitempty"` // the config command's id
}

// OverridesSchema is the schema of the overrides file.
const OverridesSchema = "edge-agent/config-overrides/v1"

// ReadOverrides reads the overrides file; a missing file is no overrides.
func ReadOverrides(path string) (Overrides, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return Overrides{Schema: OverridesSchema, Set: map[string]string{}}, nil
	}
	if err != nil {
		return Overrides{}, fmt.Errorf("read %s: %w", path, err)
	}
	var o Overrides
	if err := json.Unmarshal(b, &o); err != nil || o.Schema != OverridesSchema {
		return Overrides{}, fmt.Errorf("%s is not an overrides file (%v): delete it to go back to the config file's settings", path, err)
	}
	if o.Set == nil {
		o.Set = map[string]string{}
	}
	return o, nil
}

// WriteOverrides replaces the overrides file atomically and durably.
func WriteOverrides(path string, o Overrides) error {
	o.Schema = OverridesSchema
	b, err := json.MarshalIndent(o, "", "  ")
	if err != nil {
		return err
	}
	return durable.WriteFile(path, b, 0o640)
}
