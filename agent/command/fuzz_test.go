package command

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// FuzzHandle: Handle never panics, replies at most once, and every reply is well formed
// with a valid status; a second delivery of an accepted command gets no reply. Both a
// router that takes plain commands and one that requires signed envelopes see each input.
func FuzzHandle(f *testing.F) {
	for _, seed := range [][]byte{
		cmd("c-1", "echo"),
		cmd("bad id", "echo"),
		cmd("c-2", "reboot"),
		cmdAt("c-3", "echo", `[1,2,{"a":null}]`, t0, t0.Add(time.Minute)),
		cmdAt("c-4", "echo", "", t0.Add(-2*time.Hour), t0.Add(-time.Hour)),
		cmdAt("c-5", "echo", "", t0.Add(time.Hour), t0.Add(2*time.Hour)),
		cmdAt("c-6", "echo", "", t0, t0.Add(48*time.Hour)),
		envelope(cmd("c-7", "echo"), "good"),
		envelope(cmd("c-8", "echo"), "bad"),
		envelope([]byte("not json"), "good"),
		[]byte(`{"id": "c-9", "type": `),
		[]byte(`{"body": 1, "sig": []}`),
		[]byte(`{"ID": "c-10", "Type": "echo", "issued_at": "2025-03-01T12:00:00Z", "expires": "9999-12-31T23:59:59Z"}`),
		[]byte(`{"id": "c-11", "type": "echo", "issued_at": "0001-01-01T00:00:00Z", "expires": "0001-01-01T00:00:01Z"}`),
		[]byte(`null`),
		[]byte(`"id"`),
		[]byte(``),
		[]byte(strings.Repeat("{", 5000)),
	} {
		f.Add(seed)
	}
	valid := map[string]bool{StatusAccepted: true, StatusFailed: true}
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, opt := range []Options{{AllowUnsigned: true}, {Verify: fakeVerify}, {Verify: fakeVerify, AllowUnsigned: true}, {}} {
			opt.MaxBytes, opt.Queue, opt.Handlers = 4096, 1, map[string]Handler{"echo": echo}
			h := newStrict(t, opt)
			var first Reply
			for i := range 2 {
				h.r.Handle(data)
				if len(h.replies) > 1 {
					t.Fatalf("delivery %d: got %d replies; want at most 1", i, len(h.replies))
				}
				if len(h.replies) == 0 {
					continue
				}
				r := <-h.replies
				if !valid[r.Status] || r.Schema != ReplySchema || r.Device != "dev-1" || r.ID == "" || (r.Status == StatusFailed) != (r.Reason != "") {
					t.Fatalf("delivery %d: bad reply %+v", i, r)
				}
				if _, err := json.Marshal(r); err != nil {
					t.Fatalf("delivery %d: reply does not encode: %v", i, err)
				}
				if i == 0 {
					first = r
				} else if first.Status == StatusAccepted {
					t.Fatalf("replayed accepted command: got reply %+v; want none", r)
				}
			}
			// What was accepted runs to a valid end.
			if first.Status == StatusAccepted {
				ctx, cancel := context.WithCancel(context.Background())
				done := make(chan struct{})
				go func() { defer close(done); h.r.Run(ctx) }()
				r := h.next(t)
				cancel()
				<-done
				if r.Status != StatusDone && r.Status != StatusFailed {
					t.Fatalf("final reply: got %+v; want done or failed", r)
				}
			}
		}
	})
}
