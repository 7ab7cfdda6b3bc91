package agent

// Bundles pushed over MQTT (docs/mqtt.md, "Bundles pushed over MQTT"): a deploy command with
// args {"push": {sha256, size, chunk_size, chunks}} makes the device ask for the chunks on
// <prefix>/<device>/bundle/need and take them from <prefix>/<device>/bundle/chunk.
//
//	deploy handler ──ReceiveChunks──▶ link (claims the bundle's chunks)
//	      │  ▲                              ▲
//	      │  └──── chunks (bounded inbox) ──┘◀── pusher (edgectl deploy)
//	      ├──Need──▶ link ──▶ …/bundle/need ──▶ pusher
//	      └──Put──▶ deploy.Assembler (<state_dir>/downloads/<sha256>.part + .have)
//
// The handler's goroutine does all of it: it asks for a window of missing chunks, asks for
// more as they arrive, asks again for what is still missing after pushAskAgain without a new
// chunk, and gives up after pushGiveUp. The assembled file is installed like a downloaded one.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"time"

	"github.com/edge-agent/edge-agent/agent/command"
	"github.com/edge-agent/edge-agent/agent/deploy"
	"github.com/edge-agent/edge-agent/agent/link"
)

// NeedSchema is the schema of need requests.
const NeedSchema = "edge-agent/bundle-need/v1"

// Pushed-bundle pacing and bounds.
const (
	// pushWindow bounds the chunks asked for and not yet received, and so the chunks that
	// can wait in the link's inbox; pushWindowBytes bounds the same in bytes (8 MiB), so
	// large chunks get a smaller window.
	pushWindow      = 32
	pushWindowBytes = 8 << 20
	// pushAskAgain: after this long without a new chunk, what is missing is asked again.
	pushAskAgain = 2 * time.Second
	// pushGiveUp: after this long without a new chunk the command fails (what was received
	// is kept for the next one).
	pushGiveUp = 60 * time.Second
	// pushMaxRefused bounds how often one chunk may fail its check before the command
	// fails: a pusher sending another file would otherwise be asked forever.
	pushMaxRefused = 5
)

// bundleNeed is a need request (edge-agent/bundle-need/v1).
type bundleNeed struct {
	Schema string `json:"schema"`
	Device string `json:"device"`
	ID     string `json:"id"`
	SHA256 string `json:"sha256"`
	Chunks []int  `json:"chunks"`
}

// receivePush collects the chunks of a pushed bundle and returns the checked file. release
// deletes the files and frees the bundle for another command; call it once the file is
// installed (or refused). On error everything is released and what was verified is kept for
// a later deploy of the same bundle.
func (a *Agent) receivePush(ctx context.Context, id string, spec deploy.PushSpec, progress command.Progress) (path string, release func(), err error) {
	if a.fleet == nil {
		return "", nil, errors.New("this agent runs without the fleet link, so a pushed bundle cannot reach it: deploy by url")
	}
	spec, err = spec.Check(maxBundleBytes)
	if err != nil {
		return "", nil, err
	}
	window := min(max(pushWindowBytes/spec.ChunkSize, 1), pushWindow)
	inbox, err := a.fleet.link.ReceiveChunks(ctx, spec.SHA256, window)
	if err != nil {
		return "", nil, fmt.Errorf("push: waiting for another command receiving the same bundle to stop: %w", err)
	}
	asm, err := deploy.OpenAssembler(filepath.Join(a.cfg.StateDir, "downloads"), spec)
	if err != nil {
		inbox.Close()
		return "", nil, err
	}
	r := &pushReceiver{a: a, id: id, spec: spec, asm: asm, inbox: inbox, window: window,
		progress: progress, asked: map[int]bool{}, refused: map[int]int{}}
	path, err = r.run(ctx)
	if err != nil {
		asm.Close()
		inbox.Close()
		return "", nil, err
	}
	return path, func() {
		if err := asm.Remove(); err != nil {
			a.log.Warn("push: could not delete the assembled bundle", "sha256", spec.SHA256, "err", err)
		}
		inbox.Close()
	}, nil
}

// pushReceiver is one command's transfer; only the handler's goroutine uses it.
type pushReceiver struct {
	a        *Agent
	id       string
	spec     deploy.PushSpec
	asm      *deploy.Assembler
	inbox    *link.ChunkInbox
	window   int
	progress command.Progress
	asked    map[int]bool // asked for and not received yet
	refused  map[int]int  // chunk → times it failed its check
}

