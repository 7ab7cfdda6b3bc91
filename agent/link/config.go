package link

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// Config is the fleet connection. Zero values take the defaults noted on each field. Errors
// from Validate name the field as the agent's YAML spells it (mqtt.broker, device, …).
type Config struct {
	// Broker is tcp://host:1883 or ssl://host:8883 (tls:// and mqtts:// mean ssl://, mqtt://
	// means tcp://; the port defaults to 1883 or 8883). "" is offline mode: Run only waits
	// and the queues keep buffering.
	Broker string
	// Device is the MQTT client id and the topic segment after Prefix: non-empty, at most
	// 64 bytes, without '+', '#' or '/'.
	Device string
	// Prefix is the first topic level(s), default "edge"; no wildcards, no leading or
	// trailing '/'.
	Prefix string
	// Groups are the fleet groups this device belongs to: it takes commands on
	// <prefix>/group/<g>/cmd for each, besides <prefix>/<device>/cmd and <prefix>/all/cmd.
	Groups             []string
	Username, Password string
	// CAFile verifies the broker (the system roots when empty). CertFile and KeyFile are the
	// client certificate for mutual TLS (both or neither). ServerName overrides the name the
	// broker's certificate must hold (default: the host in Broker).
	CAFile, CertFile, KeyFile string
	ServerName                string
	KeepAlive                 time.Duration // default 30s; 1s..18h
	ConnectTimeout            time.Duration // TCP, TLS, CONNACK, and again for the write check; default 10s
	// BackoffMin and BackoffMax bound the reconnect delay (defaults 1s and 2m): full jitter,
	// rand[0, min(max, min·2ⁿ)] but never below BackoffMin/2; n restarts after a connection
	// that lasted more than a minute.
	BackoffMin, BackoffMax time.Duration
	// InFlight is how many messages per stream are published and awaiting PUBACK at once
	// (default 8). It bounds the duplicates after an outage: at most InFlight×BatchMax
	// records per stream are sent again.
	InFlight   int
	BatchMax   int           // records per message (default 100)
	BatchBytes int           // record bytes per message before gzip (default 256 KiB); one larger record is sent alone
	BatchWait  time.Duration // wait for more records to fill a message (default 200ms; negative: never wait); a backlog is sent at once
	// Gzip compresses each message; consumers tell by the gzip magic bytes 0x1f 0x8b, which
	// JSON never starts with.
	Gzip bool
	// AckTimeout: a PUBACK slower than this means the connection is broken; it is dropped
	// and made again (default 30s).
	AckTimeout  time.Duration
	StatusEvery time.Duration // how often the retained online status is refreshed (default 60s)
}

// Defaults.
const (
	DefaultPrefix         = "edge"
	DefaultKeepAlive      = 30 * time.Second
	DefaultConnectTimeout = 10 * time.Second
	DefaultBackoffMin     = time.Second
	DefaultBackoffMax     = 2 * time.Minute
	DefaultInFlight       = 8
	DefaultBatchMax       = 100
	DefaultBatchBytes     = 256 << 10
	DefaultBatchWait      = 200 * time.Millisecond
	DefaultAckTimeout     = 30 * time.Second
	DefaultStatusEvery    = 60 * time.Second
)

// Limits a configuration must stay within.
const (
	maxDeviceBytes = 64
	maxInFlight    = 1000    // paho has 65535 packet ids for all streams together
	maxBatchMax    = 100_000 // records per message
	maxBatchBytes  = 64 << 20
	maxKeepAlive   = 65535 * time.Second // a 16-bit count of seconds in CONNECT
)

