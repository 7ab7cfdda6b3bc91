package link

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/url"
	"slices"
	"sync"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// Shutdown bounds: how long a graceful stop waits for in-flight PUBACKs, then for the
// broker to acknowledge the offline status, then for DISCONNECT to be written.
const (
	drainTimeout      = 3 * time.Second
	goodbyeTimeout    = 2 * time.Second
	disconnectQuiesce = 250 // ms
)

// session is one connection: a fresh paho client with an empty store, the network
// connection under it, and what the attempt learned for explaining a failure.
type session struct {
	l      *Link
	nonce  string // in the online status and the will of this connection
	client mqtt.Client
	lost   chan error    // paho's connection-lost callback
	echo   chan struct{} // our online status came back to us

	mu      sync.Mutex
	conn    *queuedConn // what paho writes to; kill ends the connection without DISCONNECT, so the broker publishes the will
	aborted bool
	att     attempt
}

// connect makes one connection and keeps it until it fails or ctx ends. onlineFor is how
// long it was online, 0 when it never got there.
func (l *Link) connect(ctx context.Context) (onlineFor time.Duration, err error) {
	var b [16]byte
	rand.Read(b[:])
	s := &session{
		l: l, nonce: hex.EncodeToString(b[:]),
		lost: make(chan error, 1), echo: make(chan struct{}, 1),
		att: attempt{broker: l.cfg.url.String(), device: l.cfg.Device, tls: l.cfg.tls != nil,
			haveCert: l.cfg.cert != nil, timeout: l.cfg.ConnectTimeout},
	}
	// paho closes the connection on every way out; closing again is harmless and makes sure
	// the writer ends, which Run waits for.
	defer s.close()
	sessionPresent, err := s.open(ctx)
	if err != nil {
		return 0, err
	}
	start := l.now()
	l.mu.Lock()
	l.state, l.session, l.connectedSince = StateOnline, s.nonce, start
	l.connects++
	failed := l.failStreak
	l.failStreak = 0
	l.connectLog = throttle{} // the next failure is news
	l.mu.Unlock()
	attrs := []any{"broker", l.cfg.url.String(), "client_id", l.cfg.Device, "session", s.nonce, "session_present", sessionPresent}
	if failed > 0 {
		attrs = append(attrs, "after_failed_attempts", failed)
	}
	l.log.Info("mqtt online", attrs...)
	err = s.serve(ctx)
	// At least 1ns: a connection that got online is never counted as a failed attempt, even
	// with a clock that does not move.
	return max(l.now().Sub(start), time.Nanosecond), err
}

// open connects and checks that the broker takes our writes. On failure nothing is left
// running.
func (s *session) open(ctx context.Context) (sessionPresent bool, err error) {
	l, c := s.l, s.l.cfg
	will, _ := l.statusPayload(wireOffline, s.nonce, false)
	opts := mqtt.NewClientOptions().
		AddBroker(c.url.String()).
		SetClientID(c.Device).
		SetUsername(c.Username).
		SetPassword(c.Password).
		// A persistent session: the broker keeps our subscriptions and queues QoS 1
		// messages for us while we are away.
		SetCleanSession(false).
		// Our own reconnect loop, never paho's: see the package comment.
		SetAutoReconnect(false).
		SetConnectRetry(false).
		SetStore(mqtt.NewMemoryStore()).
		SetProtocolVersion(4). // no silent retry with MQTT 3.1 doubling every failure
		SetKeepAlive(c.KeepAlive).
		SetPingTimeout(c.ConnectTimeout).
		SetConnectTimeout(c.ConnectTimeout).
		// Only bounds handing a packet to paho's writer, which queuedConn keeps ready.
		SetWriteTimeout(c.ConnectTimeout).
		SetBinaryWill(l.topics.status, will, 1, true).
		// Every message that reaches us goes here; a message without a handler would never
		// be acknowledged and the broker would keep re-sending it.
		SetDefaultPublishHandler(s.onMessage).
		SetConnectionLostHandler(func(_ mqtt.Client, err error) {
			select {
			case s.lost <- err:
			default:
			}
		}).
		SetCustomOpenConnectionFn(func(*url.URL, mqtt.ClientOptions) (net.Conn, error) { return s.dial(ctx) })
	s.client = mqtt.NewClient(opts)
	tok := s.client.Connect()
	select {
	case <-tok.Done():
	case <-ctx.Done():
		s.abort() // the dial follows ctx; a CONNACK wait needs its connection closed
		<-tok.Done()
		s.client.Disconnect(0)
		return false, ctx.Err()
	}
	if err := tok.Error(); err != nil {
		s.mu.Lock()
		att := s.att
		s.mu.Unlock()
		return false, explainConnect(err, att)
	}
	if err := s.check(ctx); err != nil {
		s.abort()
		s.client.Disconnect(0)
		return false, err
	}
	return tok.(*mqtt.ConnectToken).SessionPresent(), nil
}

