package fleetclient

// The console side of bundles pushed over MQTT (docs/mqtt.md, "Bundles pushed over MQTT"):
// PlanPush describes a bundle file as the deploy command's "push" args; a Pusher answers the
// devices' need requests on <prefix>/<device>/bundle/need by publishing the chunks they ask
// for to <prefix>/<device>/bundle/chunk.

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
)

// Pushed-bundle bounds, as the devices check them.
const (
	// MaxPushBytes is the largest bundle a device takes (its maxBundleBytes).
	MaxPushBytes = 512 << 20
	// MinPushChunk is the smallest chunk size edgectl picks: small enough that a lost chunk
	// costs little, large enough that the chunk list stays short.
	MinPushChunk = 256 << 10
	// MaxPushChunk is the largest chunk a device takes.
	MaxPushChunk = 1 << 20
	// MaxPushChunks keeps the deploy command (64 hex digits and a few bytes per chunk) under
	// the devices' 64 KiB command limit.
	MaxPushChunks = 800
	// MaxSignedPushChunks is the same for a signed envelope, whose base64 body is a third
	// larger.
	MaxSignedPushChunks = 600
	// NeedSchema is the schema of the devices' need requests.
	NeedSchema = "edge-agent/bundle-need/v1"
)

// PushPlan is a bundle as a deploy command's {"push": ...} args describe it.
type PushPlan struct {
	SHA256    string   `json:"sha256"`     // the whole bundle
	Size      int64    `json:"size"`       // bytes
	ChunkSize int      `json:"chunk_size"` // bytes per chunk; the last one may be shorter
	Chunks    []string `json:"chunks"`     // sha256 of each chunk, in order
}

// ChunkSize is the chunk size for a bundle of size bytes: the smallest power of two from
// MinPushChunk up with at most maxChunks chunks (MaxPushChunks when maxChunks <= 0), or 0
// when even MaxPushChunk is too small.
func ChunkSize(size int64, maxChunks int) int {
	if maxChunks <= 0 {
		maxChunks = MaxPushChunks
	}
	for c := int64(MinPushChunk); c <= MaxPushChunk; c *= 2 {
		if (size+c-1)/c <= int64(maxChunks) {
			return int(c)
		}
	}
	return 0
}

// PlanPush reads the size bytes of r and describes them in chunks of ChunkSize(size,
// maxChunks).
func PlanPush(r io.Reader, size int64, maxChunks int) (PushPlan, error) {
	if size < 1 || size > MaxPushBytes {
		return PushPlan{}, fmt.Errorf("the bundle is %d bytes; a pushed bundle is 1 to %d bytes: serve a larger one over HTTP and deploy it with --url", size, int64(MaxPushBytes))
	}
	p := PushPlan{Size: size, ChunkSize: ChunkSize(size, maxChunks)}
	if p.ChunkSize == 0 {
		return PushPlan{}, fmt.Errorf("a bundle of %d bytes needs more than %d chunks of %d bytes: serve it over HTTP and deploy it with --url", size, maxChunks, MaxPushChunk)
	}
	whole := sha256.New()
	buf := make([]byte, p.ChunkSize)
	for done := int64(0); done < size; {
		n := int(min(int64(p.ChunkSize), size-done))
		if _, err := io.ReadFull(r, buf[:n]); err != nil {
			return PushPlan{}, fmt.Errorf("read the bundle at byte %d: %w", done, err)
		}
		whole.Write(buf[:n])
		h := sha256.Sum256(buf[:n])
		p.Chunks = append(p.Chunks, hex.EncodeToString(h[:]))
		done += int64(n)
	}
	p.SHA256 = hex.EncodeToString(whole.Sum(nil))
	return p, nil
}

// PushOptions say what a Pusher serves and to whom.
type PushOptions struct {
	// Prefix is the topic prefix (default "edge").
	Prefix string
	// Device limits the pusher to one device's needs; "" answers every device (a group or
	// broadcast deploy).
	Device string
	// ID is the deploy command's id: needs for other commands are ignored.
	ID string
	// Bundle is the file, read concurrently with ReadAt; Plan describes it (PlanPush).
	Bundle io.ReaderAt
	Plan   PushPlan
	// InFlight bounds the chunks being read and published at once (default 8).
	InFlight int
	// Sent, when set, is called after each chunk the broker acknowledged (from the
	// pusher's goroutines).
	Sent func(device string, index int)
}

// PushStats count a pusher's work.
type PushStats struct {
	Needs   uint64 // need requests taken
	Ignored uint64 // need requests for another command or bundle, or malformed
	Dropped uint64 // need requests dropped because the pusher was behind (the device asks again)
	Chunks  uint64 // chunks the broker acknowledged
	Bytes   uint64
	Failed  uint64 // chunks not published (the device asks again)
	Devices int    // devices that asked
}

// needQueue bounds the need requests waiting for the pusher; the devices ask again for what
// they do not get.
const needQueue = 64

// Pusher answers need requests until Stop.
type Pusher struct {
	c      *Client
	o      PushOptions
	topic  string
	cancel context.CancelFunc
	wg     sync.WaitGroup
	needs  chan pushNeed

	needsN, ignored, dropped, chunks, bytes, failed atomic.Uint64
	mu                                              sync.Mutex
	devices                                         map[string]bool
}

