// Package mqtt is the "mqtt" source kind: readings published on a topic of an existing bus
// (JSON arrays of numbers, or objects of name → number). It imports nothing from agent/ and
// no MQTT library: the agent hands it a sensor.Dialer built on agent/link's client.
package mqtt

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/edge-agent/edge-agent/hal/sensor"
	"github.com/edge-agent/edge-agent/hal/sensor/internal/numbers"
	"github.com/edge-agent/edge-agent/hal/sensor/internal/pace"
)

func init() { sensor.Kinds.Register("mqtt", New) }

type source struct {
	name   string
	cfg    sensor.MQTTSpec
	dial   sensor.Dialer
	period time.Duration
}

// New validates spec.MQTT; it needs deps.MQTT.
func New(spec sensor.Spec, deps sensor.Deps) (sensor.Source, error) {
	c := spec.MQTT
	if deps.MQTT == nil {
		return nil, fmt.Errorf("source %q: mqtt source needs an MQTT client; not available in this build", spec.Name)
	}
	if c.Broker == "" {
		return nil, fmt.Errorf("source %q: mqtt.broker: must not be empty (e.g. tcp://localhost:1883)", spec.Name)
	}
	if c.Topic == "" {
		return nil, fmt.Errorf("source %q: mqtt.topic: must not be empty", spec.Name)
	}
	if c.QoS > 2 {
		return nil, fmt.Errorf("source %q: mqtt.qos: must be 0, 1 or 2, got %d", spec.Name, c.QoS)
	}
	return &source{name: spec.Name, cfg: c, dial: deps.MQTT, period: spec.Period()}, nil
}

// Run connects, subscribes and emits one frame per valid message until ctx is done.
// Malformed messages are reported and skipped. Messages closer together than the interval
// are dropped.
func (s *source) Run(ctx context.Context, emit sensor.Emit) error {
	sub, err := s.dial(ctx, s.cfg, s.name)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("source %q: mqtt %s: connect: %w", s.name, s.cfg.Broker, err)
	}
	// The client calls the handler from its own goroutines; mu serialises them and, with
	// closed, makes sure nothing is emitted once Run has returned, whatever the client does.
	var (
		mu     sync.Mutex
		closed bool
		gate   = pace.Gate{Period: s.period}
	)
	handler := func(payload []byte) {
		mu.Lock()
		defer mu.Unlock()
		if closed {
			return
		}
		vals, names, err := numbers.Parse(payload)
		if err != nil {
			sensor.Report(ctx, fmt.Errorf("source %q: mqtt topic %s: message skipped: %w", s.name, s.cfg.Topic, err))
			return
		}
		if !gate.Allow(time.Now()) {
			return
		}
		emit(sensor.Frame{Values: vals, Names: names, Ref: s.cfg.Topic})
	}
	shut := func() {
		mu.Lock()
		closed = true
		mu.Unlock()
		sub.Close()
	}
	if err := sub.Subscribe(s.cfg.Topic, s.cfg.QoS, handler); err != nil {
		shut()
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("source %q: mqtt %s: subscribe %q: %w", s.name, s.cfg.Broker, s.cfg.Topic, err)
	}
	<-ctx.Done()
	shut()
	return nil
}
