package link_test

import (
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/edge-agent/edge-agent/agent/link"
	"github.com/edge-agent/edge-agent/internal/testenv"
)

// Commands arrive from the device's, its group's and the broadcast topic; a command sent
// while the device is offline is kept by the broker for its persistent session and arrives
// after it reconnects; replies reach <prefix>/<device>/cmd/reply.
func TestCommandsAndReplies(t *testing.T) {
	b := testenv.Mosquitto(t)
	var mu sync.Mutex
	var got []string
	opt := func(o *link.Options) {
		o.Commands = func(topic string, payload []byte) {
			mu.Lock()
			got = append(got, topic+" "+string(payload))
			mu.Unlock()
		}
	}
	received := func() []string { mu.Lock(); defer mu.Unlock(); return slices.Clone(got) }
	// The console connects first: the goroutine-leak check counts from the link's start.
	console := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(b.URL).SetClientID("console").SetProtocolVersion(4))
	if tok := console.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("console connect: %v", tok.Error())
	}
	defer console.Disconnect(100)
	replies := make(chan string, 10)
	if tok := console.Subscribe("edge/dev7/cmd/reply", 1, func(_ mqtt.Client, m mqtt.Message) { replies <- string(m.Payload()) }); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("console subscribe: %v", tok.Error())
	}
	cfg := link.Config{Broker: b.URL, Device: "dev7", Groups: []string{"kitchen"}, BackoffMin: 50 * time.Millisecond, BackoffMax: 100 * time.Millisecond}
	l, _ := newLink(t, cfg, newMemQueue(), opt)
	stop := start(t, l)
	waitOnline(t, l)

	publish := func(topic, body string) {
		t.Helper()
		if tok := console.Publish(topic, 1, false, body); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("publish %s: %v", topic, tok.Error())
		}
	}
	publish("edge/dev7/cmd", `{"id":"1"}`)
	publish("edge/group/kitchen/cmd", `{"id":"2"}`)
	publish("edge/group/garage/cmd", `{"id":"not-ours"}`)
	publish("edge/all/cmd", `{"id":"3"}`)
	want := []string{`edge/dev7/cmd {"id":"1"}`, `edge/group/kitchen/cmd {"id":"2"}`, `edge/all/cmd {"id":"3"}`}
	eventually(t, 10*time.Second, func() bool { return len(received()) >= 3 }, func() string { return fmt.Sprintf("commands %q", received()) })
	if g := received(); !slices.Equal(g, want) {
		t.Fatalf("commands %q; want %q", g, want)
	}
	if !l.Reply([]byte(`{"id":"1","status":"done"}`)) {
		t.Fatal("Reply returned false while online")
	}
	select {
	case r := <-replies:
		if r != `{"id":"1","status":"done"}` {
			t.Errorf("reply %q", r)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no reply arrived")
	}

	stop() // offline: the broker keeps the session and queues QoS 1 commands for it
	publish("edge/dev7/cmd", `{"id":"4"}`)
	l2, _ := newLink(t, cfg, newMemQueue(), opt)
	start(t, l2)
	eventually(t, 10*time.Second, func() bool { return len(received()) >= 4 }, func() string { return fmt.Sprintf("commands %q", received()) })
	if g := received(); g[3] != `edge/dev7/cmd {"id":"4"}` {
		t.Errorf("after reconnecting got %q; want the command sent while offline", g[3:])
	}
	if st := l.Stats(); st.Commands != 3 || st.RepliesSent != 1 {
		t.Errorf("stats %+v; want 3 commands and 1 reply", st)
	}
}
