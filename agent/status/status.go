// Package status is the device's only HTTP server (internal/depcheck TestOneHTTPServer): the
// status page (server-rendered, live over server-sent events, every asset embedded), /metrics
// in the Prometheus text format, /healthz and /readyz, and a predict API in TensorFlow
// Serving's REST shapes for other programs on the device (docs/status.md).
//
// It reads the agent through the small Agent interface that package agent implements; it
// must not import package agent, nor the stage packages that own heavy libraries
// (agent/outbox, agent/link, agent/infer/tflite): their figures arrive as this package's
// plain types. Everything it holds is bounded: streams, requests in flight, body sizes,
// instances per request, the history ring.
package status

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"mime"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/edge-agent/edge-agent/agent/health"
	"github.com/edge-agent/edge-agent/agent/infer"
	"github.com/edge-agent/edge-agent/agent/pipeline"
	"github.com/edge-agent/edge-agent/agent/result"
	"github.com/edge-agent/edge-agent/hal/sensor"
)

// Agent is what the server reads and drives. Package agent implements it; every method is
// called from several goroutines at once.
type Agent interface {
	// Snapshot is the agent's figures now.
	Snapshot() Snapshot
	// Ready is nil when the agent serves (a model has a loaded version and the outbox
	// accepts results), else the reason it does not.
	Ready() error
	// Model describes a model's serving version: an error wrapping ErrUnknownModel or
	// ErrNoVersion otherwise.
	Model(name string) (Model, error)
	// Predict runs one frame through the model's pipeline path (preprocess, infer,
	// postprocess) without publishing the result. Errors wrap ErrUnknownModel,
	// ErrNoVersion or ErrBadInput when the caller is at fault.
	Predict(ctx context.Context, model string, f sensor.Frame) (*result.Result, error)
}

// Errors an Agent returns for decisions the server turns into status codes.
var (
	ErrUnknownModel = errors.New("unknown model")
	ErrNoVersion    = errors.New("model has no loaded version")
	ErrBadInput     = errors.New("input does not fit the model")
)

// Model is a model's serving version as the predict API needs it.
type Model struct {
	Name    string             `json:"name"`
	Version string             `json:"version"`
	Inputs  []infer.TensorInfo `json:"inputs"`
	Outputs []infer.TensorInfo `json:"outputs"`
	// TakesTensor: the model's preprocessing accepts a raw input tensor (input.kind empty
	// or tensor); TakesImage: it accepts a picture (input.kind empty or image, and an
	// image-shaped input).
	TakesTensor bool `json:"takes_tensor"`
	TakesImage  bool `json:"takes_image"`
}

// Snapshot is the agent's state as the page, the event stream and /metrics show it.
type Snapshot struct {
	Device   string    `json:"device"`
	Board    string    `json:"board"`
	Hardware string    `json:"hardware"`
	Version  string    `json:"version"` // the agent's
	Engine   string    `json:"engine"`  // "tflite 2.9.0", or "none"
	Started  time.Time `json:"started"`

	Models  []pipeline.ModelStats `json:"models"`
	Sources []Source              `json:"sources"`
	Outbox  *Outbox               `json:"outbox,omitempty"` // nil without the fleet parts
	MQTT    *MQTT                 `json:"mqtt,omitempty"`
	Health  []health.Condition    `json:"health"`
	Drift   []DriftScore          `json:"drift"`
	// Security is what the device trusts; nil when the agent does not say.
	Security *Security `json:"security,omitempty"`
	// Events are the most recent events, oldest first; EventsDropped counts events the
	// fleet's queue could not take.
	Events        []result.Event `json:"events"`
	EventsDropped uint64         `json:"events_dropped"`
}

// Security is what the device takes from whom (docs/security.md).
type Security struct {
	// Commands is "signed" (only signed commands addressed to it), "no key" (signed
	// commands required and no key configured: none is taken) or "UNSIGNED" (the opt-out).
	Commands string `json:"commands"`
	Detail   string `json:"detail"`
	// Keys are the ids of the trusted keys by role: commands, bundles, update.
	Keys map[string][]string `json:"keys"`
	// SharedKeyRoles are the roles that trust the legacy one-for-all trusted_keys.
	SharedKeyRoles []string `json:"shared_key_roles,omitempty"`
}

// Source is one sensor source's runner figures.
type Source struct {
	Name      string `json:"name"`
	Kind      string `json:"kind"`
	State     string `json:"state"`
	Frames    uint64 `json:"frames"`
	Errors    uint64 `json:"errors"`
	Restarts  uint64 `json:"restarts"`
	Dropped   uint64 `json:"dropped"` // queue drops
	LastError string `json:"last_error,omitempty"`
}

