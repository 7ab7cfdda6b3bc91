package fleetclient

// A long-lived connection for the fleet server (edgectl serve): a fixed client id, an
// optional persistent session, reconnection, and the subscriptions renewed on every
// connect. The console commands keep using Connect (clean session, no reconnect).

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// ServiceOptions configure ConnectService.
type ServiceOptions struct {
	// ClientID is the client id; it must be unique on the broker and stable across
	// restarts for a persistent session to be found again.
	ClientID string
	// Persistent keeps the session (subscriptions, and QoS 1 messages queued while the
	// client is away) on the broker; else every connect starts clean.
	Persistent bool
	// Topics are subscribed with QoS 1 on every connect (wildcards and $share/ allowed).
	Topics []string
	// Handle receives every message, one at a time in arrival order — also those a
	// persistent session delivers right after the connect, before the subscriptions are
	// renewed. It must return quickly and never wait for this client's own publishes: the
	// acknowledgements come in behind the message it is handling.
	Handle func(topic string, payload []byte)
	// MaxReconnectWait bounds the backoff between reconnect attempts (default 10s).
	MaxReconnectWait time.Duration
}

// Service is a connection that reconnects by itself. Publish returns an error while it is
// disconnected (after AckTimeout at most).
type Service struct {
	*Client
	connects atomic.Uint64
	lost     atomic.Uint64
	up       atomic.Bool
}

// ConnectService connects (waiting until ctx ends, at most 30s), subscribes to the topics
// and returns once the broker acknowledged them.
func ConnectService(ctx context.Context, cfg Config, so ServiceOptions) (*Service, error) {
	if so.ClientID == "" || so.Handle == nil {
		return nil, errors.New("fleetclient: a service connection needs a client id and a handler")
	}
	if so.MaxReconnectWait <= 0 {
		so.MaxReconnectWait = 10 * time.Second
	}
	cfg.ClientID = so.ClientID
	opts, err := options(cfg)
	if err != nil {
		return nil, err
	}
	s := &Service{}
	handle := func(_ mqtt.Client, m mqtt.Message) { so.Handle(m.Topic(), m.Payload()) }
	filters := make(map[string]byte, len(so.Topics))
	for _, t := range so.Topics {
		filters[t] = 1
	}
	opts.SetCleanSession(!so.Persistent).SetAutoReconnect(true).SetMaxReconnectInterval(so.MaxReconnectWait).
		SetDefaultPublishHandler(handle).
		SetOnConnectHandler(func(c mqtt.Client) {
			s.up.Store(true)
			if s.connects.Add(1) > 1 && len(filters) > 0 {
				c.SubscribeMultiple(filters, handle) // a reconnect: renew them (a clean session lost them)
			}
		}).
		SetConnectionLostHandler(func(mqtt.Client, error) { s.up.Store(false); s.lost.Add(1) })
	c := mqtt.NewClient(opts)
	tok := c.Connect()
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	select {
	case <-tok.Done():
	case <-wctx.Done():
		c.Disconnect(0)
		return nil, fmt.Errorf("connect to %s: no answer from the broker (%w): check the broker address and the network", cfg.Broker, wctx.Err())
	}
	if err := tok.Error(); err != nil {
		c.Disconnect(0)
		return nil, fmt.Errorf("connect to %s: %w: %s", cfg.Broker, err, hint(err))
	}
	s.Client = &Client{c: c}
	if len(filters) > 0 {
		st := c.SubscribeMultiple(filters, handle)
		if !st.WaitTimeout(AckTimeout) {
			c.Disconnect(0)
			return nil, fmt.Errorf("subscribe %v: no SUBACK within %v: check the broker", so.Topics, AckTimeout)
		}
		if err := st.Error(); err != nil {
			c.Disconnect(0)
			return nil, fmt.Errorf("subscribe %v: %w: check the broker's ACL for this user", so.Topics, err)
		}
		if sub, ok := st.(*mqtt.SubscribeToken); ok {
			for t, q := range sub.Result() {
				if q == 0x80 {
					c.Disconnect(0)
					return nil, fmt.Errorf("subscribe %s: refused by the broker: check its ACL for this user (and, for $share/, that it supports shared subscriptions)", t)
				}
			}
		}
	}
	return s, nil
}

// Connected tells whether the connection is up now.
func (s *Service) Connected() bool { return s.up.Load() }

// Reconnects is how many times the connection was lost.
func (s *Service) Reconnects() uint64 { return s.lost.Load() }
