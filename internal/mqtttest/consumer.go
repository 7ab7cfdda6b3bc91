// Package mqtttest is the fleet side of the project's MQTT tests: a consumer that subscribes
// the way a real fleet console does (persistent session, QoS 1) and collects what devices
// send, by (device, epoch, seq). It imports paho directly because it stands outside the agent; only
// tests import it (internal/depcheck checks that no binary does).
package mqtttest

import (
	"bytes"
	"cmp"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/edge-agent/edge-agent/internal/testenv"
)

// Consumer collects result and event envelopes (edge-agent/results/v1, edge-agent/events/v1)
// and retained status messages.
type Consumer struct {
	t      testing.TB
	c      mqtt.Client
	mu     sync.Mutex
	recs   map[string]map[key]json.RawMessage // stream/device → (epoch, seq) → record
	epochs map[string][]uint64                // stream/device → epochs in the order first seen
	dups   map[string]int
	redel  map[string]int
	msgs   int
	status map[string]json.RawMessage
	topics map[string]int // messages per topic, whatever they hold
}

// NewConsumer connects to broker with a persistent session and subscribes to topics at QoS 1
// (again after every reconnect). It disconnects when the test ends.
func NewConsumer(t testing.TB, broker string, topics ...string) *Consumer {
	t.Helper()
	return NewConsumerAs(t, broker, "", "", topics...)
}

// NewConsumerAs is NewConsumer logged in as user with password (for brokers with ACLs).
func NewConsumerAs(t testing.TB, broker, user, password string, topics ...string) *Consumer {
	t.Helper()
	k := &Consumer{t: t, recs: map[string]map[key]json.RawMessage{}, epochs: map[string][]uint64{}, dups: map[string]int{}, redel: map[string]int{}, status: map[string]json.RawMessage{}, topics: map[string]int{}}
	opts := mqtt.NewClientOptions().AddBroker(broker).SetClientID(fmt.Sprintf("consumer-%08x", rand.Uint32())).SetUsername(user).SetPassword(password).
		SetCleanSession(false).SetAutoReconnect(true).SetMaxReconnectInterval(200 * time.Millisecond).
		SetOnConnectHandler(func(c mqtt.Client) {
			for _, tp := range topics {
				c.Subscribe(tp, 1, k.handle)
			}
		})
	k.c = mqtt.NewClient(opts)
	if tok := k.c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("consumer connect %s: %v", broker, tok.Error())
	}
	// Subscribed (SUBACK) before NewConsumer returns: the on-connect subscription above runs
	// asynchronously, and a broker stopped right after would not keep what it had not yet
	// got in the persistent session.
	for _, tp := range topics {
		if tok := k.c.Subscribe(tp, 1, k.handle); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("consumer subscribe %s: %v", tp, tok.Error())
		}
	}
	t.Cleanup(func() { k.c.Disconnect(100) })
	return k
}

func (k *Consumer) handle(_ mqtt.Client, m mqtt.Message) {
	k.mu.Lock()
	k.topics[m.Topic()]++
	k.mu.Unlock()
	payload := m.Payload()
	if bytes.HasPrefix(payload, []byte{0x1f, 0x8b}) {
		zr, err := gzip.NewReader(bytes.NewReader(payload))
		if err == nil {
			payload, err = io.ReadAll(zr)
		}
		if err != nil {
			k.t.Errorf("gzip payload on %s: %v", m.Topic(), err)
			return
		}
	}
	var env struct {
		Schema  string            `json:"schema"`
		Device  string            `json:"device"`
		Count   int               `json:"count"`
		Results []json.RawMessage `json:"results"`
		Events  []json.RawMessage `json:"events"`
		Samples []json.RawMessage `json:"samples"`
	}
	if err := json.Unmarshal(payload, &env); err != nil {
		k.t.Errorf("message on %s is not JSON (%v): %.200s", m.Topic(), err, payload)
		return
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	var stream string
	var recs []json.RawMessage
	switch env.Schema {
	case "edge-agent/status/v1":
		k.status[env.Device] = bytes.Clone(payload)
		return
	case "edge-agent/results/v1":
		stream, recs = "results", env.Results
	case "edge-agent/events/v1":
		stream, recs = "events", env.Events
	case "edge-agent/samples/v1":
		stream, recs = "samples", env.Samples
	default:
		return // metrics and anything else are not collected
	}
	if env.Count != len(recs) {
		k.t.Errorf("%s message from %s says count %d but holds %d records", stream, env.Device, env.Count, len(recs))
	}
	k.msgs++
	name := stream + "/" + env.Device
	if k.recs[name] == nil {
		k.recs[name] = map[key]json.RawMessage{}
	}
	for _, r := range recs {
		var s struct{ Seq, Epoch uint64 }
		if json.Unmarshal(r, &s) != nil || s.Seq == 0 {
			k.t.Errorf("%s record without seq from %s: %.200s", stream, env.Device, r)
			continue
		}
		if !slices.Contains(k.epochs[name], s.Epoch) {
			k.epochs[name] = append(k.epochs[name], s.Epoch)
		}
		id := key{s.Epoch, s.Seq}
		if _, ok := k.recs[name][id]; ok {
			// A message the broker itself delivers again (its DUP flag set: our PUBACK to it
			// was lost, e.g. in a broker restart) is the broker's repeat, not the device's.
			if m.Duplicate() {
				k.redel[name]++
			} else {
				k.dups[name]++
			}
			continue
		}
		k.recs[name][id] = r
	}
}

// RawCount is how many messages arrived on topic, whatever they held.
func (k *Consumer) RawCount(topic string) int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.topics[topic]
}

