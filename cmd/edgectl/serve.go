package main

// edgectl serve: the fleet server. It hosts the bundles of one folder over HTTP(S) (with
// Range requests, which the agents' resumable download uses) and runs staged rollouts of
// them (internal/rollout) through the broker, behind a small JSON API
// (docs/fleet-server.md).

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/edge-agent/edge-agent/internal/fleetclient"
	"github.com/edge-agent/edge-agent/internal/rollout"
	"github.com/edge-agent/edge-agent/models/bundle"
)

// Bounds of the HTTP API.
const (
	maxRequestBody  = 64 << 10
	maxServedBundle = 512 << 20 // what an agent downloads at most (agent/commands.go)
)

// server is a running edgectl serve; tests read its address and the engine.
type server struct {
	addr   string // host:port it listens on
	url    string // base URL of the API
	engine *rollout.Engine
}

func cmdServe(args []string, stdout, stderr io.Writer) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return serve(ctx, args, stdout, stderr, nil)
}

// serve runs until ctx ends; started, if set, is called once the API answers.
func serve(ctx context.Context, args []string, stdout, stderr io.Writer, started func(*server)) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	conn := addConnFlags(fs)
	listen := fs.String("listen", "127.0.0.1:8070", "HTTP(S) address of the API and the bundles")
	dir := fs.String("dir", "", "folder whose *.tar.gz bundles are served at /bundles/NAME (required)")
	statePath := fs.String("state", "", "state file of the rollouts (JSON, written atomically; required)")
	publicURL := fs.String("public-url", "", "base URL the devices download bundles from (default http(s)://LISTEN)")
	tlsCert := fs.String("tls-cert", "", "serve HTTPS with this certificate (PEM)")
	tlsKey := fs.String("tls-key", "", "and this key (PEM)")
	tokenFile := fs.String("token-file", "", "file holding the bearer token that starting and halting rollouts need (required off loopback)")
	host, _ := os.Hostname()
	instance := fs.String("instance", sanitizeInstance(host), "name of this serve instance (unique per broker; default the host name)")
	share := fs.String("share", "", "read replies, events and metrics through shared subscriptions of this group, with other instances")
	signKey := fs.String("sign-key", "", "the fleet's command key (minisign secret key) that signs every command serve sends (default EDGECTL_SIGN_KEY, or sign_key in the config file)")
	signPw := fs.String("password-file", "", "password of --sign-key (default EDGECTL_SIGN_PASSWORD_FILE, or sign_password_file)")
	unsigned := fs.Bool("unsigned-commands", false, "send commands unsigned: only devices with commands.require_signed: false take them")
	settle := fs.Duration("settle", time.Second, "collect the retained device statuses this long before taking requests")
	pos, err := parseMixed(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 0 {
		return usageError{fmt.Errorf("serve takes no arguments, got %q", pos)}
	}
	switch {
	case *dir == "":
		return usageError{errors.New("serve needs --dir: the folder of the bundles it hosts")}
	case *statePath == "":
		return usageError{errors.New("serve needs --state: the file it keeps the rollouts in")}
	case (*tlsCert == "") != (*tlsKey == ""):
		return usageError{errors.New("--tls-cert and --tls-key go together")}
	}
	if st, err := os.Stat(*dir); err != nil || !st.IsDir() {
		return fmt.Errorf("bundle folder %s: not a readable folder (%v): check --dir", *dir, err)
	}
	if st, err := os.Stat(filepath.Dir(*statePath)); err != nil || !st.IsDir() {
		return fmt.Errorf("state file %s: its folder does not exist: create it or check --state", *statePath)
	}
	var token []byte
	if *tokenFile != "" {
		if token, err = readPassword(*tokenFile); err != nil {
			return fmt.Errorf("token file: %w: check --token-file", err)
		}
		if len(strings.TrimSpace(string(token))) < 16 {
			return fmt.Errorf("token file %s holds fewer than 16 characters: write a long random token (e.g. openssl rand -hex 32)", *tokenFile)
		}
		token = []byte(strings.TrimSpace(string(token)))
	}
	if !loopback(*listen) && token == nil {
		return fmt.Errorf("--listen %s is not a loopback address: give --token-file, so that only holders of the token can start and halt rollouts, or listen on 127.0.0.1", *listen)
	}
	s, err := conn.resolve(os.Getenv)
	if err != nil {
		return err
	}
	seal, err := commandSealer(*signKey, *signPw, s, *unsigned)
	if err != nil {
		return fmt.Errorf("serve sends the rollouts' commands: %w", err)
	}
	if *unsigned {
		fmt.Fprintln(stderr, "WARNING: --unsigned-commands: serve sends commands unsigned; only devices with commands.require_signed: false take them")
	}
	root, err := os.OpenRoot(*dir)
	if err != nil {
		return fmt.Errorf("bundle folder: %w", err)
	}
	defer root.Close()

	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w: check --listen", *listen, err)
	}
	defer ln.Close()
	scheme := "http"
	if *tlsCert != "" {
		scheme = "https"
	}
	base := scheme + "://" + ln.Addr().String()
	pub := strings.TrimRight(*publicURL, "/")
	if pub == "" {
		pub = base
	}
	if u, err := url.Parse(pub); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("--public-url %q is not an http(s) URL", *publicURL)
	}

	logger := slog.New(slog.NewTextHandler(stderr, nil)).With("instance", *instance)
	p := &servicePublisher{}
	eng, err := rollout.New(rollout.Options{Prefix: s.Prefix, Instance: *instance, Share: *share, StatePath: *statePath,
		Publisher: p, Seal: seal, Logger: logger, BundleURL: func(name string) string { return bundleURL(pub, name) }})
	if err != nil {
		return err
	}
	cfg := fleetclient.Config{Broker: s.Broker, Username: s.Username, Password: s.Password,
		CAFile: s.CAFile, CertFile: s.CertFile, KeyFile: s.KeyFile, ServerName: s.ServerName}
	// The control connection keeps a persistent session: replies and observations that
	// arrive while serve restarts wait on the broker.
	ctl, err := fleetclient.ConnectService(ctx, cfg, fleetclient.ServiceOptions{ClientID: "edgectl-serve-" + *instance,
		Persistent: true, Topics: eng.ControlTopics(), Handle: eng.Handle})
	if err != nil {
		return err
	}
	defer ctl.Close()
	p.s = ctl
	if *share != "" {
		// The shared subscriptions use a clean session: an instance that stops leaves the
		// group at once, instead of keeping its share of the telemetry queued (Mosquitto
		// hands shared messages to offline persistent members too).
		sh, err := fleetclient.ConnectService(ctx, cfg, fleetclient.ServiceOptions{ClientID: "edgectl-serve-" + *instance + "-share",
			Topics: eng.SharedTopics(), Handle: eng.Handle})
		if err != nil {
			return err
		}
		defer sh.Close()
	}
	select {
	case <-ctx.Done():
		return nil
	case <-time.After(*settle):
	}

	var wg sync.WaitGroup
	defer wg.Wait()
	engCtx, stopEngine := context.WithCancel(ctx)
	defer stopEngine()
	wg.Add(1)
	go func() { defer wg.Done(); eng.Run(engCtx) }()

	api := &httpAPI{engine: eng, root: root, dir: *dir, token: token, public: pub, log: logger}
	srv := &http.Server{Handler: api.routes(), ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute,
		MaxHeaderBytes: 16 << 10, ErrorLog: slog.NewLogLogger(logger.Handler(), slog.LevelWarn)}
	served := make(chan error, 1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		if *tlsCert != "" {
			served <- srv.ServeTLS(ln, *tlsCert, *tlsKey)
		} else {
			served <- srv.Serve(ln)
		}
	}()
	logger.Info("edgectl serve listening", "api", base, "bundles", pub+"/bundles/", "dir", *dir, "state", *statePath,
		"devices", eng.Devices(), "share", *share)
	if started != nil {
		started(&server{addr: ln.Addr().String(), url: base, engine: eng})
	}
	var runErr error
	select {
	case <-ctx.Done():
	case err := <-served:
		runErr = fmt.Errorf("HTTP server: %w", err)
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	srv.Shutdown(sctx)
	stopEngine()
	return runErr
}

