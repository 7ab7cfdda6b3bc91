package link

// Pushed bundles (docs/mqtt.md, "Bundles pushed over MQTT"): a device that takes commands
// also takes chunks of a bundle on <prefix>/<device>/bundle/chunk and asks for them on
// <prefix>/<device>/bundle/need. The link only carries them: it hands each chunk to whoever
// claimed its bundle (ReceiveChunks) and drops the rest, so a chunk nobody asked for never
// reaches the disk. Checking, storing and asking are the receiver's (agent/push.go).

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"sync"
)

// Topic suffixes of pushed bundles.
const (
	ChunkTopic = "bundle/chunk" // in: {"sha256": BUNDLE, "index": N}\n + the chunk's bytes
	NeedTopic  = "bundle/need"  // out: edge-agent/bundle-need/v1
)

// MaxChunkBytes bounds a chunk's data; maxChunkHeader bounds the JSON line before it. A
// larger message is dropped and counted.
const (
	MaxChunkBytes  = 1 << 20
	maxChunkHeader = 256
)

// needQueue bounds need requests waiting for the connection.
const needQueue = 64

// Chunk is one piece of a pushed bundle.
type Chunk struct {
	Bundle string // sha256 of the whole bundle, lower-case hex, as the header names it
	Index  int
	Data   []byte // a copy the receiver owns
}

// PushStats counts pushed-bundle traffic.
type PushStats struct {
	Chunks      uint64 `json:"chunks"`      // chunks handed to a receiver
	Unsolicited uint64 `json:"unsolicited"` // dropped: for a bundle nobody is receiving
	Malformed   uint64 `json:"malformed"`   // dropped: oversize, or no valid header
	Overflow    uint64 `json:"overflow"`    // dropped: the receiver was behind (it asks again)
	Refused     uint64 `json:"refused"`     // dropped by the receiver (ChunkInbox.Refuse): failed its check
	NeedsSent   uint64 `json:"needs_sent"`
	NeedsDrop   uint64 `json:"needs_dropped"` // the need queue was full (the receiver asks again)
}

// ChunkInbox is a claim on the chunks of one bundle, from ReceiveChunks until Close.
type ChunkInbox struct {
	l      *Link
	bundle string
	c      chan Chunk
	taken  chan struct{} // closed when a later claim on the same bundle wants it
	closed chan struct{} // closed by Close: the claim is free
	once   sync.Once
}

// C delivers the bundle's chunks in arrival order.
func (in *ChunkInbox) C() <-chan Chunk { return in.c }

// Taken is closed when another ReceiveChunks for the same bundle waits for this claim: the
// receiver should stop and Close.
func (in *ChunkInbox) Taken() <-chan struct{} { return in.taken }

// Refuse counts a chunk the receiver dropped because it failed its check.
func (in *ChunkInbox) Refuse() {
	in.l.mu.Lock()
	in.l.push.Refused++
	in.l.mu.Unlock()
}

// Close ends the claim; later chunks of the bundle are dropped as unsolicited. Safe to call
// more than once.
func (in *ChunkInbox) Close() {
	in.once.Do(func() {
		in.l.mu.Lock()
		if in.l.inboxes[in.bundle] == in {
			delete(in.l.inboxes, in.bundle)
		}
		in.l.mu.Unlock()
		close(in.closed)
	})
}

// ReceiveChunks claims the chunks of bundle (its sha256, hex) until the inbox is closed. At
// most buffer chunks wait for the receiver; one that finds the inbox full is dropped and
// counted. A bundle has one receiver: when another holds it, that one is told to stop (its
// Taken closes) and ReceiveChunks waits until it has closed, or until ctx ends.
func (l *Link) ReceiveChunks(ctx context.Context, bundle string, buffer int) (*ChunkInbox, error) {
	in := &ChunkInbox{l: l, bundle: bundle, c: make(chan Chunk, max(buffer, 1)),
		taken: make(chan struct{}), closed: make(chan struct{})}
	for {
		l.mu.Lock()
		old := l.inboxes[bundle]
		if old == nil {
			l.inboxes[bundle] = in
			l.mu.Unlock()
			return in, nil
		}
		select {
		case <-old.taken:
		default:
			close(old.taken)
		}
		l.mu.Unlock()
		select {
		case <-old.closed:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// Need queues a need request (edge-agent/bundle-need/v1) for <prefix>/<device>/bundle/need
// (QoS 1). Like Reply it waits in a bounded queue for a connection; false (counted) when the
// queue is full.
func (l *Link) Need(payload []byte) bool {
	select {
	case l.needs <- append([]byte(nil), payload...):
		return true
	default:
		l.mu.Lock()
		l.push.NeedsDrop++
		l.mu.Unlock()
		return false
	}
}

// onChunk runs on paho's goroutine: it parses the header and hands the chunk over without
// blocking, or drops and counts it.
func (l *Link) onChunk(payload []byte) {
	header, data, ok := splitChunk(payload)
	l.mu.Lock()
	in := l.inboxes[header.SHA256]
	switch {
	case !ok:
		l.push.Malformed++
	case in == nil:
		l.push.Unsolicited++
	}
	l.mu.Unlock()
	if !ok || in == nil {
		return
	}
	if len(in.c) == cap(in.c) { // no room: spare the copy
		l.countOverflow()
		return
	}
	// Copied outside the lock (up to 1 MiB). The inbox may close meanwhile: its channel is
	// never closed, so the send is safe and the chunk is simply never read.
	select {
	case in.c <- Chunk{Bundle: header.SHA256, Index: header.Index, Data: bytes.Clone(data)}:
		l.mu.Lock()
		l.push.Chunks++
		l.mu.Unlock()
	default:
		l.countOverflow()
	}
}

// countOverflow counts a chunk dropped because its receiver was behind.
func (l *Link) countOverflow() {
	l.mu.Lock()
	l.push.Overflow++
	l.mu.Unlock()
}

type chunkHeader struct {
	SHA256 string `json:"sha256"`
	Index  int    `json:"index"`
}

// splitChunk reads a chunk message: a JSON header line, '\n', then at most MaxChunkBytes.
func splitChunk(p []byte) (chunkHeader, []byte, bool) {
	var h chunkHeader
	nl := bytes.IndexByte(p[:min(len(p), maxChunkHeader)], '\n')
	if nl < 0 || len(p)-nl-1 > MaxChunkBytes || json.Unmarshal(p[:nl], &h) != nil || h.Index < 0 {
		return h, nil, false
	}
	if b, err := hex.DecodeString(h.SHA256); err != nil || len(b) != 32 || h.SHA256 != hex.EncodeToString(b) {
		return h, nil, false // lower-case hex only: the claim's key is compared as a string
	}
	return h, p[nl+1:], true
}
