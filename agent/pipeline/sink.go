package pipeline

import (
	"context"
	"encoding/json"
	"io"
	"sync"

	"github.com/edge-agent/edge-agent/agent/result"
)

// WriterSink writes each result as one JSON line. A result that an earlier sink (the outbox)
// numbered keeps its number; otherwise the sink numbers results itself, per process from 1.
type WriterSink struct {
	mu  sync.Mutex
	w   io.Writer
	enc *json.Encoder
	seq uint64
}

// NewWriterSink writes JSON lines to w.
func NewWriterSink(w io.Writer) *WriterSink {
	return &WriterSink{w: w, enc: json.NewEncoder(w)}
}

// Put numbers the result when it has no number yet and writes the line.
func (s *WriterSink) Put(_ context.Context, r *result.Result) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if r.Seq == 0 {
		s.seq++
		r.Seq = s.seq
	}
	return s.enc.Encode(r)
}

// FuncSink adapts a function (tests, fan-out to observers).
type FuncSink func(ctx context.Context, r *result.Result) error

// Put calls f.
func (f FuncSink) Put(ctx context.Context, r *result.Result) error { return f(ctx, r) }