func (c Config) withDefaults() Config {
	def := func(v *time.Duration, d time.Duration) {
		if *v == 0 {
			*v = d
		}
	}
	if c.Prefix == "" {
		c.Prefix = DefaultPrefix
	}
	def(&c.KeepAlive, DefaultKeepAlive)
	def(&c.ConnectTimeout, DefaultConnectTimeout)
	def(&c.BackoffMin, DefaultBackoffMin)
	def(&c.BackoffMax, DefaultBackoffMax)
	def(&c.BatchWait, DefaultBatchWait)
	def(&c.AckTimeout, DefaultAckTimeout)
	def(&c.StatusEvery, DefaultStatusEvery)
	if c.InFlight == 0 {
		c.InFlight = DefaultInFlight
	}
	if c.BatchMax == 0 {
		c.BatchMax = DefaultBatchMax
	}
	if c.BatchBytes == 0 {
		c.BatchBytes = DefaultBatchBytes
	}
	return c
}

// Validate checks the configuration, loads and parses the TLS files, and reports every
// problem, each naming its field.
func (c Config) Validate() error {
	_, err := c.resolve()
	return err
}

// resolved is a validated Config with defaults applied, ready to dial.
type resolved struct {
	Config
	url  *url.URL    // nil in offline mode; scheme "tcp" or "ssl", host:port
	tls  *tls.Config // nil for tcp://
	cert *tls.Certificate
}

func (c Config) resolve() (*resolved, error) {
	c = c.withDefaults()
	r := &resolved{Config: c}
	var errs []error
	bad := func(field, format string, a ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", field, fmt.Sprintf(format, a...)))
	}

	switch {
	case c.Device == "":
		bad("device", "is empty; it is the MQTT client id and part of every topic")
	case len(c.Device) > maxDeviceBytes:
		bad("device", "%q is %d bytes; at most %d fit in the MQTT client id", c.Device, len(c.Device), maxDeviceBytes)
	case strings.ContainsAny(c.Device, "+#/\x00") || !utf8.ValidString(c.Device):
		bad("device", "%q must be UTF-8 without '+', '#', '/' (it is one MQTT topic level)", c.Device)
	}
	switch {
	case strings.ContainsAny(c.Prefix, "+#\x00") || !utf8.ValidString(c.Prefix):
		bad("mqtt.prefix", "%q must be UTF-8 without the wildcards '+' and '#'", c.Prefix)
	case strings.HasPrefix(c.Prefix, "/") || strings.HasSuffix(c.Prefix, "/") || strings.Contains(c.Prefix, "//"):
		bad("mqtt.prefix", "%q must not start or end with '/' or hold an empty level", c.Prefix)
	case strings.HasPrefix(c.Prefix, "$"):
		bad("mqtt.prefix", "%q must not start with '$' (brokers reserve those topics)", c.Prefix)
	}
	for i, g := range c.Groups {
		if g == "" || len(g) > maxDeviceBytes || strings.ContainsAny(g, "+#/\x00") || !utf8.ValidString(g) {
			bad(fmt.Sprintf("mqtt.groups[%d]", i), "%q must be 1-%d bytes of UTF-8 without '+', '#', '/' (it is one MQTT topic level)", g, maxDeviceBytes)
		}
	}
	if c.Password != "" && c.Username == "" {
		bad("mqtt.username", "is empty but mqtt.password is set; MQTT 3.1.1 sends a password only with a user name")
	}

	tlsWanted := false
	if c.Broker != "" {
		u, err := parseBroker(c.Broker)
		if err != nil {
			bad("mqtt.broker", "%v", err)
		} else {
			r.url = u
			tlsWanted = u.Scheme == "ssl"
		}
	}
	if r.url != nil && !tlsWanted {
		for _, f := range []struct{ name, v string }{{"mqtt.ca_file", c.CAFile}, {"mqtt.cert_file", c.CertFile}, {"mqtt.key_file", c.KeyFile}, {"mqtt.server_name", c.ServerName}} {
			if f.v != "" {
				bad(f.name, "is set but mqtt.broker %s is not TLS; use ssl://host:8883 or remove it", c.Broker)
			}
		}
	}
	// TLS files are checked even in offline mode, so a wrong path shows up before the
	// broker is configured.
	var roots *x509.CertPool
	if c.CAFile != "" {
		pem, err := os.ReadFile(c.CAFile)
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("mqtt.ca_file: %w", err))
		default:
			roots = x509.NewCertPool()
			if !roots.AppendCertsFromPEM(pem) {
				bad("mqtt.ca_file", "%s holds no PEM certificate", c.CAFile)
			}
		}
	}
	switch {
	case (c.CertFile == "") != (c.KeyFile == ""):
		bad("mqtt.cert_file", "mqtt.cert_file and mqtt.key_file go together: set both for a client certificate, or neither")
	case c.CertFile != "":
		cert, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
		if err != nil {
			errs = append(errs, fmt.Errorf("mqtt.cert_file/mqtt.key_file: %w", err))
		} else {
			r.cert = &cert
		}
	}
	if tlsWanted {
		name := c.ServerName
		if name == "" {
			name = r.url.Hostname()
		}
		r.tls = &tls.Config{RootCAs: roots, ServerName: name, MinVersion: tls.VersionTLS12}
	}

	dur := func(field string, v, lo, hi time.Duration) {
		if v < lo || v > hi {
			bad(field, "%v is outside %v..%v", v, lo, hi)
		}
	}
	dur("mqtt.keepalive", c.KeepAlive, time.Second, maxKeepAlive)
	dur("mqtt.connect_timeout", c.ConnectTimeout, 100*time.Millisecond, 10*time.Minute)
	dur("mqtt.backoff_min", c.BackoffMin, time.Millisecond, time.Hour)
	dur("mqtt.backoff_max", c.BackoffMax, time.Millisecond, 24*time.Hour)
	if c.BackoffMax < c.BackoffMin {
		bad("mqtt.backoff_max", "%v is below mqtt.backoff_min %v", c.BackoffMax, c.BackoffMin)
	}
	dur("mqtt.batch_wait", c.BatchWait, -1<<62, time.Minute)
	dur("mqtt.ack_timeout", c.AckTimeout, 100*time.Millisecond, time.Hour)
	dur("mqtt.status_every", c.StatusEvery, time.Second, 24*time.Hour)
	num := func(field string, v, lo, hi int) {
		if v < lo || v > hi {
			bad(field, "%d is outside %d..%d", v, lo, hi)
		}
	}
	num("mqtt.in_flight", c.InFlight, 1, maxInFlight)
	num("mqtt.batch_max", c.BatchMax, 1, maxBatchMax)
	num("mqtt.batch_bytes", c.BatchBytes, 1, maxBatchBytes)
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return r, nil
}

