package link

import (
	"errors"
	"net"
	"sync"
	"time"
)

// queuedConn is the connection paho gets. Writes are queued for a goroutine that writes
// them in order, so paho's single writer never waits for the network.
//
// Why: paho hands each Publish to that writer synchronously, waiting up to WriteTimeout; if
// the connection dies during the wait the writer is gone and the call stays blocked until
// the timeout. With a writer that is always ready the wait is negligible and WriteTimeout can
// be short, while a large message on a slow uplink still has all the time it needs: progress
// is policed by AckTimeout and the keepalive (a stalled network stops PUBACKs and PINGRESPs
// and the session closes the connection), not by write deadlines, which are ignored here.
//
// The queue is bounded by what the link has in flight (InFlight messages per stream, plus
// status, metrics and pings).
type queuedConn struct {
	net.Conn          // reads go straight through
	raw      net.Conn // the TCP connection (under TLS, if any)

	mu      sync.Mutex
	cond    *sync.Cond
	pending []byte
	closing bool  // Close was called: flush, then close
	err     error // sticky: a failed write, or closed
}

// flushTimeout bounds writing what is queued when paho closes the connection (DISCONNECT).
const flushTimeout = time.Second

// newQueuedConn wraps conn (raw underneath) and starts its writer on wg.
func newQueuedConn(conn, raw net.Conn, wg *sync.WaitGroup) *queuedConn {
	c := &queuedConn{Conn: conn, raw: raw}
	c.cond = sync.NewCond(&c.mu)
	wg.Go(c.write)
	return c
}

// Read reads from the network. When a write failed, the writer closed the connection to
// stop the reader too; the reader then gets the write's error rather than "use of closed
// network connection", which paho takes for a close it asked for and would not report as a
// lost connection.
func (c *queuedConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if err != nil {
		c.mu.Lock()
		werr := c.err
		c.mu.Unlock()
		if werr != nil && !errors.Is(werr, net.ErrClosed) {
			return n, werr
		}
	}
	return n, err
}

func (c *queuedConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.err != nil:
		return 0, c.err
	case c.closing:
		return 0, net.ErrClosed
	}
	c.pending = append(c.pending, p...)
	c.cond.Signal()
	return len(p), nil
}

// write is the writer goroutine. It ends when a write fails, on kill, or once Close's
// flush is done.
func (c *queuedConn) write() {
	var buf []byte
	for {
		c.mu.Lock()
		for len(c.pending) == 0 && !c.closing && c.err == nil {
			c.cond.Wait()
		}
		if c.err != nil {
			c.mu.Unlock()
			return
		}
		buf, c.pending = c.pending, buf[:0]
		closing := c.closing
		c.mu.Unlock()
		if len(buf) == 0 { // closing, all written
			c.fail(net.ErrClosed)
			return
		}
		if closing {
			c.Conn.SetWriteDeadline(time.Now().Add(flushTimeout))
		}
		if _, err := c.Conn.Write(buf); err != nil {
			c.fail(err)
			return
		}
	}
}

// fail records err for later writes and closes the TCP connection, which also ends reads.
func (c *queuedConn) fail(err error) {
	c.mu.Lock()
	if c.err == nil {
		c.err = err
	}
	c.cond.Broadcast()
	c.mu.Unlock()
	c.raw.Close()
}

// Close lets the writer send what is queued (paho closes right after writing DISCONNECT)
// and then closes; it does not wait.
func (c *queuedConn) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closing = true
	c.cond.Signal()
	return nil
}

// kill closes at once, dropping what is queued: the broker sees the connection end without
// DISCONNECT and publishes the will.
func (c *queuedConn) kill() { c.fail(net.ErrClosed) }

// Deadlines apply to reads only (see the type's comment); paho sets them around the
// CONNECT/CONNACK handshake and around each write.
func (c *queuedConn) SetDeadline(t time.Time) error      { return c.Conn.SetReadDeadline(t) }
func (c *queuedConn) SetWriteDeadline(_ time.Time) error { return nil }
