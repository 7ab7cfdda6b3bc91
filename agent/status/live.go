package status

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"time"
)

// Bounds of one history point: a device serves a handful of models and monitors a few dozen
// statistics; beyond these the chart is unreadable anyway, and the ring stays bounded.
const (
	maxPointModels = 32
	maxPointDrift  = 64
)

// point is one sample of the charts.
type point struct {
	T      int64        `json:"t"` // unix milliseconds
	Models []modelPoint `json:"m"`
	Drift  []driftPoint `json:"d,omitempty"`
}

type modelPoint struct {
	Name string  `json:"n"`
	Rate float64 `json:"r"` // results per second since the previous point
	P50  float64 `json:"p50"`
	P95  float64 `json:"p95"`
	P99  float64 `json:"p99"`
}

type driftPoint struct {
	Key       string  `json:"k"` // model/feature/statistic
	Value     float64 `json:"v"`
	Threshold float64 `json:"th"`
}

// history is a fixed ring of points, oldest overwritten.
type history struct {
	mu  sync.Mutex
	buf []point
	n   int // points ever added
}

func newHistory(size int) *history { return &history{buf: make([]point, size)} }

func (h *history) add(p point) {
	h.mu.Lock()
	h.buf[h.n%len(h.buf)] = p
	h.n++
	h.mu.Unlock()
}

// all returns the points, oldest first.
func (h *history) all() []point {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := min(h.n, len(h.buf))
	out := make([]point, 0, n)
	for i := h.n - n; i < h.n; i++ {
		out = append(out, h.buf[i%len(h.buf)])
	}
	return out
}

// broadcaster hands each encoded update to every live stream. A stream holds one pending
// update: a slow reader gets the newest and skips the ones it missed, never holding up the
// sampler.
type broadcaster struct {
	mu   sync.Mutex
	subs map[chan []byte]struct{}
	max  int
}

func newBroadcaster(max int) *broadcaster {
	return &broadcaster{subs: map[chan []byte]struct{}{}, max: max}
}

// subscribe adds a stream, or reports false when max streams are open.
func (b *broadcaster) subscribe() (<-chan []byte, func(), bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.subs) >= b.max {
		return nil, nil, false
	}
	ch := make(chan []byte, 1)
	b.subs[ch] = struct{}{}
	var once sync.Once
	return ch, func() {
		once.Do(func() {
			b.mu.Lock()
			delete(b.subs, ch)
			b.mu.Unlock()
		})
	}, true
}

func (b *broadcaster) count() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.subs)
}

func (b *broadcaster) publish(msg []byte) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for ch := range b.subs {
		select {
		case ch <- msg:
		default: // replace the update the stream has not taken yet
			select {
			case <-ch:
			default:
			}
			ch <- msg // only publish sends, under mu: there is room now
		}
	}
}

// view is the snapshot as the page and the stream carry it.
type view struct {
	Snapshot
	Now         time.Time          `json:"now"`
	UptimeS     float64            `json:"uptime_s"`
	Ready       bool               `json:"ready"`
	ReadyReason string             `json:"ready_reason,omitempty"`
	Rates       map[string]float64 `json:"rates"`
	Every       float64            `json:"every_s"`
	HistoryLen  int                `json:"history_len"`
	Point       *point             `json:"point,omitempty"`
	// History is in a stream's first message only: the charts start full.
	History []point `json:"history,omitempty"`
}

func (s *Server) view(snap Snapshot) view {
	now := s.now()
	v := view{Snapshot: snap, Now: now.UTC(), Every: s.opt.Every.Seconds(), HistoryLen: s.opt.History, Rates: map[string]float64{}}
	if !snap.Started.IsZero() {
		v.UptimeS = now.Sub(snap.Started).Seconds()
	}
	if err := s.agent.Ready(); err != nil {
		v.ReadyReason = err.Error()
	} else {
		v.Ready = true
	}
	if r := s.rates.Load(); r != nil {
		v.Rates = *r
	}
	return v
}

// sample takes a snapshot every period, keeps its point in the history and sends it to the
// live streams, until ctx ends.
func (s *Server) sample(ctx context.Context) {
	t := time.NewTicker(s.opt.Every)
	defer t.Stop()
	prev := map[string]uint64{}
	var prevT time.Time
	for {
		now := s.now()
		snap := s.agent.Snapshot()
		p := point{T: now.UnixMilli()}
		rates := make(map[string]float64, len(snap.Models))
		for i, m := range snap.Models {
			var r float64
			if c, ok := prev[m.Name]; ok && !prevT.IsZero() && m.Results >= c && now.After(prevT) {
				r = float64(m.Results-c) / now.Sub(prevT).Seconds()
			}
			prev[m.Name] = m.Results
			rates[m.Name] = r
			if i < maxPointModels {
				p.Models = append(p.Models, modelPoint{Name: m.Name, Rate: r, P50: m.LatencyP50, P95: m.LatencyP95, P99: m.LatencyP99})
			}
		}
		for i, d := range snap.Drift {
			if i == maxPointDrift {
				break
			}
			p.Drift = append(p.Drift, driftPoint{Key: d.Model + "/" + d.Feature + "/" + d.Statistic, Value: d.Value, Threshold: d.Threshold})
		}
		prevT = now
		s.hist.add(p)
		s.rates.Store(&rates)
		if s.live.count() > 0 {
			v := s.view(snap)
			v.Point = &p
			if msg, err := sseMessage(v); err == nil {
				s.live.publish(msg)
			} else {
				s.log.Warn("status: encode live update", "err", err)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func sseMessage(v any) ([]byte, error) {
	var b bytes.Buffer
	b.WriteString("data: ")
	if err := json.NewEncoder(&b).Encode(v); err != nil { // one line: JSON escapes newlines
		return nil, err
	}
	b.WriteString("\n")
	return b.Bytes(), nil
}

// handleEvents is the live stream (text/event-stream): the whole view with the history
// first, then one update per sampling period, until the client goes or the server stops.
func (s *Server) handleEvents(w http.ResponseWriter, r *http.Request) {
	ch, cancel, ok := s.live.subscribe()
	if !ok {
		s.met.streamsRefused.Inc()
		writeError(w, http.StatusServiceUnavailable, fmt.Sprintf("too many live streams open (%d): close another status page", s.opt.MaxStreams))
		return
	}
	defer cancel()
	s.met.streams.Inc()
	defer s.met.streams.Dec()
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	rc := http.NewResponseController(w)
	v := s.view(s.agent.Snapshot())
	v.History = s.hist.all()
	first, err := sseMessage(v)
	if err != nil {
		writeError(w, http.StatusInternalServerError, "encode status: "+err.Error())
		return
	}
	send := func(msg []byte) bool {
		// A reader that takes nothing for 10s is gone; its stream must not hold a slot.
		rc.SetWriteDeadline(time.Now().Add(10 * time.Second))
		if _, err := w.Write(msg); err != nil {
			return false
		}
		return rc.Flush() == nil
	}
	w.WriteHeader(http.StatusOK)
	if !send(append([]byte("retry: 3000\n"), first...)) {
		return
	}
	for {
		select {
		case <-r.Context().Done(): // client gone, or the server's context ended
			return
		case msg := <-ch:
			if !send(msg) {
				return
			}
		}
	}
}

func (s *Server) handleStatusJSON(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	v := s.view(s.agent.Snapshot())
	if r.URL.Query().Get("history") == "1" {
		v.History = s.hist.all()
	}
	writeJSON(w, http.StatusOK, v)
}
