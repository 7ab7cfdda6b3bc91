package link_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edge-agent/edge-agent/agent/link"
	"github.com/edge-agent/edge-agent/internal/testenv"
)

func TestValidateNamesTheField(t *testing.T) {
	pki := testenv.NewCertSet(t)
	cert, key := pki.Client("dev1")
	notPEM := filepath.Join(t.TempDir(), "ca.txt")
	os.WriteFile(notPEM, []byte("hello"), 0o600)
	missing := filepath.Join(t.TempDir(), "nope.pem")
	base := link.Config{Broker: "ssl://broker.example.com", Device: "dev1"}

	cases := []struct {
		name   string
		change func(*link.Config)
		want   string // "" means valid
	}{
		{"defaults", func(c *link.Config) {}, ""},
		{"offline mode", func(c *link.Config) { c.Broker = "" }, ""},
		{"plain with default port", func(c *link.Config) { c.Broker = "tcp://10.0.0.1" }, ""},
		{"mqtt:// and mqtts://", func(c *link.Config) { c.Broker = "mqtts://broker:8884" }, ""},
		{"full TLS", func(c *link.Config) { c.CAFile, c.CertFile, c.KeyFile, c.ServerName = pki.CAFile, cert, key, "broker" }, ""},
		{"no device", func(c *link.Config) { c.Device = "" }, "device: is empty"},
		{"device with slash", func(c *link.Config) { c.Device = "a/b" }, "device:"},
		{"device with wildcard", func(c *link.Config) { c.Device = "dev+" }, "device:"},
		{"device too long", func(c *link.Config) { c.Device = strings.Repeat("d", 65) }, "device:"},
		{"prefix with wildcard", func(c *link.Config) { c.Prefix = "edge/#" }, "mqtt.prefix:"},
		{"prefix with leading slash", func(c *link.Config) { c.Prefix = "/edge" }, "mqtt.prefix:"},
		{"prefix with trailing slash", func(c *link.Config) { c.Prefix = "edge/" }, "mqtt.prefix:"},
		{"prefix with $", func(c *link.Config) { c.Prefix = "$SYS" }, "mqtt.prefix:"},
		{"broker scheme", func(c *link.Config) { c.Broker = "http://broker" }, "mqtt.broker:"},
		{"broker websockets", func(c *link.Config) { c.Broker = "wss://broker" }, "mqtt.broker:"},
		{"broker without host", func(c *link.Config) { c.Broker = "tcp://" }, "mqtt.broker:"},
		{"broker with credentials", func(c *link.Config) { c.Broker = "tcp://u:p@broker" }, "mqtt.broker:"},
		{"broker bad port", func(c *link.Config) { c.Broker = "tcp://broker:99999" }, "mqtt.broker:"},
		{"broker with a path", func(c *link.Config) { c.Broker = "tcp://broker/x" }, "mqtt.broker:"},
		{"password without user", func(c *link.Config) { c.Password = "x" }, "mqtt.username:"},
		{"missing CA file", func(c *link.Config) { c.CAFile = missing }, "mqtt.ca_file: open " + missing + ": no such file"},
		{"CA file not PEM", func(c *link.Config) { c.CAFile = notPEM }, "mqtt.ca_file:"},
		{"cert without key", func(c *link.Config) { c.CertFile = cert }, "mqtt.cert_file:"},
		{"key without cert", func(c *link.Config) { c.KeyFile = key }, "mqtt.cert_file:"},
		{"missing cert file", func(c *link.Config) { c.CertFile, c.KeyFile = missing, key }, "mqtt.cert_file/mqtt.key_file: open " + missing},
		{"cert and key that do not match", func(c *link.Config) { c.CertFile, c.KeyFile = cert, pki.ServerKey }, "mqtt.cert_file/mqtt.key_file:"},
		{"TLS file with tcp://", func(c *link.Config) { c.Broker, c.CAFile = "tcp://broker", pki.CAFile }, "mqtt.ca_file: is set but mqtt.broker tcp://broker is not TLS"},
		{"server name with tcp://", func(c *link.Config) { c.Broker, c.ServerName = "tcp://broker", "x" }, "mqtt.server_name:"},
		{"keepalive too short", func(c *link.Config) { c.KeepAlive = 500 * time.Millisecond }, "mqtt.keepalive:"},
		{"negative connect timeout", func(c *link.Config) { c.ConnectTimeout = -time.Second }, "mqtt.connect_timeout:"},
		{"backoff max below min", func(c *link.Config) { c.BackoffMin, c.BackoffMax = time.Minute, time.Second }, "mqtt.backoff_max:"},
		{"negative backoff", func(c *link.Config) { c.BackoffMin = -time.Second }, "mqtt.backoff_min:"},
		{"in flight too many", func(c *link.Config) { c.InFlight = 5000 }, "mqtt.in_flight:"},
		{"negative batch max", func(c *link.Config) { c.BatchMax = -1 }, "mqtt.batch_max:"},
		{"negative batch bytes", func(c *link.Config) { c.BatchBytes = -1 }, "mqtt.batch_bytes:"},
		{"batch wait too long", func(c *link.Config) { c.BatchWait = time.Hour }, "mqtt.batch_wait:"},
		{"negative ack timeout", func(c *link.Config) { c.AckTimeout = -1 }, "mqtt.ack_timeout:"},
		{"status every too often", func(c *link.Config) { c.StatusEvery = time.Millisecond }, "mqtt.status_every:"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := base
			tc.change(&c)
			err := c.Validate()
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("Validate() = %v; want nil", err)
			case tc.want != "" && err == nil:
				t.Errorf("Validate() = nil; want an error with %q", tc.want)
			case tc.want != "" && !strings.Contains(err.Error(), tc.want):
				t.Errorf("Validate() = %v; want it to say %q", err, tc.want)
			}
		})
	}
}

