package mqtt_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edge-agent/edge-agent/hal/sensor"
	"github.com/edge-agent/edge-agent/hal/sensor/internal/sensortest"
)

// fakeSubscriber stands in for agent/link's paho client (which is tested against a real
// Mosquitto broker there); here it only lets the test deliver payloads to the handler.
type fakeSubscriber struct {
	mu       sync.Mutex
	topic    string
	qos      byte
	handler  func([]byte)
	closed   bool
	subErr   error
	subbed   chan struct{}
	closedCh chan struct{}
}

func newFake() *fakeSubscriber {
	return &fakeSubscriber{subbed: make(chan struct{}), closedCh: make(chan struct{})}
}

func (f *fakeSubscriber) Subscribe(topic string, qos byte, h func([]byte)) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.subErr != nil {
		return f.subErr
	}
	f.topic, f.qos, f.handler = topic, qos, h
	close(f.subbed)
	return nil
}

func (f *fakeSubscriber) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.closed {
		f.closed = true
		close(f.closedCh)
	}
	return nil
}

// deliver calls the handler like a client's network goroutine would, even after Close, to
// check that the source itself refuses late messages.
func (f *fakeSubscriber) deliver(payload string) {
	f.mu.Lock()
	h := f.handler
	f.mu.Unlock()
	h([]byte(payload))
}

func dialer(f *fakeSubscriber, gotName *string) sensor.Dialer {
	return func(ctx context.Context, spec sensor.MQTTSpec, name string) (sensor.Subscriber, error) {
		*gotName = name
		return f, nil
	}
}

func TestDecodesPayloads(t *testing.T) {
	sensortest.NoLeaks(t)
	fake := newFake()
	var name string
	spec := sensor.Spec{Name: "bus", Kind: "mqtt", MQTT: sensor.MQTTSpec{Broker: "tcp://localhost:1883", Topic: "plant/+/temp", QoS: 1}}
	src, err := sensor.Kinds.New(spec, sensor.Deps{MQTT: dialer(fake, &name)})
	if err != nil {
		t.Fatal(err)
	}
	var c sensortest.Collector
	var rep sensortest.Reports
	r := sensortest.Start(t, src, &rep, c.Emit)
	<-fake.subbed
	if fake.topic != "plant/+/temp" || fake.qos != 1 || name != "bus" {
		t.Errorf("subscription: got topic %q qos %d name %q; want plant/+/temp 1 bus", fake.topic, fake.qos, name)
	}

	for _, p := range []string{`[21.5, 40]`, `{"hum": 40, "temp": 21.5}`, `{"temp": "warm"}`, `[1,`, `[]`, `7`} {
		fake.deliver(p)
	}
	tests := []struct {
		values []float64
		names  []string
	}{{[]float64{21.5, 40}, nil}, {[]float64{40, 21.5}, []string{"hum", "temp"}}}
	frames := c.Frames()
	if len(frames) != len(tests) {
		t.Fatalf("frames: got %d; want %d", len(frames), len(tests))
	}
	for i, tt := range tests {
		if !slices.Equal(frames[i].Values, tt.values) || !slices.Equal(frames[i].Names, tt.names) || frames[i].Ref != "plant/+/temp" {
			t.Errorf("frame %d: got %v %v %q; want %v %v", i, frames[i].Values, frames[i].Names, frames[i].Ref, tt.values, tt.names)
		}
	}
	if got := rep.Errors(); len(got) != 4 || !strings.Contains(got[0].Error(), `source "bus": mqtt topic plant/+/temp: message skipped`) {
		t.Errorf("reports: got %v; want 4 skipped messages", got)
	}

	if err := r.Stop(); err != nil {
		t.Errorf("Run after cancel: got %v; want nil", err)
	}
	select {
	case <-fake.closedCh:
	default:
		t.Errorf("Close: not called after Run returned")
	}
	fake.deliver(`[9]`) // a client that misbehaves after Close
	if got := len(c.Frames()); got != 2 {
		t.Errorf("frames after Run returned: got %d; want 2", got)
	}
}

func TestIntervalDropsFastMessages(t *testing.T) {
	sensortest.NoLeaks(t)
	fake := newFake()
	var name string
	src, _ := sensor.Kinds.New(sensor.Spec{Name: "bus", Kind: "mqtt", Interval: time.Hour, MQTT: sensor.MQTTSpec{Broker: "tcp://x:1883", Topic: "t"}},
		sensor.Deps{MQTT: dialer(fake, &name)})
	var c sensortest.Collector
	r := sensortest.Start(t, src, nil, c.Emit)
	<-fake.subbed
	fake.deliver(`[1]`)
	fake.deliver(`[2]`)
	r.Stop()
	if f := c.Frames(); len(f) != 1 || f[0].Values[0] != 1 {
		t.Errorf("got %d frames; want only the first", len(f))
	}
}

func TestConnectErrors(t *testing.T) {
	spec := sensor.Spec{Name: "bus", Kind: "mqtt", MQTT: sensor.MQTTSpec{Broker: "tcp://x:1883", Topic: "t"}}
	down := func(context.Context, sensor.MQTTSpec, string) (sensor.Subscriber, error) {
		return nil, errors.New("connection refused")
	}
	src, _ := sensor.Kinds.New(spec, sensor.Deps{MQTT: down})
	if err := src.Run(context.Background(), func(sensor.Frame) {}); err == nil || !strings.Contains(err.Error(), `source "bus": mqtt tcp://x:1883: connect: connection refused`) {
		t.Errorf("dial failure: got %v; want a connect error", err)
	}
	fake := newFake()
	fake.subErr = errors.New("not authorised")
	var name string
	src, _ = sensor.Kinds.New(spec, sensor.Deps{MQTT: dialer(fake, &name)})
	if err := src.Run(context.Background(), func(sensor.Frame) {}); err == nil || !strings.Contains(err.Error(), `subscribe "t": not authorised`) || !fake.closed {
		t.Errorf("subscribe failure: got %v (closed %v); want a subscribe error and the client closed", err, fake.closed)
	}
}

func TestValidation(t *testing.T) {
	ok := func(context.Context, sensor.MQTTSpec, string) (sensor.Subscriber, error) { return newFake(), nil }
	tests := []struct {
		spec sensor.MQTTSpec
		dial sensor.Dialer
		want string
	}{
		{sensor.MQTTSpec{Broker: "tcp://x:1883", Topic: "t"}, nil, `source "bus": mqtt source needs an MQTT client; not available in this build`},
		{sensor.MQTTSpec{Topic: "t"}, ok, "mqtt.broker: must not be empty"},
		{sensor.MQTTSpec{Broker: "tcp://x:1883"}, ok, "mqtt.topic: must not be empty"},
		{sensor.MQTTSpec{Broker: "tcp://x:1883", Topic: "t", QoS: 3}, ok, "mqtt.qos: must be 0, 1 or 2, got 3"},
	}
	for _, tt := range tests {
		_, err := sensor.Kinds.New(sensor.Spec{Name: "bus", Kind: "mqtt", MQTT: tt.spec}, sensor.Deps{MQTT: tt.dial})
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%+v: got %v; want an error containing %q", tt.spec, err, tt.want)
		}
	}
}
