package testenv

// MQTT test helpers: a Mosquitto broker whose listener the test configures (TLS with a
// throwaway CA, client certificates, password and ACL files, persistence) and the
// certificates to go with it, generated here with crypto/x509 so no openssl is needed.

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

// CertSet is a test PKI in its own temporary folder: a CA and a server certificate for
// 127.0.0.1 and localhost signed by it. Client issues client certificates.
type CertSet struct {
	Dir        string
	CAFile     string // the CA certificate (PEM): the broker's cafile and the client's ca_file
	ServerCert string // certificate for 127.0.0.1 and localhost
	ServerKey  string

	t     testing.TB
	ca    *x509.Certificate
	caKey *ecdsa.PrivateKey
}

// NewCertSet creates a CA and a server certificate. Two CertSets share nothing, so one's CA
// is the "wrong CA" for the other's broker.
func NewCertSet(t testing.TB) *CertSet {
	t.Helper()
	c := &CertSet{Dir: t.TempDir(), t: t}
	key := newKey(t)
	tmpl := &x509.Certificate{
		SerialNumber:          serial(t),
		Subject:               pkix.Name{CommonName: "edge-agent test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatalf("create test CA: %v", err)
	}
	if c.ca, err = x509.ParseCertificate(der); err != nil {
		t.Fatal(err)
	}
	c.caKey = key
	c.CAFile = c.writeCert("ca.crt", der)
	c.ServerCert, c.ServerKey = c.issue("server", &x509.Certificate{
		Subject:     pkix.Name{CommonName: "localhost"},
		DNSNames:    []string{"localhost"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	return c
}

// Client issues a client certificate with common name cn and returns its files.
func (c *CertSet) Client(cn string) (certFile, keyFile string) {
	c.t.Helper()
	return c.issue("client-"+cn, &x509.Certificate{
		Subject:     pkix.Name{CommonName: cn},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
}

func (c *CertSet) issue(name string, tmpl *x509.Certificate) (certFile, keyFile string) {
	c.t.Helper()
	key := newKey(c.t)
	tmpl.SerialNumber = serial(c.t)
	tmpl.NotBefore = time.Now().Add(-time.Hour)
	tmpl.NotAfter = time.Now().Add(24 * time.Hour)
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.ca, &key.PublicKey, c.caKey)
	if err != nil {
		c.t.Fatalf("issue test certificate %s: %v", name, err)
	}
	certFile = c.writeCert(name+".crt", der)
	pk, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		c.t.Fatal(err)
	}
	keyFile = filepath.Join(c.Dir, name+".key")
	writePEM(c.t, keyFile, "PRIVATE KEY", pk)
	return certFile, keyFile
}

func (c *CertSet) writeCert(name string, der []byte) string {
	p := filepath.Join(c.Dir, name)
	writePEM(c.t, p, "CERTIFICATE", der)
	return p
}

func writePEM(t testing.TB, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func serial(t testing.TB) *big.Int {
	t.Helper()
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// BrokerConfig is the listener a test wants. The zero value is a plain anonymous broker
// without persistence, like Mosquitto(t).
type BrokerConfig struct {
	// TLS makes the listener TLS-only with this CA and server certificate (URL ssl://…).
	TLS *CertSet
	// RequireCertificate makes clients present a certificate signed by TLS's CA.
	RequireCertificate bool
	// Passwords (user → password) become a password_file and turn anonymous access off.
	Passwords map[string]string
	// ACL is the content of an acl_file ("pattern readwrite edge/%c/#", "user u\ntopic read x/#").
	ACL string
	// Persist turns persistence on, in the test's temporary folder. Stop the broker with
	// Term, not Stop: Mosquitto writes its database on SIGTERM, and a broker killed with
	// SIGKILL loses what it had acknowledged and queued since it started.
	Persist bool
	// Extra config lines, appended last.
	Extra []string
}

// MosquittoWith starts a real Mosquitto broker on a free loopback port with the listener cfg
// describes and stops it (SIGKILL) when the test ends. A missing mosquitto or
// mosquitto_passwd binary fails the test with what to run.
func MosquittoWith(t testing.TB, cfg BrokerConfig) *Broker {
	t.Helper()
	bin := findBinary(t, "mosquitto", "/usr/sbin/mosquitto")
	b := &Broker{Port: FreePort(t), t: t}
	b.URL = "tcp://127.0.0.1:" + strconv.Itoa(b.Port)
	dir := t.TempDir()
	lines := []string{
		"listener " + strconv.Itoa(b.Port) + " 127.0.0.1",
		"allow_anonymous " + strconv.FormatBool(len(cfg.Passwords) == 0),
		"log_dest stderr",
		"log_type all",
	}
	if os.Getuid() == 0 {
		// Mosquitto started as root drops to the "mosquitto" user, which cannot read the
		// test's private temporary folder (certificates, password file, persistence).
		lines = append(lines, "user root")
	}
	if cfg.TLS != nil {
		b.URL = "ssl://127.0.0.1:" + strconv.Itoa(b.Port)
		lines = append(lines,
			"cafile "+cfg.TLS.CAFile,
			"certfile "+cfg.TLS.ServerCert,
			"keyfile "+cfg.TLS.ServerKey,
			"require_certificate "+strconv.FormatBool(cfg.RequireCertificate),
		)
	} else if cfg.RequireCertificate {
		t.Fatal("testenv: BrokerConfig.RequireCertificate needs TLS")
	}
	if len(cfg.Passwords) > 0 {
		lines = append(lines, "password_file "+passwordFile(t, dir, cfg.Passwords))
	}
	if cfg.ACL != "" {
		p := filepath.Join(dir, "acl")
		if err := os.WriteFile(p, []byte(cfg.ACL+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		lines = append(lines, "acl_file "+p)
	}
	if cfg.Persist {
		lines = append(lines, "persistence true", "persistence_location "+dir+string(filepath.Separator))
	} else {
		lines = append(lines, "persistence false")
	}
	lines = append(lines, cfg.Extra...)
	b.conf = filepath.Join(dir, "mosquitto.conf")
	if err := os.WriteFile(b.conf, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	b.cmd = exec.Command(bin, "-c", b.conf)
	b.Start()
	t.Cleanup(b.Stop)
	return b
}

// passwordFile writes user:password lines and lets mosquitto_passwd hash them in place.
func passwordFile(t testing.TB, dir string, users map[string]string) string {
	t.Helper()
	bin := findBinary(t, "mosquitto_passwd", "/usr/bin/mosquitto_passwd")
	names := make([]string, 0, len(users))
	for u := range users {
		names = append(names, u)
	}
	sort.Strings(names)
	var sb strings.Builder
	for _, u := range names {
		sb.WriteString(u + ":" + users[u] + "\n")
	}
	p := filepath.Join(dir, "passwd")
	if err := os.WriteFile(p, []byte(sb.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(bin, "-U", p).CombinedOutput(); err != nil {
		t.Fatalf("mosquitto_passwd -U %s: %v: %s", p, err, out)
	}
	return p
}

func findBinary(t testing.TB, name, fallback string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	if _, err := os.Stat(fallback); err == nil {
		return fallback
	}
	t.Fatalf("%s is not installed: run scripts/deps.sh (or apt-get install mosquitto)", name)
	return ""
}