// dial opens TCP and TLS for paho, following ctx and mqtt.connect_timeout, and keeps the
// connection so abort can close it.
func (s *session) dial(ctx context.Context) (net.Conn, error) {
	c := s.l.cfg
	dctx, cancel := context.WithTimeout(ctx, c.ConnectTimeout)
	defer cancel()
	var d net.Dialer
	raw, err := d.DialContext(dctx, "tcp", c.url.Host)
	if err != nil {
		return nil, err
	}
	conn := raw
	if c.tls != nil {
		cfg := c.tls.Clone()
		// Called only when the broker asks for a client certificate; remembering that
		// explains a connection the broker drops later (TLS 1.3 checks the certificate
		// after the client's handshake is done).
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			s.mu.Lock()
			s.att.certRequested = true
			s.mu.Unlock()
			if c.cert != nil {
				return c.cert, nil
			}
			return &tls.Certificate{}, nil
		}
		tc := tls.Client(raw, cfg)
		if err := tc.HandshakeContext(dctx); err != nil {
			raw.Close()
			return nil, err
		}
		conn = tc
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.aborted {
		raw.Close()
		return nil, context.Canceled
	}
	s.conn, s.att.opened = newQueuedConn(conn, raw, &s.l.bg), true
	return s.conn, nil
}

// call runs a paho Publish or Subscribe on a goroutine of its own and hands back the token.
// paho checks that the client is connected and then waits, up to WriteTimeout, to hand the
// packet to its writer; if the connection dies in between, that writer is gone and nothing
// frees the call before the timeout (queuedConn keeps this window small, but it exists). Run
// waits for these goroutines, so they stay owned, but a session or a sender never stalls on
// one.
func (l *Link) call(f func() mqtt.Token) <-chan mqtt.Token {
	c := make(chan mqtt.Token, 1)
	l.bg.Go(func() { c <- f() })
	return c
}

// abort ends the connection without DISCONNECT: the broker publishes our will, and any
// paho call waiting on the network returns.
func (s *session) abort() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.aborted = true
	if s.conn != nil {
		s.conn.kill()
	}
}

// close flushes what paho wrote and closes the connection (no-op when already closed).
func (s *session) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conn != nil {
		s.conn.Close()
	}
}

// onMessage runs on paho's router goroutine and must not block.
func (s *session) onMessage(_ mqtt.Client, m mqtt.Message) {
	if m.Topic() != s.l.topics.status {
		// Every subscription is made without a callback, so messages the broker kept for
		// the persistent session, which arrive before we subscribe again, land here too.
		if s.l.opt.Commands != nil && m.Topic() == s.l.topics.chunk {
			s.l.onChunk(m.Payload())
			return
		}
		if s.l.opt.Commands != nil && slices.Contains(s.l.cmdTopics, m.Topic()) {
			s.l.mu.Lock()
			s.l.commands++
			s.l.mu.Unlock()
			s.l.opt.Commands(m.Topic(), m.Payload())
		}
		return
	}
	var st struct{ State, Session string }
	if json.Unmarshal(m.Payload(), &st) == nil && st.State == wireOnline && st.Session == s.nonce {
		select {
		case s.echo <- struct{}{}:
		default:
		}
	}
}