// Validate reports every problem at once, not only the first.
func TestValidateReportsEverything(t *testing.T) {
	err := link.Config{Broker: "http://x", Prefix: "/p", InFlight: -1}.Validate()
	for _, want := range []string{"device:", "mqtt.broker:", "mqtt.prefix:", "mqtt.in_flight:"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate() = %v; want it to name %s", err, want)
		}
	}
}

func TestNewChecksStreamsAndNormalisesTheBroker(t *testing.T) {
	q := newMemQueue()
	for _, tc := range []struct {
		name    string
		streams []link.Stream
		want    string
	}{
		{"bad name", []link.Stream{{Name: "Results/x", Schema: "s", Queue: q}}, "name must be"},
		{"reserved name", []link.Stream{{Name: "status", Schema: "s", Queue: q}}, "the link uses itself"},
		{"twice", []link.Stream{{Name: "a", Schema: "s", Queue: q}, {Name: "a", Schema: "s", Queue: q}}, "declared twice"},
		{"no schema", []link.Stream{{Name: "a", Queue: q}}, "no schema"},
		{"no queue", []link.Stream{{Name: "a", Schema: "s"}}, "no queue"},
	} {
		_, err := link.New(link.Config{Device: "d"}, link.Options{Streams: tc.streams})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: New() = %v; want an error saying %q", tc.name, err, tc.want)
		}
	}
	if _, err := link.New(link.Config{}, link.Options{}); err == nil || !strings.Contains(err.Error(), "device") {
		t.Errorf("New with an invalid config = %v; want the Validate error", err)
	}
	for in, want := range map[string]string{
		"tls://127.0.0.1":     "ssl://127.0.0.1:8883",
		"mqtts://host:8884":   "ssl://host:8884",
		"MQTT://host":         "tcp://host:1883",
		"tcp://[::1]:1884":    "tcp://[::1]:1884",
		"ssl://broker.local/": "ssl://broker.local:8883",
	} {
		l, err := link.New(link.Config{Broker: in, Device: "d"}, link.Options{})
		if err != nil {
			t.Errorf("New(%q): %v", in, err)
			continue
		}
		if got := l.Stats().Broker; got != want {
			t.Errorf("broker %q became %q; want %q", in, got, want)
		}
		if got := l.Topic("results"); got != "edge/d/results" {
			t.Errorf("Topic = %q; want edge/d/results", got)
		}
	}
}
