package config

import (
	"os"
	"strings"
	"testing"
	"time"
)

func TestOverrides(t *testing.T) {
	base, err := Parse([]byte("device: d1\nstate_dir: /tmp/x\nmqtt: {metrics_every: 30s}\n"), "")
	if err != nil {
		t.Fatal(err)
	}
	eff, err := base.WithOverrides(map[string]string{"mqtt.metrics_every": "5s", "outbox.max_bytes": "64MiB", "log.level": "debug", "mqtt.gzip": "true"})
	if err != nil {
		t.Fatal(err)
	}
	if eff.MQTT.MetricsEvery != 5*time.Second || eff.Outbox.MaxBytes != 64<<20 || eff.Log.Level != "debug" || !eff.MQTT.Gzip {
		t.Errorf("overrides not applied: %+v %+v %+v", eff.MQTT, eff.Outbox, eff.Log)
	}
	if base.MQTT.MetricsEvery != 30*time.Second || base.Log.Level != "info" || base.MQTT.Gzip {
		t.Error("WithOverrides changed the base config")
	}
	if eff.Device != "d1" || eff.Outbox.MaxResults != 1_000_000 {
		t.Error("settings not overridden were lost")
	}
	for key, want := range map[string]string{"mqtt.metrics_every": "5s", "outbox.max_bytes": "67108864", "log.level": "debug", "mqtt.gzip": "true", "outbox.policy": "drop-oldest", "mqtt.batch_max": "default", "outbox.max_age": "0s"} {
		if got, err := eff.Get(key); err != nil || got != want {
			t.Errorf("Get(%s) = %q, %v; want %q", key, got, err, want)
		}
	}
	for set, wantErr := range map[string]string{
		"mqtt.broker=tcp://evil:1883":   "cannot be set by the fleet",
		"commands.require_signed=false": "cannot be set by the fleet",
		"trusted_keys=x":                "cannot be set by the fleet",
		"outbox.policy=keep-everything": "outbox.policy",
		"outbox.max_results=lots":       "outbox.max_results",
		"log.level=loud":                "log.level",
		"probation.max_error_rate=2":    "probation",
		"mqtt.metrics_every=soon":       "mqtt.metrics_every",
		"outbox.max_bytes=12 parsecs":   "outbox.max_bytes",
	} {
		k, v, _ := strings.Cut(set, "=")
		if _, err := base.WithOverrides(map[string]string{k: v}); err == nil || !strings.Contains(err.Error(), wantErr) {
			t.Errorf("%s: %v; want an error naming %q", set, err, wantErr)
		}
	}
}

func TestOverridesFile(t *testing.T) {
	dir := t.TempDir()
	path := OverridesFile(dir)
	o, err := ReadOverrides(path)
	if err != nil || len(o.Set) != 0 {
		t.Fatalf("missing file: %+v %v; want no overrides", o, err)
	}
	if err := WriteOverrides(path, Overrides{Set: map[string]string{"log.level": "warn"}, By: "c1"}); err != nil {
		t.Fatal(err)
	}
	o, err = ReadOverrides(path)
	if err != nil || o.Set["log.level"] != "warn" || o.By != "c1" || o.Schema != OverridesSchema {
		t.Fatalf("read back %+v %v", o, err)
	}
	if _, err := os.Stat(path + ".tmp"); !os.IsNotExist(err) {
		t.Error("the temporary file was left behind")
	}
	os.WriteFile(path, []byte("{garbage"), 0o640)
	if _, err := ReadOverrides(path); err == nil || !strings.Contains(err.Error(), "delete it") {
		t.Errorf("damaged file: %v; want an error saying to delete it", err)
	}
}
