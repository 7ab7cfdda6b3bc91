package link_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/edge-agent/edge-agent/agent/link"
	"github.com/edge-agent/edge-agent/internal/testenv"
)

// The fleet broker as deployed: TLS with a private CA, client certificates required, a
// password file and an ACL giving each device its own topics.
const fleetACL = "pattern readwrite edge/%c/#\nuser observer\ntopic read edge/#"

var fleetUsers = map[string]string{"dev1": "s3cret", "observer": "watch"}

// Every way the broker can refuse the device: the link never gets online, says why and
// which setting to check (in Stats and in its log), and retries with backoff, not in a loop.
func TestRefusedConnectionsAreExplained(t *testing.T) {
	pki := testenv.NewCertSet(t)
	cert, key := pki.Client("dev1")
	fleet := testenv.MosquittoWith(t, testenv.BrokerConfig{TLS: pki, RequireCertificate: true, Passwords: fleetUsers, ACL: fleetACL})
	// The device's credentials are fine but the ACL gives it nothing.
	noACL := testenv.MosquittoWith(t, testenv.BrokerConfig{TLS: pki, RequireCertificate: true, Passwords: fleetUsers, ACL: "user observer\ntopic read edge/#"})
	plain := testenv.Mosquitto(t)
	good := link.Config{Device: "dev1", Username: "dev1", Password: "s3cret", CAFile: pki.CAFile, CertFile: cert, KeyFile: key,
		BackoffMin: 100 * time.Millisecond, BackoffMax: 400 * time.Millisecond, ConnectTimeout: time.Second}

	cases := []struct {
		name   string
		broker *testenv.Broker
		change func(*link.Config)
		want   []string // in LastError and in the log
	}{
		{"wrong CA", fleet, func(c *link.Config) { c.CAFile = testenv.NewCertSet(t).CAFile },
			[]string{"not signed by a CA this agent trusts", "mqtt.ca_file"}},
		{"no client certificate", fleet, func(c *link.Config) { c.CertFile, c.KeyFile = "", "" },
			[]string{"client certificate", "mqtt.cert_file"}},
		{"client certificate from another CA", fleet, func(c *link.Config) { c.CertFile, c.KeyFile = testenv.NewCertSet(t).Client("dev1") },
			[]string{"client certificate", "mqtt.cert_file"}},
		{"wrong server name", fleet, func(c *link.Config) { c.ServerName = "broker.example.com" },
			[]string{"does not name", "mqtt.server_name"}},
		{"wrong password", fleet, func(c *link.Config) { c.Password = "guess" },
			[]string{"not authorised", "mqtt.username", "mqtt.password"}},
		{"ACL denies the device's topics", noACL, nil,
			[]string{"dropped our publish to edge/dev1/status", "ACL does not let client dev1 write there", "acl_file"}},
		{"TLS to a plain listener", plain, func(c *link.Config) {
			c.Broker = strings.Replace(plain.URL, "tcp://", "ssl://", 1)
		}, []string{"TLS", "use tcp://"}},
		{"nothing listens", nil, func(c *link.Config) { c.Broker = fmt.Sprintf("ssl://127.0.0.1:%d", testenv.FreePort(t)) },
			[]string{"refused", "mqtt.broker"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := good
			if tc.broker != nil {
				cfg.Broker = tc.broker.URL
			}
			if tc.change != nil {
				tc.change(&cfg)
			}
			l, logs := newLink(t, cfg, newMemQueue())
			stop := start(t, l)
			eventually(t, 15*time.Second, func() bool { return l.Stats().ConnectFailures > 0 },
				func() string { return fmt.Sprintf("no failed attempt: %+v", l.Stats()) })
			first := l.Stats()
			// Watch the attempts for 1.5s: with backoff 100..400ms (and never below 50ms)
			// there are about 7; a busy loop would make hundreds. A slow machine only
			// makes fewer.
			began := time.Now()
			for time.Since(began) < 1500*time.Millisecond {
				if st := l.Stats(); st.Connects > 0 || st.State == link.StateOnline {
					t.Fatalf("the link got online: %+v", st)
				}
				time.Sleep(20 * time.Millisecond)
			}
			last := l.Stats()
			stop()
			attempts := last.ConnectFailures - first.ConnectFailures
			if limit := uint64(15 * time.Since(began) / (1500 * time.Millisecond)); attempts > limit {
				t.Errorf("%d attempts in %v; want at most %d (backoff, not a busy loop)", attempts, time.Since(began).Round(time.Millisecond), limit)
			}
			for _, w := range tc.want {
				if !strings.Contains(last.LastError, w) {
					t.Errorf("LastError %q does not say %q", last.LastError, w)
				}
				if !strings.Contains(logs.String(), w) {
					t.Errorf("the log does not say %q:\n%s", w, logs)
				}
			}
			t.Logf("LastError: %s", last.LastError)
		})
	}
}

// The same broker with everything right: the device gets online and its results reach a
// fleet subscriber that is itself authenticated by certificate and password.
func TestMutualTLSWithPasswordAndACL(t *testing.T) {
	pki := testenv.NewCertSet(t)
	b := testenv.MosquittoWith(t, testenv.BrokerConfig{TLS: pki, RequireCertificate: true, Passwords: fleetUsers, ACL: fleetACL})
	obsCert, obsKey := pki.Client("observer")
	obs := watch(t, observerOpts{url: b.URL, id: "observer", tls: tlsClientConfig(t, pki.CAFile, obsCert, obsKey), user: "observer", password: "watch"})
	cert, key := pki.Client("dev1")
	q := newMemQueue()
	l, _ := newLink(t, link.Config{Broker: strings.Replace(b.URL, "ssl://", "mqtts://", 1), Device: "dev1", Username: "dev1", Password: "s3cret",
		CAFile: pki.CAFile, CertFile: cert, KeyFile: key}, q)
	stop := start(t, l)
	waitOnline(t, l)
	for i := 1; i <= 50; i++ {
		q.Append(fmt.Sprintf(`{"n":%d}`, i))
	}
	eventually(t, 10*time.Second, func() bool { return obs.distinct("dev1") == 50 && q.Len() == 0 },
		func() string { return fmt.Sprintf("%d of 50 arrived, queue %d", obs.distinct("dev1"), q.Len()) })
	stop()
	if st := l.Stats(); st.ConnectFailures != 0 || st.Connects != 1 || st.LastError != "" {
		t.Errorf("stats %+v; want one connect, no failure", st)
	}
}