// check verifies that the broker takes our writes before anything is read from the queues.
// MQTT 3.1.1 cannot tell a client that an ACL dropped its PUBLISH: Mosquitto logs "Denied
// PUBLISH" and still sends PUBACK, so results would be acknowledged and lost. So we
// subscribe to our own status topic, publish the retained online status with this
// connection's nonce, and wait to receive it back.
func (s *session) check(ctx context.Context) error {
	l := s.l
	topic, broker, limit := l.topics.status, l.cfg.url.String(), l.cfg.ConnectTimeout
	deadline := time.NewTimer(limit)
	defer deadline.Stop()
	lost := func(err error) error {
		return newError("lost-in-check", err, "connection to broker %s lost while checking that it takes our writes: %v", broker, err)
	}
	noAnswer := func(what string) error {
		return newError("check-timeout", nil, "broker %s accepted the connection but sent no %s within %v (mqtt.connect_timeout)", broker, what, limit)
	}
	await := func(done <-chan struct{}, what string) error {
		select {
		case <-done:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		case err := <-s.lost:
			return lost(err)
		case <-deadline.C:
			return noAnswer(what)
		}
	}
	// request sends a SUBSCRIBE or PUBLISH and waits for the broker's acknowledgement.
	request := func(what string, f func() mqtt.Token) (mqtt.Token, error) {
		var tok mqtt.Token
		select {
		case tok = <-l.call(f):
		case <-ctx.Done():
			return nil, ctx.Err()
		case err := <-s.lost:
			return nil, lost(err)
		case <-deadline.C:
			return nil, noAnswer(what)
		}
		if err := await(tok.Done(), what); err != nil {
			return nil, err
		}
		if err := tok.Error(); err != nil {
			return nil, newError("check", err, "%s on broker %s: %v", what, broker, err)
		}
		return tok, nil
	}

	sub, err := request("SUBACK for "+topic, func() mqtt.Token { return s.client.Subscribe(topic, 1, nil) })
	if err != nil {
		return err
	}
	verify := true
	if code, ok := sub.(*mqtt.SubscribeToken).Result()[topic]; !ok || code > 2 {
		verify = false
		l.mu.Lock()
		warn := !l.subackWarned
		l.subackWarned = true
		l.mu.Unlock()
		if warn {
			l.log.Warn("mqtt broker refused our subscription to our own status topic, so the link cannot verify that the broker's ACL lets it publish; results the ACL drops would be lost. Check the broker's acl_file (the device needs read access to its status topic)",
				"topic", topic, "client_id", l.cfg.Device)
		}
	}
	payload, _ := l.statusPayload(wireOnline, s.nonce, true)
	if _, err := request("PUBACK for our status", func() mqtt.Token { return s.client.Publish(topic, 1, true, payload) }); err != nil {
		return err
	}
	if verify {
		if err := await(s.echo, "echo of our status"); err != nil {
			if kindOf(err) == "check-timeout" {
				return newError("acl", nil, "broker accepted the connection but dropped our publish to %s: its ACL does not let client %s write there (MQTT 3.1.1 cannot report this; check the broker's acl_file; the device also needs read access to that topic for this check)", topic, l.cfg.Device)
			}
			return err
		}
	}
	topics := l.cmdTopics
	if l.opt.Commands != nil {
		topics = append(slices.Clip(topics), l.topics.chunk)
	}
	for _, ct := range topics {
		tok, err := request("SUBACK for "+ct, func() mqtt.Token { return s.client.Subscribe(ct, 1, nil) })
		if err != nil {
			return err
		}
		if code, ok := tok.(*mqtt.SubscribeToken).Result()[ct]; !ok || code > 2 {
			l.log.Warn("mqtt broker refused our subscription to a command topic: commands (or pushed bundle chunks) sent there will not arrive; check the broker's acl_file", "topic", ct)
		}
	}
	return nil
}

