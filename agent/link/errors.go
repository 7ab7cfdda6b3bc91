package link

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"reflect"
	"syscall"
	"time"

	"github.com/eclipse/paho.mqtt.golang/packets"
)

// linkError is a failure explained for the operator: what failed and which setting to check.
// Kind groups failures that are "the same" for log throttling, whatever their details
// (ports, addresses) are.
type linkError struct {
	kind string
	msg  string
	err  error
}

func (e *linkError) Error() string { return e.msg }
func (e *linkError) Unwrap() error { return e.err }

func newError(kind string, err error, format string, a ...any) *linkError {
	return &linkError{kind: kind, msg: fmt.Sprintf(format, a...), err: err}
}

// kindOf is the throttling key of any error the link reports.
func kindOf(err error) string {
	if le, ok := errors.AsType[*linkError](err); ok {
		return le.kind
	}
	return "other"
}

// attempt is what one connection attempt learned on the way, to explain a failure that the
// error alone does not: TLS 1.3 servers check the client certificate after the client has
// finished its handshake, so a rejection arrives as a reset while paho waits for CONNACK.
type attempt struct {
	broker        string
	device        string
	tls           bool
	haveCert      bool          // a client certificate is configured
	opened        bool          // TCP (and TLS) are up: the failure came in the MQTT handshake
	certRequested bool          // the broker asked for a client certificate
	timeout       time.Duration // mqtt.connect_timeout
}

// explainConnect turns a failed connection attempt into a linkError naming the cause and
// the setting to check. It decides on typed errors only, except for TLS alerts (see
// remoteAlert).
func explainConnect(err error, a attempt) *linkError {
	if le, ok := errors.AsType[*linkError](err); ok {
		return le
	}
	cause := pahoCause(err)
	switch {
	case errors.Is(err, packets.ErrorRefusedBadUsernameOrPassword):
		return newError("auth", err, "broker %s refused the login: bad user name or password; check mqtt.username and mqtt.password", a.broker)
	case errors.Is(err, packets.ErrorRefusedNotAuthorised):
		return newError("not-authorised", err, "broker %s refused the connection: not authorised (Mosquitto also answers this to a wrong password); check mqtt.username and mqtt.password and that the broker lets client %q connect", a.broker, a.device)
	case errors.Is(err, packets.ErrorRefusedIDRejected):
		return newError("client-id", err, "broker %s rejected client id %q; check device (the broker may restrict client ids)", a.broker, a.device)
	case errors.Is(err, packets.ErrorRefusedServerUnavailable):
		return newError("unavailable", err, "broker %s says it is unavailable; retrying", a.broker)
	case errors.Is(err, packets.ErrorRefusedBadProtocolVersion):
		return newError("protocol", err, "broker %s does not accept MQTT 3.1.1; check mqtt.broker", a.broker)
	}
	if e, ok := errors.AsType[x509.UnknownAuthorityError](err); ok {
		return newError("tls-unknown-ca", err, "the TLS certificate of broker %s is not signed by a CA this agent trusts (%v); check mqtt.ca_file (the system roots are used when it is empty)", a.broker, e)
	}
	if e, ok := errors.AsType[x509.HostnameError](err); ok {
		return newError("tls-hostname", err, "the TLS certificate of broker %s does not name the host we asked for (%v); set mqtt.server_name to a name it holds, or use that name in mqtt.broker", a.broker, e)
	}
	if e, ok := errors.AsType[x509.CertificateInvalidError](err); ok {
		return newError("tls-invalid", err, "the TLS certificate of broker %s is not valid (%v); check the broker's certificate and this board's clock", a.broker, e)
	}
	if alert, ok := remoteAlert(err); ok {
		return explainAlert(err, alert, a)
	}
	if _, ok := errors.AsType[tls.RecordHeaderError](err); ok {
		return newError("tls-not-tls", err, "broker %s did not answer with TLS (%v); check that its port is a TLS listener, or use tcp:// for plain MQTT", a.broker, cause)
	}
	closed := errors.Is(err, syscall.ECONNRESET) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.EPIPE)
	if closed && a.opened && a.certRequested {
		if !a.haveCert {
			return newError("tls-cert-required", err, "broker %s asked for a client certificate and closed the connection without one (%v); set mqtt.cert_file and mqtt.key_file", a.broker, cause)
		}
		return newError("tls-cert-rejected", err, "broker %s closed the connection right after the TLS handshake (%v): it most likely rejected our client certificate; check mqtt.cert_file and mqtt.key_file (signed by a CA the broker trusts, not expired)", a.broker, cause)
	}
	if closed && a.tls && !a.opened {
		return newError("tls-handshake", err, "the TLS handshake with broker %s failed (%v); check that its port is a TLS listener, or use tcp:// for plain MQTT", a.broker, cause)
	}
	if closed && !a.tls && a.opened {
		return newError("closed-in-handshake", err, "broker %s closed the connection before answering CONNECT (%v); if its port is a TLS listener use ssl://, otherwise check the broker's log", a.broker, cause)
	}
	if errors.Is(err, syscall.ECONNREFUSED) {
		return newError("refused", err, "connection to %s refused: is the broker running and listening there? check mqtt.broker", a.broker)
	}
	if e, ok := errors.AsType[*net.DNSError](err); ok {
		return newError("dns", err, "cannot resolve the host of broker %s (%v); check mqtt.broker and the board's DNS", a.broker, e)
	}
	if isTimeout(err) {
		return newError("timeout", err, "no answer from broker %s within %v (mqtt.connect_timeout); check the network, a firewall, and mqtt.broker", a.broker, a.timeout)
	}
	if errors.Is(err, syscall.EHOSTUNREACH) || errors.Is(err, syscall.ENETUNREACH) {
		return newError("unreachable", err, "broker %s is unreachable (%v); check the board's network and mqtt.broker", a.broker, cause)
	}
	return newError("connect", err, "connect to broker %s: %v", a.broker, cause)
}