// run asks for and stores chunks until the bundle is complete and checked.
func (r *pushReceiver) run(ctx context.Context) (string, error) {
	n := len(r.spec.Chunks)
	if got, _ := r.asm.Progress(); got > 0 {
		r.a.log.Info("push: resuming", "id", r.id, "sha256", r.spec.SHA256, "have_chunks", got, "of", n)
	}
	r.report()
	r.topUp()
	askAgain := time.NewTimer(pushAskAgain)
	defer askAgain.Stop()
	lastNew := time.Now()
	for !r.asm.Complete() {
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("pushed deploy stopped (%v) with %s; they are kept: send the deploy again to resume", context.Cause(ctx), r.have())
		case <-r.inbox.Taken():
			return "", fmt.Errorf("a newer deploy command for the same bundle took over the transfer, with %s", r.have())
		case <-askAgain.C:
			if time.Since(lastNew) >= pushGiveUp {
				return "", fmt.Errorf("no chunk for %ds: is the pusher (edgectl deploy) still running? send the deploy again to resume (%s are kept)", int(pushGiveUp.Seconds()), r.have())
			}
			r.askAgain()
			askAgain.Reset(pushAskAgain)
		case c := <-r.inbox.C():
			fresh, err := r.asm.Put(c.Index, c.Data)
			switch {
			case errors.Is(err, deploy.ErrChunkHash), errors.Is(err, deploy.ErrChunkIndex):
				r.inbox.Refuse()
				r.a.log.Warn("push: chunk refused; asking for it again", "id", r.id, "err", err)
				if c.Index < 0 || c.Index >= n {
					continue
				}
				if r.refused[c.Index]++; r.refused[c.Index] >= pushMaxRefused {
					return "", fmt.Errorf("chunk %d failed its sha256 check %d times: is the pusher sending another file than the one the command describes? send the deploy again from the right file (%s are kept)", c.Index, pushMaxRefused, r.have())
				}
				r.asked[c.Index] = true
				r.need([]int{c.Index})
			case err != nil:
				return "", fmt.Errorf("push: %w (check free space in the state dir; %s are kept)", err, r.have())
			case fresh:
				delete(r.asked, c.Index)
				lastNew = time.Now()
				askAgain.Reset(pushAskAgain) // Go ≥ 1.23 timers: no stale tick survives a Reset
				r.report()
				r.topUp()
			}
		}
	}
	return r.asm.Finish()
}

// topUp asks for the first missing chunks not asked for yet once at most half the window is
// outstanding, so that requests go out in batches rather than one per chunk.
func (r *pushReceiver) topUp() {
	if len(r.asked) > r.window/2 {
		return
	}
	var more []int
	for _, i := range r.asm.Missing() {
		if len(r.asked)+len(more) >= r.window {
			break
		}
		if !r.asked[i] {
			more = append(more, i)
		}
	}
	for _, i := range more {
		r.asked[i] = true
	}
	r.need(more)
}

// askAgain asks once more for every outstanding chunk (a lost chunk, a lost request, a
// pusher that restarted), then tops the window up.
func (r *pushReceiver) askAgain() {
	again := slices.Sorted(func(yield func(int) bool) {
		for i := range r.asked {
			if !yield(i) {
				return
			}
		}
	})
	r.a.log.Info("push: asking again", "id", r.id, "chunks", again, "have", r.have())
	r.need(again)
	r.topUp()
}

// need sends a need request. A request the link's queue cannot take is asked again later.
func (r *pushReceiver) need(chunks []int) {
	if len(chunks) == 0 {
		return
	}
	b, _ := json.Marshal(bundleNeed{Schema: NeedSchema, Device: r.a.cfg.Device, ID: r.id, SHA256: r.spec.SHA256, Chunks: chunks})
	r.a.fleet.link.Need(b)
}

func (r *pushReceiver) report() {
	got, bytes := r.asm.Progress()
	r.progress(float64(bytes)/float64(r.spec.Size), fmt.Sprintf("received %d of %d chunks (%d of %d bytes)", got, len(r.spec.Chunks), bytes, r.spec.Size))
}

// have says how much is received, for errors and logs.
func (r *pushReceiver) have() string {
	got, _ := r.asm.Progress()
	return fmt.Sprintf("%d of %d chunks received", got, len(r.spec.Chunks))
}
