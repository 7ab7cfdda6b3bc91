package link_test

import (
	"context"
	"strconv"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/edge-agent/edge-agent/agent/link"
	"github.com/edge-agent/edge-agent/hal/sensor"
	_ "github.com/edge-agent/edge-agent/hal/sensor/mqtt"
	"github.com/edge-agent/edge-agent/internal/testenv"
)

func publisher(t *testing.T, url string) mqtt.Client {
	t.Helper()
	c := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(url).SetClientID("test-pub").SetAutoReconnect(true).SetConnectRetry(true))
	if tok := c.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("publisher connect: %v", tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(100) })
	return c
}

// The mqtt sensor kind over the real paho client and a real Mosquitto: JSON arrays and
// objects become frames, a malformed payload is skipped, and after a broker restart the
// subscription comes back by itself.
func TestMQTTSourceAgainstMosquitto(t *testing.T) {
	b := testenv.Mosquitto(t)
	spec := sensor.Spec{Name: "bus", Kind: "mqtt", MQTT: sensor.MQTTSpec{Broker: b.URL, Topic: "sensors/+/temp", QoS: 1}}
	src, err := sensor.Kinds.New(spec, sensor.Deps{MQTT: link.DialSubscriber})
	if err != nil {
		t.Fatal(err)
	}
	r := sensor.NewRunner(spec, src, sensor.RunnerOptions{MinBackoff: 50 * time.Millisecond, MaxBackoff: 200 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	pub := publisher(t, b.URL)
	next := func(payload string) sensor.Frame {
		t.Helper()
		deadline := time.Now().Add(testenv.Patience(10 * time.Second))
		for time.Now().Before(deadline) {
			pub.Publish("sensors/a/temp", 1, false, payload).WaitTimeout(time.Second)
			pctx, pcancel := context.WithTimeout(ctx, 300*time.Millisecond)
			f, ok := r.Queue().Pop(pctx)
			pcancel()
			if ok {
				return f
			}
		}
		t.Fatalf("no frame for %s within 10s (runner: %+v)", payload, r.Stats())
		return sensor.Frame{}
	}
	if f := next("[1.5, 2, -3]"); len(f.Values) != 3 || f.Values[0] != 1.5 || f.Values[2] != -3 {
		t.Fatalf("array payload gave %+v; want [1.5 2 -3]", f.Values)
	}
	pub.Publish("sensors/a/temp", 1, false, "not json").WaitTimeout(time.Second)
	if f := next(`{"t": 21.5}`); len(f.Values) != 1 || f.Values[0] != 21.5 || f.Names[0] != "t" {
		t.Fatalf("object payload gave %+v %v; want t=21.5", f.Values, f.Names)
	}
	if st := r.Stats(); st.Errors == 0 {
		t.Errorf("malformed payload not counted: %+v", st)
	}

	b.Stop()
	b.Start()
	if f := next("[7]"); len(f.Values) != 1 || f.Values[0] != 7 {
		t.Fatalf("after broker restart got %+v; want [7]", f.Values)
	}
}

func TestDialUnreachableBrokerFails(t *testing.T) {
	port := testenv.FreePort(t)
	_, err := link.DialSubscriber(context.Background(), sensor.MQTTSpec{Broker: "tcp://127.0.0.1:" + strconv.Itoa(port), Topic: "x"}, "t")
	if err == nil {
		t.Fatal("dial to a closed port succeeded; want an error")
	}
}