// servicePublisher lets the engine exist before its connection does (the connection's
// handler is the engine's); s is set before the engine runs.
type servicePublisher struct{ s *fleetclient.Service }

func (p *servicePublisher) Publish(topic string, qos byte, retained bool, payload []byte) error {
	return p.s.Publish(topic, qos, retained, payload)
}

// loopback tells whether a listen address only takes local connections.
func loopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// sanitizeInstance turns a host name into an instance name.
func sanitizeInstance(h string) string {
	b := []byte(h)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			b[i] = '-'
		}
	}
	if len(b) > 64 {
		b = b[:64]
	}
	if len(b) == 0 {
		return "serve"
	}
	return string(b)
}

func bundleURL(public, name string) string { return public + "/bundles/" + url.PathEscape(name) }

// bundleName tells whether name can be a hosted bundle: a *.tar.gz file name, no path.
func bundleName(name string) bool {
	return rollout.ValidName(name) && strings.HasSuffix(name, ".tar.gz") && !strings.HasPrefix(name, ".")
}

type httpAPI struct {
	engine *rollout.Engine
	root   *os.Root // the bundle folder: opens cannot leave it
	dir    string
	token  []byte
	public string
	log    *slog.Logger
}

func (a *httpAPI) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /bundles/{name}", a.getBundle)
	mux.HandleFunc("GET /v1/rollouts", a.list)
	mux.HandleFunc("POST /v1/rollouts", a.auth(a.create))
	mux.HandleFunc("GET /v1/rollouts/{id}", a.get)
	mux.HandleFunc("POST /v1/rollouts/{id}/halt", a.auth(a.halt))
	mux.HandleFunc("GET /v1/stats", func(w http.ResponseWriter, _ *http.Request) { writeJSON(w, http.StatusOK, a.engine.Stats()) })
	return mux
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