// Outbox is the durable buffer's figures.
type Outbox struct {
	FileBytes   int64          `json:"file_bytes"`
	Commits     uint64         `json:"commits"`
	Compactions uint64         `json:"compactions"`
	Streams     []OutboxStream `json:"streams"`
	// DiskFull: the disk holding the outbox is full and new records are refused.
	DiskFull      bool      `json:"disk_full"`
	DiskFullSince time.Time `json:"disk_full_since,omitzero"`
}

// OutboxStream is one stream of the outbox (results, events, samples).
type OutboxStream struct {
	Name     string    `json:"name"`
	Count    int       `json:"count"`
	Bytes    int64     `json:"bytes"`
	OldestTS time.Time `json:"oldest_ts,omitzero"`
	Appended uint64    `json:"appended"`
	Acked    uint64    `json:"acked"`
	// Dropped by cause: evicted by drop-oldest, refused by drop-newest, expired by max_age.
	DroppedOldest uint64 `json:"dropped_oldest"`
	DroppedNewest uint64 `json:"dropped_newest"`
	DroppedAge    uint64 `json:"dropped_age"`
	// Refused: appends not stored since start, by cause (a full disk, another write error).
	RefusedNoSpace uint64 `json:"refused_no_space"`
	RefusedFailed  uint64 `json:"refused_failed"`
	MaxCount       int    `json:"max_count"`
	MaxBytes       int64  `json:"max_bytes"`
	Policy         string `json:"policy"`
}

// MQTT is the fleet link's figures.
type MQTT struct {
	State           string    `json:"state"` // online, connecting, offline-mode, ...
	Broker          string    `json:"broker,omitempty"`
	ConnectedSince  time.Time `json:"connected_since,omitzero"`
	LastError       string    `json:"last_error,omitempty"`
	Connects        uint64    `json:"connects"`
	ConnectFailures uint64    `json:"connect_failures"`
	MetricsSent     uint64    `json:"metrics_sent"`
	MetricsDropped  uint64    `json:"metrics_dropped"`
	Commands        uint64    `json:"commands"`
	RepliesSent     uint64    `json:"replies_sent"`
	RepliesDropped  uint64    `json:"replies_dropped"`
	// CommandsRefused counts commands refused before they ran (unsigned, forged, misaddressed,
	// expired, malformed); CommandsSuppressed those of them answered with nothing because
	// refusals came faster than their rate limit.
	CommandsRefused    uint64       `json:"commands_refused"`
	CommandsSuppressed uint64       `json:"commands_suppressed"`
	Streams            []LinkStream `json:"streams"`
}

// LinkStream is what the link sent of one outbox stream.
type LinkStream struct {
	Name     string `json:"name"`
	Messages uint64 `json:"messages"`
	Records  uint64 `json:"records"`
	Resent   uint64 `json:"resent"`
	InFlight int    `json:"in_flight"`
}

// DriftScore is one monitored statistic's latest value (agent.DriftScore).
type DriftScore struct {
	Model     string  `json:"model"`
	Version   string  `json:"version"`
	Feature   string  `json:"feature"`
	Statistic string  `json:"statistic"`
	Value     float64 `json:"value"`
	Threshold float64 `json:"threshold"`
	Alert     bool    `json:"alert"`
	Windows   uint64  `json:"windows"`
}

// Defaults of the predict API's picture budgets: 12 MP is a 4000×3000 photo; a request may
// carry twice that.
const (
	DefaultMaxPixels        = 12_000_000
	DefaultMaxRequestPixels = 24_000_000
)

