// Package fleetclient is the fleet console's MQTT client (edgectl's cmd, deploy, status and
// watch): connect with the agent's TLS settings, subscribe, publish and wait for the broker's
// acknowledgement. It is the console side of the topics in docs/mqtt.md; the device side is
// agent/link.
//
// Imports: the standard library and paho only. It is paho's second importer besides
// agent/link (internal/depcheck has the exception); it must not import agent or agent/*.
package fleetclient

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"os"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/eclipse/paho.mqtt.golang/packets"
)

// AckTimeout bounds the wait for a SUBACK or PUBACK.
const AckTimeout = 10 * time.Second

// Config is the console's connection. Broker is required; the rest is optional.
type Config struct {
	// Broker is tcp://host:1883 or ssl://host:8883 (tls:// and mqtts:// mean ssl://,
	// mqtt:// means tcp://).
	Broker   string
	Username string
	Password string
	// CAFile is a PEM file of the CAs that sign the broker's certificate (default: the
	// system's roots).
	CAFile string
	// CertFile and KeyFile are the console's client certificate, when the broker wants one.
	CertFile string
	KeyFile  string
	// ServerName is the name the broker's certificate must carry (default the broker's host).
	ServerName string
	// ClientID defaults to "edgectl-" and 8 random hex digits.
	ClientID string
}

// Client is a connected console. Its methods are safe for concurrent use.
type Client struct {
	c mqtt.Client
}

// Connect connects to the broker with a clean session and waits for the CONNACK until ctx
// ends (at most 30s).
func Connect(ctx context.Context, cfg Config) (*Client, error) {
	opts, err := options(cfg)
	if err != nil {
		return nil, err
	}
	c := mqtt.NewClient(opts)
	tok := c.Connect()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	select {
	case <-tok.Done():
	case <-ctx.Done():
		c.Disconnect(0)
		return nil, fmt.Errorf("connect to %s: no answer from the broker (%w): check the broker address and the network", cfg.Broker, ctx.Err())
	}
	if err := tok.Error(); err != nil {
		return nil, fmt.Errorf("connect to %s: %w: %s", cfg.Broker, err, hint(err))
	}
	return &Client{c: c}, nil
}

// hint says what to check for a connect error.
func hint(err error) string {
	switch {
	case errors.Is(err, packets.ErrorRefusedBadUsernameOrPassword), errors.Is(err, packets.ErrorRefusedNotAuthorised):
		return "check --username and --password"
	case errors.As(err, new(x509.UnknownAuthorityError)):
		return "the broker's certificate is not signed by a trusted CA; check --ca-file"
	case errors.As(err, new(x509.HostnameError)):
		return "the broker's certificate is not valid for this host; check --server-name"
	}
	return "check the broker address, the TLS settings (--ca-file, --cert-file, --key-file, --server-name) and the credentials"
}

func options(cfg Config) (*mqtt.ClientOptions, error) {
	if cfg.Broker == "" {
		return nil, errors.New("no broker: set --broker, EDGECTL_BROKER or broker in the config file (tcp://host:1883 or ssl://host:8883)")
	}
	u, err := url.Parse(cfg.Broker)
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("broker %q is not a URL: write tcp://host:1883 or ssl://host:8883", cfg.Broker)
	}
	tlsWanted := false
	switch u.Scheme {
	case "tcp", "mqtt":
		u.Scheme = "tcp"
		if u.Port() == "" {
			u.Host += ":1883"
		}
	case "ssl", "tls", "mqtts":
		u.Scheme, tlsWanted = "ssl", true
		if u.Port() == "" {
			u.Host += ":8883"
		}
	default:
		return nil, fmt.Errorf("broker %q: scheme %q is not supported: use tcp://host:1883 or ssl://host:8883", cfg.Broker, u.Scheme)
	}
	if !tlsWanted && (cfg.CAFile != "" || cfg.CertFile != "" || cfg.KeyFile != "" || cfg.ServerName != "") {
		return nil, fmt.Errorf("TLS settings are given but broker %s is not TLS: use ssl://host:8883 or drop --ca-file, --cert-file, --key-file, --server-name", cfg.Broker)
	}
	id := cfg.ClientID
	if id == "" {
		var b [4]byte
		rand.Read(b[:])
		id = "edgectl-" + hex.EncodeToString(b[:])
	}
	opts := mqtt.NewClientOptions().AddBroker(u.String()).SetClientID(id).SetProtocolVersion(4).
		SetCleanSession(true).SetAutoReconnect(false).SetConnectRetry(false).
		SetConnectTimeout(15 * time.Second).SetOrderMatters(true)
	if cfg.Username != "" {
		opts.SetUsername(cfg.Username).SetPassword(cfg.Password)
	}
	if tlsWanted {
		tc, err := tlsConfig(cfg, u.Hostname())
		if err != nil {
			return nil, err
		}
		opts.SetTLSConfig(tc)
	}
	return opts, nil
}

// tlsConfig builds the TLS settings as the agent does: CA file, optional client pair.
func tlsConfig(cfg Config, host string) (*tls.Config, error) {
	tc := &tls.Config{ServerName: cfg.ServerName, MinVersion: tls.VersionTLS12}
	if tc.ServerName == "" {
		tc.ServerName = host
	}
	if cfg.CAFile != "" {
		pem, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("CA file: %w: check --ca-file", err)
		}
		tc.RootCAs = x509.NewCertPool()
		if !tc.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("CA file %s holds no PEM certificate: check --ca-file", cfg.CAFile)
		}
	}
	switch {
	case (cfg.CertFile == "") != (cfg.KeyFile == ""):
		return nil, errors.New("--cert-file and --key-file go together: set both for a client certificate, or neither")
	case cfg.CertFile != "":
		cert, err := tls.LoadX509KeyPair(cfg.CertFile, cfg.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("client certificate %s / key %s: %w: check --cert-file and --key-file", cfg.CertFile, cfg.KeyFile, err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc, nil
}

// Subscribe subscribes to topic (wildcards allowed) with QoS 1 and waits for the SUBACK.
// handle is called for every message, one at a time in arrival order; it may block, which
// holds back the next messages.
func (c *Client) Subscribe(topic string, handle func(topic string, payload []byte)) error {
	tok := c.c.Subscribe(topic, 1, func(_ mqtt.Client, m mqtt.Message) { handle(m.Topic(), m.Payload()) })
	if !tok.WaitTimeout(AckTimeout) {
		return fmt.Errorf("subscribe %s: no SUBACK within %v: check the broker", topic, AckTimeout)
	}
	if err := tok.Error(); err != nil {
		return fmt.Errorf("subscribe %s: %w: check the broker's ACL for this user", topic, err)
	}
	return nil
}

// Publish sends payload and, for QoS 1 or 2, waits for the broker's acknowledgement (at most
// AckTimeout).
func (c *Client) Publish(topic string, qos byte, retained bool, payload []byte) error {
	tok := c.c.Publish(topic, qos, retained, payload)
	if !tok.WaitTimeout(AckTimeout) {
		return fmt.Errorf("publish %s: no acknowledgement within %v: check the broker and the connection", topic, AckTimeout)
	}
	if err := tok.Error(); err != nil {
		return fmt.Errorf("publish %s: %w", topic, err)
	}
	return nil
}

// Close disconnects, giving in-flight work 250ms. After Close no handler is called.
func (c *Client) Close() {
	c.c.Disconnect(250)
}
