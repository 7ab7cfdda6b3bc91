package config_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/edge-agent/edge-agent/agent/config"
	_ "github.com/edge-agent/edge-agent/hal/sensor/all"
)

func TestDefaults(t *testing.T) {
	c, err := config.Parse([]byte("models:\n  - {name: m, path: m.tflite}\n"), "/etc/edge-agent")
	if err != nil {
		t.Fatal(err)
	}
	m := c.Models[0]
	for _, x := range []struct {
		field     string
		got, want any
	}{
		{"engine", c.Engine, "tflite"},
		{"state_dir", c.StateDir, "/var/lib/edge-agent"},
		{"stdout", *c.Stdout, true},
		{"shutdown_timeout", c.ShutdownTimeout, 10 * time.Second},
		{"models[0].delegate", m.Delegate, "auto"},
		{"models[0].workers", m.Workers, 1},
		{"models[0].queue", m.Queue, 4},
		{"models[0].path (relative to the file)", m.Path, "/etc/edge-agent/m.tflite"},
		{"commands.require_signed", c.SignedCommands(), true},
		{"shared key roles", len(c.SharedKeyRoles()), 0},
	} {
		if x.got != x.want {
			t.Errorf("%s: got %v; want %v", x.field, x.got, x.want)
		}
	}
	if c.Device == "" {
		t.Error("device defaulted to empty; want the host name")
	}
}

func TestErrorsNameTheField(t *testing.T) {
	for _, c := range []struct {
		yaml, want string
	}{
		{"log: {level: loud}", "log.level"},
		{"sources: [{name: a, kind: camera}]", `sources[0].kind: "camera" is not a source kind`},
		{"sources: [{name: a, kind: synthetic}, {name: a, kind: synthetic}]", `sources[1].name: "a" is used twice`},
		{"models: [{name: m}]", "models[0].path: is empty, so the model is served from signed bundles, which needs bundles.trusted_keys"},
		{"trusted_keys: [k]\nmodels: [{name: m, output: {kind: raw}}]", "models[0].input/output: come from the bundle's manifest"},
		{"keep_versions: 1", "keep_versions: 1 is outside 2..100"},
		{"probation: {max_error_rate: 2}", "probation: counts and durations must be ≥ 0 and rates within 0..1"},
		{"models: [{name: m, path: x, delegate: tpu}]", `models[0].delegate: "tpu" is not one of auto, cpu, xnnpack, edgetpu, gpu`},
		{"models: [{name: m, path: x, sources: [cam]}]", `models[0].sources[0]: no source is named "cam"`},
		{"models: [{name: m, path: x, input: {image: {resize: cubic}}}]", "models[0].input.image.resize"},
		{"models: [{name: m, path: x, input: {image: {std: [0]}}}]", "models[0].input.image.std[0]: must not be 0"},
		{"models: [{name: m, path: x, output: {kind: caption}}]", "models[0].output.kind"},
		{"modles: []", "modles (line 1): unknown key; the keys here are bundles, commands,"},
		{"log:\n  level: info\n  colour: red", "log.colour (line 3): unknown key; the keys here are format, level"},
		{"mqtt: {keepalive: soon}", `mqtt.keepalive (line 1): "soon" is not a duration (such as 500ms, 30s, 5m)`},
		{"sources: [{name: a, kind: synthetic, rate: fast}]", `sources[0].rate (line 1): "fast" is not a number`},
		{"sources: [{name: a, kind: synthetic, synthetic: {wave: sine, colour: red}}]", "sources[0].synthetic.colour (line 1): unknown key"},
		{"models: {name: m}", "models (line 1): want a list, not a mapping"},
		{"stdout: maybe", `stdout (line 1): "maybe" is not true or false`},
		{"keep_versions: [3]", "keep_versions (line 1): want a whole number, not a list"},
		{"[1, 2]", "the config (line 1): want a mapping of settings"},
		{"device: a/b", "device"},
		{"outbox: {policy: drop-random}", `outbox.policy: "drop-random" is not one of drop-oldest, drop-newest, block`},
		{"outbox: {max_bytes: 12 parsecs}", `outbox.max_bytes (line 1): "12 parsecs" is not a size`},
		{"outbox: {max_results: -1}", "outbox: max_results and max_events must be ≥ 1"},
		{"mqtt: {password: a, password_file: b}", "mqtt.password_file: set either mqtt.password or mqtt.password_file"},
		{"mqtt: {brokr: x}", "mqtt.brokr (line 1): unknown key"},
	} {
		_, err := config.Parse([]byte(c.yaml), "")
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: err = %v; want it to contain %q", c.yaml, err, c.want)
		}
		if err != nil && (strings.Contains(err.Error(), "type config.") || strings.Contains(err.Error(), "!!")) {
			t.Errorf("%q: err = %v names a Go or YAML type instead of the key", c.yaml, err)
		}
	}
}

// A file with no settings is refused: more often a failed copy than a wish for all defaults.
func TestEmptyFileIsRefused(t *testing.T) {
	for _, yml := range []string{"", "\n\n", "# only a comment\n# and another\n", "---\n", "~\n"} {
		if _, err := config.Parse([]byte(yml), ""); err == nil || !strings.Contains(err.Error(), "empty or holds only comments") {
			t.Errorf("%q: %v; want refused as empty", yml, err)
		}
	}
}