func httpError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, map[string]string{"error": msg})
}

// engineError maps the engine's decisions onto status codes.
func engineError(w http.ResponseWriter, err error) {
	code := http.StatusInternalServerError
	switch {
	case errors.Is(err, rollout.ErrInvalid):
		code = http.StatusBadRequest
	case errors.Is(err, rollout.ErrNotFound):
		code = http.StatusNotFound
	case errors.Is(err, rollout.ErrConflict):
		code = http.StatusConflict
	}
	httpError(w, code, err.Error())
}

func (a *httpAPI) auth(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if a.token != nil {
			got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
			if !ok || subtle.ConstantTimeCompare([]byte(strings.TrimSpace(got)), a.token) != 1 {
				w.Header().Set("WWW-Authenticate", `Bearer realm="edgectl serve"`)
				httpError(w, http.StatusUnauthorized, "missing or wrong bearer token: send Authorization: Bearer TOKEN with the token of serve's --token-file (edgectl rollout --token-file F)")
				return
			}
		}
		h(w, r)
	}
}

// getBundle serves one bundle file, with Range requests.
func (a *httpAPI) getBundle(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	f, fi, err := a.openBundle(name)
	if err != nil {
		httpError(w, http.StatusNotFound, err.Error())
		return
	}
	defer f.Close()
	w.Header().Set("Content-Type", "application/gzip")
	http.ServeContent(w, r, name, fi.ModTime(), f)
}