func explainAlert(err error, alert uint8, a attempt) *linkError {
	name := tls.AlertError(alert).Error()
	switch {
	case alert == alertCertificateRequired || (!a.haveCert && alert == alertHandshakeFailure && a.certRequested):
		return newError("tls-cert-required", err, "broker %s requires a client certificate (TLS alert %q); set mqtt.cert_file and mqtt.key_file", a.broker, name)
	case alert == alertHandshakeFailure:
		return newError("tls-handshake", err, "broker %s ended the TLS handshake (alert %q): it may require a client certificate (mqtt.cert_file, mqtt.key_file) or TLS settings this agent does not offer", a.broker, name)
	case alert == alertProtocolVersion:
		return newError("tls-version", err, "broker %s and this agent share no TLS version (alert %q); the agent needs TLS 1.2 or later", a.broker, name)
	case certAlert(alert):
		if !a.haveCert {
			return newError("tls-cert-required", err, "broker %s refused the TLS connection (alert %q): it wants a client certificate; set mqtt.cert_file and mqtt.key_file", a.broker, name)
		}
		return newError("tls-cert-rejected", err, "broker %s rejected our client certificate (TLS alert %q); check mqtt.cert_file and mqtt.key_file (signed by a CA the broker trusts, not expired)", a.broker, name)
	}
	return newError("tls-alert", err, "broker %s ended the TLS connection (alert %q); check its TLS settings and mqtt.ca_file, mqtt.cert_file, mqtt.key_file", a.broker, name)
}

// TLS alert numbers (RFC 8446 section 6).
const (
	alertHandshakeFailure    = 40
	alertProtocolVersion     = 70
	alertCertificateRequired = 116
)

// certAlert tells the alerts a server sends about the client's certificate: bad,
// unsupported, revoked, expired, unknown certificate, unknown CA, access denied.
func certAlert(a uint8) bool {
	switch a {
	case 42, 43, 44, 45, 46, 48, 49:
		return true
	}
	return false
}

// remoteAlert finds a TLS alert the broker sent. crypto/tls reports a received alert as
// net.OpError{Op: "remote error", Err: alert(n)} where alert is an unexported uint8 type, and
// offers no exported way to get n (tls.AlertError is only used for QUIC). So the number is
// read by reflection on that type's kind and package rather than by matching the message.
func remoteAlert(err error) (uint8, bool) {
	var found uint8
	ok := walkErrors(err, func(e error) bool {
		t := reflect.TypeOf(e)
		if t.Kind() == reflect.Uint8 && t.PkgPath() == "crypto/tls" && t.Name() == "alert" {
			found = uint8(reflect.ValueOf(e).Uint())
			return true
		}
		return false
	})
	return found, ok
}

// walkErrors calls fn on err and everything it wraps until fn returns true.
func walkErrors(err error, fn func(error) bool) bool {
	if err == nil {
		return false
	}
	if fn(err) {
		return true
	}
	switch u := err.(type) {
	case interface{ Unwrap() error }:
		return walkErrors(u.Unwrap(), fn)
	case interface{ Unwrap() []error }:
		for _, e := range u.Unwrap() {
			if walkErrors(e, fn) {
				return true
			}
		}
	}
	return false
}

// pahoCause strips paho's "network Error : " wrapper, which adds nothing for the operator.
func pahoCause(err error) error {
	if u, ok := err.(interface{ Unwrap() []error }); ok {
		if es := u.Unwrap(); len(es) == 2 && es[0] == packets.ErrorNetworkError {
			return es[1]
		}
	}
	return err
}

func isTimeout(err error) bool {
	if errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	ne, ok := errors.AsType[net.Error](err)
	return ok && ne.Timeout()
}
