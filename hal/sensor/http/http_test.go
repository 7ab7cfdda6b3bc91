package http_test

import (
	"context"
	"image"
	"image/jpeg"
	"io"
	"log/slog"
	nethttp "net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edge-agent/edge-agent/hal/sensor"
	"github.com/edge-agent/edge-agent/hal/sensor/internal/sensortest"
	"github.com/edge-agent/edge-agent/internal/testenv"
)

func snapshot(t *testing.T) ([]byte, image.Point) {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(sensortest.Testdata(t), "ssd_example.jpg"))
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := jpeg.DecodeConfig(strings.NewReader(string(data)))
	if err != nil {
		t.Fatal(err)
	}
	return data, image.Pt(cfg.Width, cfg.Height)
}

func newSource(t *testing.T, spec sensor.Spec) sensor.Source {
	t.Helper()
	spec.Kind = "http"
	if spec.Name == "" {
		spec.Name = "ipcam"
	}
	src, err := sensor.Kinds.New(spec, sensor.Deps{})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return src
}

func TestPollsSnapshots(t *testing.T) {
	sensortest.NoLeaks(t)
	data, size := snapshot(t)
	srv := httptest.NewServer(nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {
		if r.Header.Get("Authorization") != "Bearer s3cret" {
			nethttp.Error(w, "no token", nethttp.StatusUnauthorized)
			return
		}
		w.Header().Set("Content-Type", "image/jpeg")
		w.Write(data)
	}))
	defer srv.Close()

	var c sensortest.Collector
	src := newSource(t, sensor.Spec{Interval: 20 * time.Millisecond, HTTP: sensor.HTTPSpec{
		URL: srv.URL + "/snap.jpg", Headers: map[string]string{"Authorization": "Bearer s3cret"},
	}})
	r := sensortest.Start(t, src, nil, c.Emit)
	frames := c.WaitN(t, 2, 5*time.Second)
	if err := r.Stop(); err != nil {
		t.Errorf("Run after cancel: got %v; want nil", err)
	}
	for i, f := range frames[:2] {
		if f.Image == nil || f.Image.Bounds().Size() != size || f.Ref != srv.URL+"/snap.jpg" {
			t.Errorf("frame %d: got ref %q; want a %v image from %s/snap.jpg", i, f.Ref, size, srv.URL)
		}
	}
}

func TestFailuresAreErrors(t *testing.T) {
	sensortest.NoLeaks(t)
	data, _ := snapshot(t)
	srv := httptest.NewServer(nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {
		switch r.URL.Path {
		case "/500":
			nethttp.Error(w, "sensor board overheated", nethttp.StatusInternalServerError)
		case "/text":
			w.Write([]byte("hello"))
		case "/big":
			w.Write(data)
		}
	}))
	defer srv.Close()
	tests := []struct {
		path     string
		maxBytes int
		want     string
	}{
		{"/500", 0, "status 500 Internal Server Error: sensor board overheated"},
		{"/text", 0, `body (5 bytes, Content-Type "text/plain; charset=utf-8") is not a JPEG or PNG picture`},
		{"/big", 1000, "body larger than http.max_bytes (1000)"},
	}
	for _, tt := range tests {
		src := newSource(t, sensor.Spec{HTTP: sensor.HTTPSpec{URL: srv.URL + tt.path, MaxBytes: tt.maxBytes}})
		err := src.Run(context.Background(), func(sensor.Frame) { t.Errorf("%s: unexpected frame", tt.path) })
		if want := `source "ipcam": GET ` + srv.URL + tt.path + ": " + tt.want; err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: got %v; want %q", tt.path, err, want)
		}
	}

	// Through a runner, a failing camera is retried with backoff and the failure is visible.
	var hits atomic.Int64
	failing := httptest.NewServer(nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {
		hits.Add(1)
		nethttp.Error(w, "down", nethttp.StatusInternalServerError)
	}))
	defer failing.Close()
	spec := sensor.Spec{Name: "ipcam", Kind: "http", HTTP: sensor.HTTPSpec{URL: failing.URL}}
	runner := sensor.NewRunner(spec, newSource(t, spec), sensor.RunnerOptions{
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), MinBackoff: 10 * time.Millisecond, MaxBackoff: 40 * time.Millisecond,
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { runner.Run(ctx); close(done) }()
	for deadline := time.Now().Add(testenv.Patience(5 * time.Second)); runner.Stats().Restarts < 3 && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	<-done
	st := runner.Stats()
	// One error per request, except a request the cancel cut short.
	if n := hits.Load(); st.Restarts < 3 || !strings.Contains(st.LastError, "status 500") || int64(st.Errors) != n && int64(st.Errors) != n-1 {
		t.Errorf("Stats: got %+v with %d requests; want at least 3 restarts, one error per request, LastError with status 500", st, n)
	}
}

func TestRefHidesPassword(t *testing.T) {
	sensortest.NoLeaks(t)
	data, _ := snapshot(t)
	srv := httptest.NewServer(nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {
		if u, p, _ := r.BasicAuth(); u != "admin" || p != "hunter2" {
			nethttp.Error(w, "auth", nethttp.StatusUnauthorized)
			return
		}
		w.Write(data)
	}))
	defer srv.Close()
	url := strings.Replace(srv.URL, "http://", "http://admin:hunter2@", 1)
	var c sensortest.Collector
	r := sensortest.Start(t, newSource(t, sensor.Spec{HTTP: sensor.HTTPSpec{URL: url}}), nil, c.Emit)
	f := c.WaitN(t, 1, 5*time.Second)[0]
	r.Stop()
	if strings.Contains(f.Ref, "hunter2") || !strings.Contains(f.Ref, "admin:xxxxx@") {
		t.Errorf("Ref: got %q; want the password redacted", f.Ref)
	}
}

func TestValidation(t *testing.T) {
	tests := []struct {
		spec sensor.HTTPSpec
		want string
	}{
		{sensor.HTTPSpec{}, `source "ipcam": http.url: must not be empty`},
		{sensor.HTTPSpec{URL: "ftp://cam/snap.jpg"}, "http.url: \"ftp://cam/snap.jpg\" must be an http:// or https:// URL"},
		{sensor.HTTPSpec{URL: "http://cam", Timeout: -1}, "http.timeout"},
		{sensor.HTTPSpec{URL: "http://cam", MaxBytes: -1}, "http.max_bytes"},
		{sensor.HTTPSpec{URL: "http://cam", Headers: map[string]string{"Bad Name": "x"}}, "http.headers"},
	}
	for _, tt := range tests {
		_, err := sensor.Kinds.New(sensor.Spec{Name: "ipcam", Kind: "http", HTTP: tt.spec}, sensor.Deps{})
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%+v: got %v; want an error containing %q", tt.spec, err, tt.want)
		}
	}
}