func TestByteSizes(t *testing.T) {
	for _, c := range []struct {
		in   string
		want config.ByteSize
	}{
		{"1048576", 1 << 20}, {"512KiB", 512 << 10}, {"256MiB", 256 << 20}, {"1GiB", 1 << 30},
		{"10MB", 10_000_000}, {"64kB", 64_000}, {"7B", 7}, {" 3 MiB ", 3 << 20},
	} {
		got, err := config.ParseByteSize(c.in)
		if err != nil || got != c.want {
			t.Errorf("ParseByteSize(%q) = %d, %v; want %d", c.in, got, err, c.want)
		}
	}
	for _, bad := range []string{"", "MiB", "-1", "1.5GiB", "1TiB", "9223372036854775807GiB"} {
		if _, err := config.ParseByteSize(bad); err == nil {
			t.Errorf("ParseByteSize(%q) succeeded; want an error", bad)
		}
	}
}

func TestOutboxAndMQTTDefaults(t *testing.T) {
	c, err := config.Parse([]byte("state_dir: /srv/ea\nmqtt: {broker: tcp://b:1883, ca_file: ca.pem}"), "/etc/ea")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []struct {
		name string
		got  any
		want any
	}{
		{"outbox.path", c.Outbox.Path, "/srv/ea/outbox.db"},
		{"outbox.max_results", c.Outbox.MaxResults, 1_000_000},
		{"outbox.max_bytes", c.Outbox.MaxBytes, config.ByteSize(256 << 20)},
		{"outbox.policy", c.Outbox.Policy, "drop-oldest"},
		{"outbox.max_events", c.Outbox.MaxEvents, 10_000},
		{"mqtt.prefix", c.MQTT.Prefix, "edge"},
		{"mqtt.ca_file", c.MQTT.CAFile, "/etc/ea/ca.pem"},
	} {
		if f.got != f.want {
			t.Errorf("%s = %v; want %v", f.name, f.got, f.want)
		}
	}
}

// Each role trusts its own keys; the legacy top-level trusted_keys stands in only for the
// roles without their own, and those are reported as sharing one key set. Relative key
// paths resolve against the file's folder.
func TestKeyRoles(t *testing.T) {
	c, err := config.Parse([]byte(`
trusted_keys: [OLD]
commands: {trusted_keys: [CMD, ./cmd.pub]}
update: {trusted_keys: [BIN]}
`), "/etc/edge-agent")
	if err != nil {
		t.Fatal(err)
	}
	for role, want := range map[string]string{config.RoleCommands: "CMD /etc/edge-agent/cmd.pub", config.RoleBundles: "OLD", config.RoleUpdate: "BIN"} {
		if got := strings.Join(c.Keys(role), " "); got != want {
			t.Errorf("Keys(%s) = %q; want %q", role, got, want)
		}
	}
	if got := c.SharedKeyRoles(); len(got) != 1 || got[0] != config.RoleBundles {
		t.Errorf("SharedKeyRoles = %v; want [bundles]", got)
	}
	legacy, err := config.Parse([]byte("trusted_keys: [OLD]\ncommands: {require_signed: false}\n"), "/")
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(legacy.SharedKeyRoles(), ","); got != "commands,bundles,update" {
		t.Errorf("legacy SharedKeyRoles = %q; want commands,bundles,update", got)
	}
	if legacy.SignedCommands() {
		t.Error("require_signed: false still requires signed commands")
	}
	for _, role := range []string{config.RoleCommands, config.RoleBundles, config.RoleUpdate} {
		if got := legacy.Keys(role); len(got) != 1 || got[0] != "OLD" {
			t.Errorf("legacy Keys(%s) = %v; want [OLD]", role, got)
		}
	}
}

// deploy.allowed_urls defaults to the broker's host (any port, http or https), is empty
// without a broker, and is kept as written when set (an explicit empty list allows nothing).
func TestDeployDefaults(t *testing.T) {
	for yml, want := range map[string]string{
		"mqtt: {broker: tcp://fleet.lan:1883}":                             "[https://fleet.lan http://fleet.lan]",
		"mqtt: {broker: \"ssl://[fd00::5]:8883\"}":                         "[https://[fd00::5] http://[fd00::5]]",
		"log: {level: info}":                                               "[]",
		"mqtt: {broker: tcp://fleet.lan:1883}\ndeploy: {allowed_urls: []}": "[]",
		"deploy: {allowed_urls: [https://files.example.net/edge/]}":        "[https://files.example.net/edge/]",
	} {
		c, err := config.Parse([]byte(yml), "")
		if err != nil {
			t.Fatalf("%q: %v", yml, err)
		}
		if got := fmt.Sprint(c.Deploy.AllowedURLs); got != want {
			t.Errorf("%q: allowed_urls %s; want %s", yml, got, want)
		}
		if c.Deploy.DownloadBudget != 512<<20 {
			t.Errorf("%q: download_budget %d; want 512MiB", yml, c.Deploy.DownloadBudget)
		}
	}
	if _, err := config.Parse([]byte("deploy: {download_budget: 1000}"), ""); err == nil || !strings.Contains(err.Error(), "deploy.download_budget") {
		t.Errorf("a 1000-byte budget: %v; want refused naming deploy.download_budget", err)
	}
}