// serve sends the streams until the connection fails or ctx ends. On ctx it drains what is
// in flight, publishes the offline status and disconnects; on failure it drops the
// connection without DISCONNECT so the broker publishes the will.
func (s *session) serve(ctx context.Context) error {
	l := s.l
	// Senders and their readers stop on sctx, which outlives ctx for the graceful drain.
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	errc := make(chan error, len(l.streams))
	var senders, aux sync.WaitGroup
	for _, st := range l.streams {
		senders.Go(func() {
			if err := l.send(sctx, ctx.Done(), s, st); err != nil {
				errc <- err
			}
		})
	}
	sendersDone := make(chan struct{})
	go func() { senders.Wait(); close(sendersDone) }()
	aux.Go(func() { s.refresh(sctx) })

	var why error
	select {
	case <-ctx.Done():
	case err := <-s.lost:
		why = fmt.Errorf("connection to %s lost: %w", l.cfg.url, err)
	case why = <-errc:
	}
	if why == nil {
		t := time.NewTimer(min(drainTimeout, l.cfg.AckTimeout))
		select {
		case <-sendersDone:
		case err := <-s.lost:
			why = fmt.Errorf("connection to %s lost while stopping: %w", l.cfg.url, err)
		case why = <-errc:
		case <-t.C:
			why = errors.New("in-flight messages not acknowledged in time while stopping; they stay queued")
		}
		t.Stop()
	}
	cancel()
	if why != nil {
		s.abort()
	}
	<-sendersDone
	aux.Wait()
	l.dropQueuedMetrics()
	if why == nil {
		why = s.goodbye()
		if why == nil {
			l.log.Info("mqtt offline: stopped", "broker", l.cfg.url.String())
			return nil
		}
		l.log.Warn("mqtt stop: the offline status was not acknowledged; the broker will publish the last will", "err", why)
		s.abort()
	}
	s.client.Disconnect(0)
	return why
}

// goodbye publishes the retained offline status and disconnects cleanly (the broker then
// discards the will, which would say the same).
func (s *session) goodbye() error {
	payload, _ := s.l.statusPayload(wireOffline, s.nonce, false)
	t := time.NewTimer(min(goodbyeTimeout, s.l.cfg.AckTimeout))
	defer t.Stop()
	var tok mqtt.Token
	select {
	case tok = <-s.l.call(func() mqtt.Token { return s.client.Publish(s.l.topics.status, 1, true, payload) }):
	case <-t.C:
		return errors.New("paho did not take the offline status")
	}
	select {
	case <-tok.Done():
	case <-t.C:
		return errors.New("no PUBACK for the offline status")
	}
	if err := tok.Error(); err != nil {
		return err
	}
	s.client.Disconnect(disconnectQuiesce)
	return nil
}

// refresh re-publishes the retained online status every StatusEvery and sends metrics.
// Tokens are not waited on: a broken connection shows in the streams' PUBACKs.
func (s *session) refresh(ctx context.Context) {
	l := s.l
	t := time.NewTicker(l.cfg.StatusEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			payload, _ := l.statusPayload(wireOnline, s.nonce, true)
			l.call(func() mqtt.Token { return s.client.Publish(l.topics.status, 1, true, payload) })
		case <-l.statusNow:
			payload, _ := l.statusPayload(wireOnline, s.nonce, true)
			l.call(func() mqtt.Token { return s.client.Publish(l.topics.status, 1, true, payload) })
		case p := <-l.metrics:
			l.call(func() mqtt.Token { return s.client.Publish(l.topics.metrics, 0, false, p) })
			l.mu.Lock()
			l.metricsSent++
			l.mu.Unlock()
		case p := <-l.replies:
			// Replies keep their order (accepted before done): the next is handed to paho
			// only after it has queued this one.
			select {
			case <-l.call(func() mqtt.Token { return s.client.Publish(l.topics.reply, 1, false, p) }):
			case <-ctx.Done():
			}
			l.mu.Lock()
			l.repliesSent++
			l.mu.Unlock()
		case p := <-l.needs:
			select {
			case <-l.call(func() mqtt.Token { return s.client.Publish(l.topics.need, 1, false, p) }):
			case <-ctx.Done():
			}
			l.mu.Lock()
			l.push.NeedsSent++
			l.mu.Unlock()
		}
	}
}

// dropQueuedMetrics discards metrics the ending connection did not send: by the next
// connection they are stale.
func (l *Link) dropQueuedMetrics() {
	for {
		select {
		case <-l.metrics:
			l.mu.Lock()
			l.metricsDropped++
			l.mu.Unlock()
		default:
			return
		}
	}
}

// statusPayload builds this device's status; with extra, Options.Status adds its fields. A
// broken Status result is logged and left out.
func (l *Link) statusPayload(state, nonce string, extra bool) ([]byte, error) {
	base := statusBase{Schema: StatusSchema, Device: l.cfg.Device, State: state, Session: nonce, TS: l.now().UTC()}
	var more json.RawMessage
	if extra && l.opt.Status != nil {
		more = l.opt.Status()
	}
	b, err := statusPayload(base, more)
	if err != nil {
		l.log.Warn("mqtt status: the agent's extra status fields are not a JSON object; sent without them", "err", err)
	}
	return b, err
}