// key identifies a record of a device's stream: (epoch, seq) never repeats (docs/results.md).
type key struct{ epoch, seq uint64 }

// Record returns the record with seq from a device's stream ("results", "events" or
// "samples"), in the latest epoch that has one.
func (k *Consumer) Record(stream, device string, seq uint64) (json.RawMessage, bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.record(stream+"/"+device, seq)
}

func (k *Consumer) record(name string, seq uint64) (json.RawMessage, bool) {
	es := k.epochs[name]
	for i := len(es) - 1; i >= 0; i-- {
		if r, ok := k.recs[name][key{es[i], seq}]; ok {
			return r, true
		}
	}
	return nil, false
}

// Epochs returns the numbering epochs of a device's stream in the order first seen (0 is the
// first epoch, whose records carry none).
func (k *Consumer) Epochs(stream, device string) []uint64 {
	k.mu.Lock()
	defer k.mu.Unlock()
	return slices.Clone(k.epochs[stream+"/"+device])
}

// Count is how many distinct records of a device's stream arrived.
func (k *Consumer) Count(stream, device string) int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return len(k.recs[stream+"/"+device])
}

// Missing counts the seqs that have not arrived.
func (k *Consumer) Missing(stream, device string, seqs []uint64) int {
	k.mu.Lock()
	defer k.mu.Unlock()
	n := 0
	for _, s := range seqs {
		if _, ok := k.record(stream+"/"+device, s); !ok {
			n++
		}
	}
	return n
}

// Records returns a device's stream by epoch (in the order first seen), then seq.
func (k *Consumer) Records(stream, device string) []json.RawMessage {
	k.mu.Lock()
	defer k.mu.Unlock()
	name := stream + "/" + device
	m := k.recs[name]
	order := map[uint64]int{}
	for i, e := range k.epochs[name] {
		order[e] = i
	}
	ids := make([]key, 0, len(m))
	for id := range m {
		ids = append(ids, id)
	}
	slices.SortFunc(ids, func(a, b key) int {
		if c := order[a.epoch] - order[b.epoch]; c != 0 {
			return c
		}
		return cmp.Compare(a.seq, b.seq)
	})
	out := make([]json.RawMessage, 0, len(m))
	for _, id := range ids {
		out = append(out, m[id])
	}
	return out
}

// Duplicates is how many records of a device's stream arrived again because the device sent
// them again (in a message without the DUP flag).
func (k *Consumer) Duplicates(stream, device string) int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.dups[stream+"/"+device]
}

// Redelivered is how many records arrived again because the broker delivered a message to
// this consumer again (DUP flag set).
func (k *Consumer) Redelivered(stream, device string) int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.redel[stream+"/"+device]
}

// Messages is how many result and event envelopes arrived.
func (k *Consumer) Messages() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.msgs
}

// Status is the last status message of a device (nil before one arrived).
func (k *Consumer) Status(device string) json.RawMessage {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.status[device]
}

// WaitFor polls cond until it holds or the timeout passes, then fails the test with what.
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	testenv.Eventually(t, timeout, 20*time.Millisecond, func() string { return what }, cond)
}