// openBundle opens a regular *.tar.gz file directly in the bundle folder.
func (a *httpAPI) openBundle(name string) (*os.File, os.FileInfo, error) {
	if !bundleName(name) {
		return nil, nil, fmt.Errorf("no bundle %q: bundles are *.tar.gz files directly in the bundle folder", name)
	}
	f, err := a.root.Open(name)
	if err != nil {
		return nil, nil, fmt.Errorf("no bundle %q in the bundle folder", name)
	}
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() {
		f.Close()
		return nil, nil, fmt.Errorf("no bundle %q in the bundle folder (not a regular file)", name)
	}
	return f, fi, nil
}

// resolveBundle reads what a rollout needs to know of a hosted bundle: its sha256, and the
// model, version and sequence its manifest names (the devices verify the signature).
func (a *httpAPI) resolveBundle(name string) (rollout.Bundle, int, error) {
	f, fi, err := a.openBundle(name)
	if err != nil {
		return rollout.Bundle{}, http.StatusNotFound, err
	}
	defer f.Close()
	if fi.Size() > maxServedBundle {
		return rollout.Bundle{}, http.StatusBadRequest, fmt.Errorf("bundle %s is %d bytes; agents download at most %d", name, fi.Size(), maxServedBundle)
	}
	man, _, _, err := bundle.ReadManifest(f, bundle.OpenOptions{})
	if err != nil {
		return rollout.Bundle{}, http.StatusBadRequest, fmt.Errorf("bundle %s: %v: rebuild it with edgectl bundle pack", name, err)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return rollout.Bundle{}, http.StatusInternalServerError, err
	}
	h := sha256.New()
	n, err := io.Copy(h, io.LimitReader(f, maxServedBundle+1))
	if err != nil {
		return rollout.Bundle{}, http.StatusInternalServerError, fmt.Errorf("read bundle %s: %w", name, err)
	}
	return rollout.Bundle{Name: name, URL: bundleURL(a.public, name), SHA256: hex.EncodeToString(h.Sum(nil)),
		Size: n, Model: man.Name, Version: man.Version, Sequence: man.Sequence}, 0, nil
}

func decodeBody(w http.ResponseWriter, r *http.Request, v any, emptyOK bool) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxRequestBody))
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	var tooBig *http.MaxBytesError
	switch {
	case err == nil:
		return true
	case errors.Is(err, io.EOF) && emptyOK:
		return true
	case errors.As(err, &tooBig):
		httpError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("request body over %d bytes", maxRequestBody))
	default:
		httpError(w, http.StatusBadRequest, fmt.Sprintf("request body: %v: send JSON as docs/fleet-server.md shows", err))
	}
	return false
}

func (a *httpAPI) create(w http.ResponseWriter, r *http.Request) {
	var spec rollout.Spec
	if !decodeBody(w, r, &spec, false) {
		return
	}
	if spec.Bundle == "" {
		httpError(w, http.StatusBadRequest, `"bundle" is required: the file name of a *.tar.gz in the bundle folder`)
		return
	}
	if err := spec.Check(); err != nil {
		engineError(w, err)
		return
	}
	b, code, err := a.resolveBundle(spec.Bundle)
	if err != nil {
		httpError(w, code, err.Error())
		return
	}
	ro, err := a.engine.Start(spec, b)
	if err != nil {
		engineError(w, err)
		return
	}
	w.Header().Set("Location", "/v1/rollouts/"+ro.ID)
	writeJSON(w, http.StatusCreated, ro)
}

func (a *httpAPI) list(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{"rollouts": a.engine.List()})
}

func (a *httpAPI) get(w http.ResponseWriter, r *http.Request) {
	ro, err := a.engine.Get(r.PathValue("id"))
	if err != nil {
		engineError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, ro)
}

func (a *httpAPI) halt(w http.ResponseWriter, r *http.Request) {
	var body struct {
		Reason string `json:"reason"`
	}
	if !decodeBody(w, r, &body, true) {
		return
	}
	ro, err := a.engine.Halt(r.PathValue("id"), body.Reason)
	if err != nil {
		engineError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, ro)
}
