package config_test

import (
	"strings"
	"testing"

	"github.com/edge-agent/edge-agent/agent/config"
)

func TestStatusDefaultsAndOff(t *testing.T) {
	for _, c := range []struct {
		yml, addr string
	}{
		{"log: {level: info}", "127.0.0.1:8080"},
		{"status: {}", "127.0.0.1:8080"},
		{`status: {listen: ""}`, ""},
		{"status: {listen: off}", ""},
		{`status: {listen: "localhost:9090"}`, "localhost:9090"},
		{`status: {listen: "[::1]:0"}`, "[::1]:0"},
	} {
		cfg, err := config.Parse([]byte(c.yml), "/etc/edge-agent")
		if err != nil {
			t.Errorf("%q: %v", c.yml, err)
			continue
		}
		if got := cfg.Status.Addr(); got != c.addr {
			t.Errorf("%q: listen %q; want %q", c.yml, got, c.addr)
		}
		if cfg.Status.MaxBody != 8<<20 || cfg.Status.History != 300 {
			t.Errorf("%q: max_body %d history %d; want 8MiB and 300", c.yml, cfg.Status.MaxBody, cfg.Status.History)
		}
	}
	cfg, err := config.Parse([]byte("status: {listen: \"0.0.0.0:8080\", token_file: token}"), "/etc/edge-agent")
	if err != nil || cfg.Status.TokenFile != "/etc/edge-agent/token" {
		t.Errorf("token_file relative to the file: %v %q", err, cfg.Status.TokenFile)
	}
}

// A reachable address needs a token file; addresses, sizes and history are checked, each
// error naming its field.
func TestStatusErrorsNameTheField(t *testing.T) {
	for _, c := range []struct{ yml, want string }{
		{`status: {listen: ":8080"}`, "status.listen: \":8080\" is reachable from other machines, so status.token_file is required"},
		{`status: {listen: "0.0.0.0:8080"}`, "status.token_file is required"},
		{`status: {listen: "edge.local:8080"}`, "status.token_file is required"},
		{`status: {listen: "127.0.0.1"}`, "status.listen: \"127.0.0.1\" is not host:port"},
		{`status: {listen: "127.0.0.1:http"}`, "status.listen: port \"http\""},
		{`status: {listen: "127.0.0.1:70000"}`, "within 0..65535"},
		{`status: {max_body: 100}`, "status.max_body"},
		{`status: {history: 5000}`, "status.history: 5000 is outside 10..3600"},
	} {
		_, err := config.Parse([]byte(c.yml), "/etc/edge-agent")
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v; want an error saying %q", c.yml, err, c.want)
		}
	}
}

func TestIsLoopback(t *testing.T) {
	for host, want := range map[string]bool{
		"127.0.0.1": true, "127.1.2.3": true, "::1": true, "localhost": true, "LOCALHOST": true,
		"": false, "0.0.0.0": false, "::": false, "192.0.2.1": false, "edge.local": false,
	} {
		if got := config.IsLoopback(host); got != want {
			t.Errorf("IsLoopback(%q) = %v; want %v", host, got, want)
		}
	}
}
