package link_test

import (
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/edge-agent/edge-agent/agent/link"
	"github.com/edge-agent/edge-agent/internal/testenv"
)

// A burst of replies arrives complete and in the order they were given.
func TestRepliesArriveInOrder(t *testing.T) {
	b := testenv.Mosquitto(t)
	console := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(b.URL).SetClientID("console").SetProtocolVersion(4))
	if tok := console.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	defer console.Disconnect(100)
	var n atomic.Int32
	var outOfOrder atomic.Bool
	if tok := console.Subscribe("edge/+/cmd/reply", 1, func(_ mqtt.Client, m mqtt.Message) {
		if string(m.Payload()) != fmt.Sprintf(`{"i":%d}`, n.Load()) {
			outOfOrder.Store(true)
		}
		n.Add(1)
	}); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	l, logs := newLink(t, link.Config{Broker: b.URL, Device: "dev9"}, newMemQueue(), func(o *link.Options) { o.Commands = func(string, []byte) {} })
	start(t, l)
	waitOnline(t, l)
	for i := range 50 {
		l.Reply([]byte(fmt.Sprintf(`{"i":%d}`, i)))
	}
	eventually(t, 5*time.Second, func() bool { return n.Load() == 50 }, func() string { return fmt.Sprintf("%d of 50 replies; stats %+v\n%s", n.Load(), l.Stats(), logs) })
	if outOfOrder.Load() {
		t.Error("replies arrived out of order; a command's accepted must come before its done")
	}
}