// Options configure the server. Zero values take the defaults named.
type Options struct {
	// Listen is host:port (port 0 picks a free one).
	Listen string
	// Token, when set, is the bearer token state-changing requests must carry. Listen on
	// a non-loopback address is refused without it.
	Token string
	// TLSCert and TLSKey (PEM files) make the server speak HTTPS.
	TLSCert, TLSKey string
	// MaxBody caps a request body (default 8 MiB); larger gets 413.
	MaxBody int64
	// History is how many points the charts keep (default 300, one per Every).
	History int
	// Every is the sampling period of the charts and the live stream (default 1s).
	Every time.Duration
	// MaxStreams bounds live event streams at once (default 16); more get 503.
	MaxStreams int
	// MaxInflight bounds predict requests at once (default 8); more get 429.
	MaxInflight int
	// MaxInstances bounds the instances of one predict request (default 64).
	MaxInstances int
	// MaxPixels bounds a picture sent to the predict API (default DefaultMaxPixels; a
	// picture with 16-bit channels counts twice): a small compressed file may claim a huge
	// size, and decoding allocates for all of it. MaxRequestPixels bounds the pictures of
	// one request together (default DefaultMaxRequestPixels). Both are checked from the
	// headers, before anything is decoded.
	MaxPixels        int
	MaxRequestPixels int
	Logger           *slog.Logger
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// Server is the HTTP server. Build it with New, bind with Listen, run with Serve.
type Server struct {
	agent Agent
	opt   Options
	log   *slog.Logger
	now   func() time.Time
	mux   *http.ServeMux
	hist  *history
	live  *broadcaster
	met   *metrics
	page  *page

	inflight chan struct{} // predict requests running: a token each
	reading  chan struct{} // predict requests receiving their body: a token each
	// rates is the latest per-model result rates, swapped whole by the sampler.
	rates atomic.Pointer[map[string]float64]

	mu sync.Mutex
	ln net.Listener
}

// New builds a server for a. It refuses a non-loopback Listen without a Token.
func New(a Agent, opt Options) (*Server, error) {
	if opt.Logger == nil {
		opt.Logger = slog.Default()
	}
	if opt.Now == nil {
		opt.Now = time.Now
	}
	if opt.MaxBody <= 0 {
		opt.MaxBody = 8 << 20
	}
	if opt.History <= 0 {
		opt.History = 300
	}
	if opt.Every <= 0 {
		opt.Every = time.Second
	}
	if opt.MaxStreams <= 0 {
		opt.MaxStreams = 16
	}
	if opt.MaxInflight <= 0 {
		opt.MaxInflight = 8
	}
	if opt.MaxInstances <= 0 {
		opt.MaxInstances = 64
	}
	if opt.MaxPixels <= 0 {
		opt.MaxPixels = DefaultMaxPixels
	}
	if opt.MaxRequestPixels <= 0 {
		opt.MaxRequestPixels = DefaultMaxRequestPixels
	}
	host, _, err := net.SplitHostPort(opt.Listen)
	if err != nil {
		return nil, fmt.Errorf("status: listen address %q: %w", opt.Listen, err)
	}
	if !loopback(host) && opt.Token == "" {
		return nil, fmt.Errorf("status: refusing to listen on %q, which other machines can reach, without a bearer token: set status.token_file, or listen on 127.0.0.1", opt.Listen)
	}
	s := &Server{
		agent:    a,
		opt:      opt,
		log:      opt.Logger,
		now:      opt.Now,
		mux:      http.NewServeMux(),
		hist:     newHistory(opt.History),
		live:     newBroadcaster(opt.MaxStreams),
		inflight: make(chan struct{}, opt.MaxInflight),
		reading:  make(chan struct{}, readersPerSlot*opt.MaxInflight),
	}
	s.met = newMetrics(s)
	s.page, err = newPage()
	if err != nil {
		return nil, err
	}
	s.routes()
	return s, nil
}

func loopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func (s *Server) routes() {
	s.mux.HandleFunc("GET /{$}", s.handlePage)
	s.mux.Handle("GET /assets/", s.page.assets())
	s.mux.HandleFunc("GET /events", s.handleEvents)
	s.mux.HandleFunc("GET /v1/status", s.handleStatusJSON)
	s.mux.Handle("GET /metrics", s.met.handler())
	s.mux.HandleFunc("GET /healthz", s.handleHealthz)
	s.mux.HandleFunc("GET /readyz", s.handleReadyz)
	s.mux.HandleFunc("GET /v1/models/{name}", s.handleModel)
	s.mux.HandleFunc("POST /v1/models/{name}", s.handlePredict)
	s.mux.HandleFunc("/", s.handleUnknown)
}

// handleUnknown answers what no route takes with a JSON error, as every other error: 405 when
// the path is served for another method, else 404.
func (s *Server) handleUnknown(w http.ResponseWriter, r *http.Request) {
	var allow []string
	for _, m := range []string{http.MethodGet, http.MethodPost} {
		if m == r.Method {
			continue
		}
		other := r.Clone(r.Context())
		other.Method = m
		if _, pattern := s.mux.Handler(other); pattern != "/" && pattern != "" {
			allow = append(allow, m)
		}
	}
	if len(allow) > 0 {
		w.Header().Set("Allow", strings.Join(allow, ", "))
		writeError(w, http.StatusMethodNotAllowed, fmt.Sprintf("%s %s: this path takes %s", r.Method, r.URL.Path, strings.Join(allow, " or ")))
		return
	}
	writeError(w, http.StatusNotFound, fmt.Sprintf("%s %s: no such endpoint; the API is /v1/status, /v1/models/NAME, /v1/models/NAME:predict, /metrics, /healthz, /readyz and /events (docs/status.md)", r.Method, r.URL.Path))
}

// Listen binds the configured address and returns the bound one.
func (s *Server) Listen() (net.Addr, error) {
	ln, err := net.Listen("tcp", s.opt.Listen)
	if err != nil {
		return nil, fmt.Errorf("status: listen on %s: %w (set status.listen to a free address, or off)", s.opt.Listen, err)
	}
	s.mu.Lock()
	s.ln = ln
	s.mu.Unlock()
	return ln.Addr(), nil
}

// Serve serves on the bound listener until ctx ends, then stops taking requests, ends the
// live streams and waits (a few seconds at most) for requests in progress. It also runs
// the sampler that feeds the charts and the streams.
func (s *Server) Serve(ctx context.Context) error {
	s.mu.Lock()
	ln := s.ln
	s.mu.Unlock()
	if ln == nil {
		return errors.New("status: Serve before Listen")
	}
	srv := &http.Server{
		Handler: s.guard(s.mux),
		// Slow clients must not hold connections: headers within 5s, bodies within 30s.
		// There is no server-wide write timeout because live streams last; handlers set
		// their own write deadlines.
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       30 * time.Second,
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
		BaseContext:       func(net.Listener) context.Context { return ctx },
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		s.sample(ctx)
	}()
	served := make(chan error, 1)
	go func() {
		if s.opt.TLSCert != "" {
			served <- srv.ServeTLS(ln, s.opt.TLSCert, s.opt.TLSKey)
			return
		}
		served <- srv.Serve(ln)
	}()
	var err error
	select {
	case err = <-served:
	case <-ctx.Done():
		// Live streams watch ctx (BaseContext) and end; Shutdown waits for the others.
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		if serr := srv.Shutdown(sctx); serr != nil {
			srv.Close()
		}
		cancel()
		err = <-served
	}
	wg.Wait()
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// guard applies the checks every request passes: security headers, the Host check that
// defeats DNS rebinding on a loopback listener, the bearer token (for every request on a
// listener other machines reach, which would otherwise show them the broker, the models and
// the metrics; else for state-changing requests: everything but GET/HEAD and predictions),
// and a JSON content type for predictions, which a web page cannot send across origins
// without the server's consent (a text/plain form post could).
func (s *Server) guard(next http.Handler) http.Handler {
	host, _, _ := net.SplitHostPort(s.opt.Listen)
	onLoopback := loopback(host)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Referrer-Policy", "no-referrer")
		if onLoopback && !loopbackHost(r.Host) {
			// A web page the device's browser opens elsewhere could point its own name at
			// 127.0.0.1 and read this server; only loopback names are served.
			writeError(w, http.StatusMisdirectedRequest, fmt.Sprintf("host %q is not served here: this server listens on loopback and answers only to localhost, 127.0.0.1 or [::1]", r.Host))
			return
		}
		if !onLoopback || r.Method != http.MethodGet && r.Method != http.MethodHead && !isPredict(r) {
			if s.opt.Token == "" {
				writeError(w, http.StatusForbidden, "state-changing requests need a bearer token: set status.token_file")
				return
			}
			got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
			if !ok || subtle.ConstantTimeCompare([]byte(got), []byte(s.opt.Token)) != 1 {
				h.Set("WWW-Authenticate", `Bearer realm="edge-agent"`)
				why := "this request changes state"
				if !onLoopback {
					why = "this server is reachable from other machines, so every request needs the token"
				}
				writeError(w, http.StatusUnauthorized, why+": send Authorization: Bearer <the token in status.token_file>")
				return
			}
		}
		if isPredict(r) {
			if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt != "application/json" {
				writeError(w, http.StatusUnsupportedMediaType, fmt.Sprintf("predict takes Content-Type: application/json, not %q", r.Header.Get("Content-Type")))
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

// isPredict reports a request of TensorFlow Serving's inference family (:predict, and the
// :classify and :regress this server answers with 404): they read, never change state.
func isPredict(r *http.Request) bool {
	rest, ok := strings.CutPrefix(r.URL.Path, "/v1/models/")
	return ok && r.Method == http.MethodPost && strings.Contains(rest, ":")
}

func loopbackHost(hostport string) bool {
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	return loopback(host)
}

func (s *Server) handleHealthz(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

func (s *Server) handleReadyz(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	if err := s.agent.Ready(); err != nil {
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "not ready", "reason": err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
}
