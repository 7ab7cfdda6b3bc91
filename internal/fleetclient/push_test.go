package fleetclient_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/edge-agent/edge-agent/internal/fleetclient"
	"github.com/edge-agent/edge-agent/internal/testenv"
)

func TestChunkSizeKeepsTheCommandSmall(t *testing.T) {
	for _, tc := range []struct {
		size      int64
		maxChunks int
		want      int
	}{
		{1, 0, 256 << 10},
		{800 * 256 << 10, 0, 256 << 10},
		{800*256<<10 + 1, 0, 512 << 10},
		{512 << 20, 0, 1 << 20},
		{600*256<<10 + 1, fleetclient.MaxSignedPushChunks, 512 << 10},
		{1025 << 20, 0, 0},
	} {
		if got := fleetclient.ChunkSize(tc.size, tc.maxChunks); got != tc.want {
			t.Errorf("ChunkSize(%d, %d) = %d; want %d", tc.size, tc.maxChunks, got, tc.want)
		}
	}
	if _, err := fleetclient.PlanPush(strings.NewReader(""), 0, 0); err == nil {
		t.Error("an empty bundle was planned")
	}
	if _, err := fleetclient.PlanPush(strings.NewReader("x"), fleetclient.MaxPushBytes+1, 0); err == nil || !strings.Contains(err.Error(), "--url") {
		t.Errorf("a bundle over 512 MiB: %v; want an error pointing to --url", err)
	}
}

// A pusher answers need requests of its command with the chunks asked for, each headed by
// the bundle's sha256 and its index, and ignores requests of other commands and bundles.
func TestPusherAnswersNeeds(t *testing.T) {
	b := testenv.Mosquitto(t)
	data := make([]byte, 600<<10) // three chunks of 256 KiB, the last one short
	rand.Read(data)
	plan, err := fleetclient.PlanPush(bytes.NewReader(data), int64(len(data)), 0)
	if err != nil {
		t.Fatal(err)
	}
	whole := sha256.Sum256(data)
	if plan.SHA256 != hex.EncodeToString(whole[:]) || plan.ChunkSize != 256<<10 || len(plan.Chunks) != 3 {
		t.Fatalf("plan %+v; want 3 chunks of 256 KiB and the file's sha256", plan)
	}

	device := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(b.URL).SetClientID("dev-x").SetProtocolVersion(4))
	if tok := device.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	defer device.Disconnect(100)
	var mu sync.Mutex
	got := map[string]int{} // header → count
	if tok := device.Subscribe("edge/dev-x/bundle/chunk", 1, func(_ mqtt.Client, m mqtt.Message) {
		header, body, _ := bytes.Cut(m.Payload(), []byte("\n"))
		var index int
		fmt.Sscanf(string(header), `{"sha256":"`+plan.SHA256+`","index":%d}`, &index)
		h := sha256.Sum256(body)
		mu.Lock()
		defer mu.Unlock()
		if hex.EncodeToString(h[:]) != plan.Chunks[index] {
			t.Errorf("chunk with header %s does not match the plan's hash of chunk %d", header, index)
		}
		got[string(header)]++
	}); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}

	testenv.NoGoroutineLeaks(t)
	cl, err := fleetclient.Connect(context.Background(), fleetclient.Config{Broker: b.URL})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	p, err := cl.Push(context.Background(), fleetclient.PushOptions{Device: "dev-x", ID: "cmd-1", Bundle: bytes.NewReader(data), Plan: plan, InFlight: 2})
	if err != nil {
		t.Fatal(err)
	}
	need := func(id, sum string, chunks string) {
		t.Helper()
		body := fmt.Sprintf(`{"schema":"edge-agent/bundle-need/v1","device":"dev-x","id":%q,"sha256":%q,"chunks":%s}`, id, sum, chunks)
		if tok := device.Publish("edge/dev-x/bundle/need", 1, false, body); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatal(tok.Error())
		}
	}
	need("other-command", plan.SHA256, "[0]")
	need("cmd-1", strings.Repeat("0", 64), "[0]")
	need("cmd-1", plan.SHA256, "[2, 0, 7]") // 7 is out of range
	head := func(i int) string { return fmt.Sprintf(`{"sha256":%q,"index":%d}`, plan.SHA256, i) }
	deadline := time.Now().Add(testenv.Patience(10 * time.Second))
	for {
		mu.Lock()
		n := len(got)
		mu.Unlock()
		if n >= 2 && p.Stats().Chunks == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("chunks %v, stats %+v; want chunks 0 and 2", got, p.Stats())
		}
		time.Sleep(10 * time.Millisecond)
	}
	p.Stop()
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 2 || got[head(0)] != 1 || got[head(2)] != 1 {
		t.Errorf("chunks %v; want chunks 0 and 2 once each", got)
	}
	if st := p.Stats(); st.Ignored != 2 || st.Needs != 1 || st.Devices != 1 || st.Bytes != uint64(256<<10+len(data)-512<<10) {
		t.Errorf("stats %+v; want 2 ignored requests, 1 taken, from 1 device, and the bytes of chunks 0 and 2", st)
	}
}
