package config

import (
	"net"
	"strconv"
	"strings"
)

// DefaultStatusListen is where the local HTTP server listens unless status.listen says
// otherwise: loopback only, so nothing off the device reaches it by default.
const DefaultStatusListen = "127.0.0.1:8080"

// Status configures the local HTTP server (status page, /metrics, health, predict API;
// docs/status.md).
type Status struct {
	// Listen is host:port; "" or "off" turns the server off. A pointer, so that a missing
	// key (the default address) differs from an explicit "" (off).
	Listen *string `yaml:"listen"`
	// TokenFile holds the bearer token that state-changing requests must carry. Required
	// when Listen is not a loopback address.
	TokenFile string `yaml:"token_file"`
	// MaxBody caps a request body (predict API), default 8MiB.
	MaxBody ByteSize `yaml:"max_body"`
	// History is how many one-second points the page's charts keep, default 300.
	History int `yaml:"history"`
	// MaxPixels caps one picture sent to the predict API and MaxRequestPixels the pictures of
	// one request (0: the server's defaults, 12 MP and 24 MP); 16-bit pictures count twice.
	MaxPixels        int `yaml:"max_pixels"`
	MaxRequestPixels int `yaml:"max_request_pixels"`
	// TLSCert and TLSKey (PEM files, both or neither) make the server speak HTTPS.
	TLSCert string `yaml:"tls_cert"`
	TLSKey  string `yaml:"tls_key"`
}

// Addr is the address to listen on, "" when the server is off.
func (s Status) Addr() string {
	if s.Listen == nil {
		return DefaultStatusListen
	}
	if a := strings.TrimSpace(*s.Listen); a != "off" {
		return a
	}
	return ""
}

func (s *Status) applyDefaults(c *Config) {
	if s.Listen == nil {
		d := DefaultStatusListen
		s.Listen = &d
	}
	s.TokenFile = c.Resolve(s.TokenFile)
	s.TLSCert, s.TLSKey = c.Resolve(s.TLSCert), c.Resolve(s.TLSKey)
	if s.MaxBody == 0 {
		s.MaxBody = 8 << 20
	}
	if s.History == 0 {
		s.History = 300
	}
}

func (s *Status) validate(bad func(field, format string, a ...any)) {
	if s.MaxBody < 1<<10 || s.MaxBody > 256<<20 {
		bad("status.max_body", "%d bytes is outside 1KiB..256MiB", s.MaxBody)
	}
	if s.MaxPixels < 0 || s.MaxRequestPixels < 0 || s.MaxPixels > 1<<28 || s.MaxRequestPixels > 1<<28 {
		bad("status.max_pixels", "max_pixels and max_request_pixels must be within 0..%d (0: the default)", 1<<28)
	}
	if (s.TLSCert == "") != (s.TLSKey == "") {
		bad("status.tls_cert", "tls_cert and tls_key go together: give both PEM files, or neither")
	}
	if s.History < 10 || s.History > 3600 {
		bad("status.history", "%d is outside 10..3600 (one point per second)", s.History)
	}
	addr := s.Addr()
	if addr == "" {
		return
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		bad("status.listen", "%q is not host:port (%v); use for example 127.0.0.1:8080, or off", addr, err)
		return
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		bad("status.listen", "port %q of %q is not a number within 0..65535", port, addr)
	}
	if !IsLoopback(host) && s.TokenFile == "" {
		bad("status.listen", "%q is reachable from other machines, so status.token_file is required (a bearer token every request must carry there); or listen on 127.0.0.1", addr)
	}
}

// IsLoopback reports whether host (an IP or a name, without port) can only be reached from
// this machine. An empty host means every interface; names other than localhost are taken
// as reachable from elsewhere, since resolving them could say otherwise tomorrow.
func IsLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