// parseBroker accepts tcp://, mqtt://, ssl://, tls:// and mqtts:// URLs and returns one with
// scheme tcp or ssl and an explicit port.
func parseBroker(s string) (*url.URL, error) {
	u, err := url.Parse(s)
	if err != nil {
		return nil, fmt.Errorf("%q is not a URL (%v); write tcp://host:1883 or ssl://host:8883", s, err)
	}
	port := ""
	switch strings.ToLower(u.Scheme) {
	case "tcp", "mqtt":
		u.Scheme, port = "tcp", "1883"
	case "ssl", "tls", "mqtts":
		u.Scheme, port = "ssl", "8883"
	case "ws", "wss":
		return nil, fmt.Errorf("%q: MQTT over websockets is not supported; use tcp://host:1883 or ssl://host:8883", s)
	default:
		return nil, fmt.Errorf("%q: want tcp://host:1883 or ssl://host:8883 (also tls://, mqtts://)", s)
	}
	switch {
	case u.User != nil:
		return nil, fmt.Errorf("%q holds credentials; put them in mqtt.username and mqtt.password", s)
	case u.Hostname() == "":
		return nil, fmt.Errorf("%q has no host", s)
	case (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "":
		return nil, fmt.Errorf("%q: only scheme://host:port is used; remove the path or query", s)
	}
	if p := u.Port(); p != "" {
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > 65535 {
			return nil, fmt.Errorf("%q: port %q is not 1..65535", s, p)
		}
		port = p
	}
	return &url.URL{Scheme: u.Scheme, Host: net.JoinHostPort(u.Hostname(), port)}, nil
}
