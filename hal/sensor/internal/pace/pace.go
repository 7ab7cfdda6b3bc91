// Package pace holds the timing helpers the sensor kinds share. It imports nothing from
// agent/.
package pace

import (
	"context"
	"time"
)

// Pacer spaces frames Period apart. The zero Period means as fast as possible.
type Pacer struct {
	Period time.Duration
	next   time.Time
}

// Wait returns true when the next frame may be produced: at once the first time, then one
// Period after the previous one. It returns false if ctx is done. A consumer that fell more
// than a Period behind restarts the schedule rather than catching up in a burst.
func (p *Pacer) Wait(ctx context.Context) bool {
	if ctx.Err() != nil {
		return false
	}
	if p.Period <= 0 {
		return true
	}
	if !p.next.IsZero() {
		if !Sleep(ctx, time.Until(p.next)) {
			return false
		}
	}
	now := time.Now()
	if p.next.IsZero() || now.Sub(p.next) > p.Period {
		p.next = now
	}
	p.next = p.next.Add(p.Period)
	return true
}

// Sleep waits d, returning false early if ctx is done.
func Sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// Gate lets frames through at most once per Period and drops the rest, for sources driven by
// their input (a camera pipe, a topic) where waiting would only delay the newest reading.
type Gate struct {
	Period time.Duration
	last   time.Time
}

// Allow reports whether a frame arriving at now passes, and if so records it.
func (g *Gate) Allow(now time.Time) bool {
	if g.Period > 0 && !g.last.IsZero() && now.Sub(g.last) < g.Period {
		return false
	}
	g.last = now
	return true
}
