package link

// The sensor-bus side: the client the mqtt sensor kind reads an existing bus with. It is
// independent of the fleet connection (Link) and keeps paho's own reconnect, which is safe
// here because it only receives.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/edge-agent/edge-agent/hal/sensor"
)

// DialSubscriber connects to spec.Broker for the mqtt sensor kind. It fails when the broker
// cannot be reached or refuses the connection, so the source's runner retries with backoff;
// once connected, paho reconnects by itself and subscriptions are restored on reconnect.
func DialSubscriber(ctx context.Context, spec sensor.MQTTSpec, name string) (sensor.Subscriber, error) {
	id := spec.ClientID
	if id == "" {
		var b [4]byte
		rand.Read(b[:])
		id = "edge-agent-src-" + name + "-" + hex.EncodeToString(b[:])
	}
	s := &subscriber{subs: map[string]sub{}}
	opts := mqtt.NewClientOptions().
		AddBroker(spec.Broker).
		SetClientID(id).
		SetUsername(spec.Username).
		SetPassword(spec.Password).
		SetCleanSession(true).
		SetAutoReconnect(true).
		SetConnectRetry(false).
		SetMaxReconnectInterval(30 * time.Second).
		SetConnectTimeout(10 * time.Second).
		SetKeepAlive(30 * time.Second).
		SetOnConnectHandler(s.resubscribe)
	s.c = mqtt.NewClient(opts)
	tok := s.c.Connect()
	select {
	case <-tok.Done():
	case <-ctx.Done():
		s.c.Disconnect(0)
		return nil, ctx.Err()
	}
	if err := tok.Error(); err != nil {
		return nil, fmt.Errorf("mqtt connect %s: %w", spec.Broker, err)
	}
	return s, nil
}

type sub struct {
	qos     byte
	handler func([]byte)
}

type subscriber struct {
	c      mqtt.Client
	mu     sync.Mutex
	subs   map[string]sub
	closed bool
}

func (s *subscriber) Subscribe(topic string, qos byte, handler func([]byte)) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return errors.New("mqtt subscriber is closed")
	}
	s.subs[topic] = sub{qos, handler}
	s.mu.Unlock()
	tok := s.subscribe(topic, qos, handler)
	if !tok.WaitTimeout(10 * time.Second) {
		return fmt.Errorf("mqtt subscribe %q: no answer from the broker in 10s", topic)
	}
	if err := tok.Error(); err != nil {
		return fmt.Errorf("mqtt subscribe %q: %w", topic, err)
	}
	return nil
}

func (s *subscriber) subscribe(topic string, qos byte, handler func([]byte)) mqtt.Token {
	return s.c.Subscribe(topic, qos, func(_ mqtt.Client, m mqtt.Message) {
		// The lock keeps Close's promise: no handler call after it returns.
		s.mu.Lock()
		defer s.mu.Unlock()
		if !s.closed {
			handler(m.Payload())
		}
	})
}

// resubscribe restores subscriptions after paho reconnects (the session is clean).
func (s *subscriber) resubscribe(mqtt.Client) {
	s.mu.Lock()
	subs := make(map[string]sub, len(s.subs))
	for k, v := range s.subs {
		subs[k] = v
	}
	s.mu.Unlock()
	for topic, v := range subs {
		// Not waited on: paho's connect callback must not block on its own client.
		s.subscribe(topic, v.qos, v.handler)
	}
}

func (s *subscriber) Close() error {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.c.Disconnect(250)
	return nil
}
