package link_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/edge-agent/edge-agent/agent/link"
	"github.com/edge-agent/edge-agent/internal/testenv"
)

// Chunks of pushed bundles reach the receiver that claimed their bundle, in order; chunks of
// other bundles, malformed or oversize ones and those that find the receiver's inbox full are
// dropped and counted; a second claim on a bundle takes it over once the first has closed;
// need requests reach <prefix>/<device>/bundle/need.
func TestPushedChunksReachTheirReceiver(t *testing.T) {
	b := testenv.Mosquitto(t)
	console := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(b.URL).SetClientID("pusher").SetProtocolVersion(4))
	if tok := console.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("console connect: %v", tok.Error())
	}
	defer console.Disconnect(100)
	needs := make(chan string, 10)
	if tok := console.Subscribe("edge/+/bundle/need", 1, func(_ mqtt.Client, m mqtt.Message) { needs <- m.Topic() + " " + string(m.Payload()) }); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("console subscribe: %v", tok.Error())
	}
	l, logs := newLink(t, link.Config{Broker: b.URL, Device: "dev5"}, newMemQueue(), func(o *link.Options) { o.Commands = func(string, []byte) {} })
	start(t, l)
	waitOnline(t, l)

	sum := func(s string) string { h := sha256.Sum256([]byte(s)); return hex.EncodeToString(h[:]) }
	bundleA, bundleB := sum("a"), sum("b")
	chunk := func(bundle string, index int, data []byte) []byte {
		return append([]byte(fmt.Sprintf(`{"sha256":%q,"index":%d}`+"\n", bundle, index)), data...)
	}
	publish := func(payload []byte) {
		t.Helper()
		if tok := console.Publish("edge/dev5/bundle/chunk", 1, false, payload); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("publish chunk: %v", tok.Error())
		}
	}
	stats := func() link.PushStats { return l.Stats().Push }
	settled := func(what string, cond func(link.PushStats) bool) {
		t.Helper()
		eventually(t, 10*time.Second, func() bool { return cond(stats()) }, func() string { return fmt.Sprintf("%s: %+v\n%s", what, stats(), logs) })
	}

	publish(chunk(bundleA, 0, []byte("nobody asked"))) // before any claim
	settled("an unsolicited chunk counted", func(s link.PushStats) bool { return s.Unsolicited == 1 })

	ctx := context.Background()
	inA, err := l.ReceiveChunks(ctx, bundleA, 2)
	if err != nil {
		t.Fatal(err)
	}
	publish(chunk(bundleA, 0, []byte("zero")))
	publish(chunk(bundleB, 0, []byte("other bundle")))
	publish(chunk(bundleA, 1, []byte("one")))
	publish(chunk(bundleA, 2, []byte("two: the inbox holds 2")))
	publish(chunk(strings.ToUpper(bundleA), 3, []byte("upper-case hex")))
	publish(chunk(bundleA, 4, bytes.Repeat([]byte{1}, link.MaxChunkBytes+1)))
	publish([]byte("no header line at all"))
	settled("2 delivered, 1 overflow, 2 unsolicited, 3 malformed", func(s link.PushStats) bool {
		return s.Chunks == 2 && s.Overflow == 1 && s.Unsolicited == 2 && s.Malformed == 3
	})
	for i, want := range []string{"zero", "one"} {
		c := <-inA.C()
		if c.Bundle != bundleA || c.Index != i || string(c.Data) != want {
			t.Errorf("chunk %d: %+v; want index %d %q", i, c, i, want)
		}
	}
	inA.Refuse()

	// A second claim on bundle A: the first is told (Taken) and the second waits for Close.
	second := make(chan *link.ChunkInbox, 1)
	go func() {
		in, err := l.ReceiveChunks(ctx, bundleA, 4)
		if err != nil {
			t.Error(err)
		}
		second <- in
	}()
	select {
	case <-inA.Taken():
	case <-time.After(10 * time.Second):
		t.Fatal("the first claim was not told that a second one waits")
	}
	select {
	case <-second:
		t.Fatal("the second claim got the bundle before the first closed")
	default:
	}
	inA.Close()
	inA2 := <-second
	defer inA2.Close()
	publish(chunk(bundleA, 5, []byte("five")))
	if c := <-inA2.C(); c.Index != 5 || string(c.Data) != "five" {
		t.Errorf("after the takeover got %+v; want chunk 5", c)
	}
	if len(inA.C()) != 0 {
		t.Error("the closed claim still received a chunk")
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := l.ReceiveChunks(cctx, bundleA, 1); err == nil {
		t.Error("a claim on a held bundle returned with a cancelled ctx; want ctx's error")
	}

	if !l.Need([]byte(`{"schema":"edge-agent/bundle-need/v1","chunks":[1,2]}`)) {
		t.Fatal("Need returned false while online")
	}
	select {
	case n := <-needs:
		if n != `edge/dev5/bundle/need {"schema":"edge-agent/bundle-need/v1","chunks":[1,2]}` {
			t.Errorf("need %q", n)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no need request arrived")
	}
	settled("refused and needs counted", func(s link.PushStats) bool { return s.Refused == 1 && s.NeedsSent == 1 && s.Chunks == 3 })
}