type pushNeed struct {
	device string
	chunks []int
}

// Push subscribes to the need topic of o.Device (or of every device) and answers from then
// on, until Stop or ctx's end. The subscription is in place when Push returns, so the deploy
// command can be sent next.
func (c *Client) Push(ctx context.Context, o PushOptions) (*Pusher, error) {
	switch {
	case o.ID == "" || o.Bundle == nil || len(o.Plan.Chunks) == 0:
		return nil, errors.New("push: the command id, the bundle and its plan are required")
	case strings.ContainsAny(o.Device, "+#/"):
		return nil, fmt.Errorf("push: device %q holds '+', '#' or '/'", o.Device)
	}
	if o.Prefix == "" {
		o.Prefix = "edge"
	}
	if o.InFlight <= 0 {
		o.InFlight = 8
	}
	dev := o.Device
	if dev == "" {
		dev = "+"
	}
	ctx, cancel := context.WithCancel(ctx)
	p := &Pusher{c: c, o: o, topic: o.Prefix + "/" + dev + "/bundle/need", cancel: cancel,
		needs: make(chan pushNeed, needQueue), devices: map[string]bool{}}
	if err := c.Subscribe(p.topic, p.onNeed); err != nil {
		cancel()
		return nil, fmt.Errorf("push: %w", err)
	}
	jobs := make(chan pushJob) // unbuffered: the workers bound what is in flight
	p.wg.Go(func() {
		defer close(jobs)
		for {
			select {
			case <-ctx.Done():
				return
			case n := <-p.needs:
				for _, i := range n.chunks {
					select {
					case jobs <- pushJob{n.device, i}:
					case <-ctx.Done():
						return
					}
				}
			}
		}
	})
	for range o.InFlight {
		p.wg.Go(func() {
			var buf []byte
			for j := range jobs {
				if buf == nil {
					buf = make([]byte, 0, 128+o.Plan.ChunkSize)
				}
				if !p.send(j, buf) {
					buf = nil // the client may still hold it for a resend
				}
			}
		})
	}
	return p, nil
}

type pushJob struct {
	device string
	index  int
}

// onNeed runs on the client's delivery goroutine: it must not wait for a publish, so it only
// queues (or drops, counted).
func (p *Pusher) onNeed(topic string, payload []byte) {
	var n struct {
		Schema string `json:"schema"`
		ID     string `json:"id"`
		SHA256 string `json:"sha256"`
		Chunks []int  `json:"chunks"`
	}
	dev := strings.TrimSuffix(strings.TrimPrefix(topic, p.o.Prefix+"/"), "/bundle/need")
	if json.Unmarshal(payload, &n) != nil || n.Schema != NeedSchema || n.ID != p.o.ID ||
		!strings.EqualFold(n.SHA256, p.o.Plan.SHA256) || dev == "" || strings.Contains(dev, "/") {
		p.ignored.Add(1)
		return
	}
	var valid []int
	for _, i := range n.Chunks {
		if i >= 0 && i < len(p.o.Plan.Chunks) && len(valid) < 64 {
			valid = append(valid, i)
		}
	}
	p.mu.Lock()
	p.devices[dev] = true
	p.mu.Unlock()
	select {
	case p.needs <- pushNeed{dev, valid}:
		p.needsN.Add(1)
	default:
		p.dropped.Add(1)
	}
}

// send reads chunk j.index into buf and publishes it to the device's chunk topic, waiting
// for the broker's acknowledgement. It reports whether buf is free again.
func (p *Pusher) send(j pushJob, buf []byte) bool {
	plan := p.o.Plan
	off := int64(j.index) * int64(plan.ChunkSize)
	n := int(min(int64(plan.ChunkSize), plan.Size-off))
	buf = fmt.Appendf(buf[:0], `{"sha256":%q,"index":%d}`+"\n", plan.SHA256, j.index)
	head := len(buf)
	buf = buf[:head+n]
	if _, err := p.o.Bundle.ReadAt(buf[head:], off); err != nil {
		p.failed.Add(1)
		return true
	}
	if err := p.c.Publish(p.o.Prefix+"/"+j.device+"/bundle/chunk", 1, false, buf); err != nil {
		p.failed.Add(1)
		return false
	}
	p.chunks.Add(1)
	p.bytes.Add(uint64(n))
	if p.o.Sent != nil {
		p.o.Sent(j.device, j.index)
	}
	return true
}

// Stop stops answering, waits for the chunks being published and unsubscribes.
func (p *Pusher) Stop() {
	p.cancel()
	p.wg.Wait()
	tok := p.c.c.Unsubscribe(p.topic)
	tok.WaitTimeout(AckTimeout)
}

// Stats returns the counters so far.
func (p *Pusher) Stats() PushStats {
	p.mu.Lock()
	devs := len(p.devices)
	p.mu.Unlock()
	return PushStats{Needs: p.needsN.Load(), Ignored: p.ignored.Load(), Dropped: p.dropped.Load(),
		Chunks: p.chunks.Load(), Bytes: p.bytes.Load(), Failed: p.failed.Load(), Devices: devs}
}
