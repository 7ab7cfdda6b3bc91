// Package http is the "http" source kind: it polls a snapshot URL (an IP camera's JPEG or
// PNG) every interval. It imports nothing from agent/; it is an HTTP client only.
//
// A failed poll (transport error, status other than 200, oversized or undecodable body) ends
// Run with an error, so the runner logs it, counts it and retries with backoff instead of
// hammering a camera that is down.
package http

import (
	"bytes"
	"context"
	"fmt"
	"image"
	_ "image/jpeg" // registers the JPEG decoder for image.Decode
	_ "image/png"  // registers the PNG decoder
	"io"
	nethttp "net/http"
	"net/url"
	"strings"
	"time"

	"github.com/edge-agent/edge-agent/hal/sensor"
	"github.com/edge-agent/edge-agent/hal/sensor/internal/pace"
)

func init() { sensor.Kinds.Register("http", New) }

const (
	defaultPeriod   = time.Second
	defaultTimeout  = 5 * time.Second
	defaultMaxBytes = 16 << 20
)

type source struct {
	name     string
	url      string
	ref      string // url without its password, safe to put in results
	headers  map[string]string
	timeout  time.Duration
	maxBytes int
	period   time.Duration
}

// New validates spec.HTTP.
func New(spec sensor.Spec, _ sensor.Deps) (sensor.Source, error) {
	c := spec.HTTP
	bad := func(field, format string, args ...any) error {
		return fmt.Errorf("source %q: http.%s: %s", spec.Name, field, fmt.Sprintf(format, args...))
	}
	if c.URL == "" {
		return nil, bad("url", "must not be empty")
	}
	u, err := url.Parse(c.URL)
	if err != nil {
		return nil, bad("url", "%v", err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, bad("url", "%q must be an http:// or https:// URL with a host", u.Redacted())
	}
	if c.Timeout < 0 {
		return nil, bad("timeout", "must not be negative, got %v", c.Timeout)
	}
	if c.MaxBytes < 0 {
		return nil, bad("max_bytes", "must not be negative, got %d", c.MaxBytes)
	}
	for k := range c.Headers {
		if k == "" || strings.ContainsAny(k, " :\r\n") {
			return nil, bad("headers", "%q is not a valid header name", k)
		}
	}
	s := &source{
		name: spec.Name, url: c.URL, ref: u.Redacted(), headers: c.Headers,
		timeout: c.Timeout, maxBytes: c.MaxBytes, period: spec.Period(),
	}
	if s.timeout == 0 {
		s.timeout = defaultTimeout
	}
	if s.maxBytes == 0 {
		s.maxBytes = defaultMaxBytes
	}
	if s.period == 0 {
		s.period = defaultPeriod
	}
	return s, nil
}

// Run polls until ctx is done (nil) or a poll fails (the error).
func (s *source) Run(ctx context.Context, emit sensor.Emit) error {
	// A transport of its own, closed on return, so no keep-alive goroutine outlives Run.
	tr := nethttp.DefaultTransport.(*nethttp.Transport).Clone()
	defer tr.CloseIdleConnections()
	client := &nethttp.Client{Transport: tr, Timeout: s.timeout}
	pacer := pace.Pacer{Period: s.period}
	for pacer.Wait(ctx) {
		img, err := s.poll(ctx, client)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			return fmt.Errorf("source %q: GET %s: %w", s.name, s.ref, err)
		}
		emit(sensor.Frame{Image: img, Ref: s.ref})
	}
	return nil
}

func (s *source) poll(ctx context.Context, client *nethttp.Client) (image.Image, error) {
	req, err := nethttp.NewRequestWithContext(ctx, nethttp.MethodGet, s.url, nil)
	if err != nil {
		return nil, err
	}
	for k, v := range s.headers {
		if strings.EqualFold(k, "Host") {
			req.Host = v
			continue
		}
		req.Header.Set(k, v)
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, int64(s.maxBytes)+1))
	if resp.StatusCode != nethttp.StatusOK {
		return nil, fmt.Errorf("status %s%s", resp.Status, snippet(body))
	}
	if err != nil {
		return nil, fmt.Errorf("read body: %w", err)
	}
	if len(body) > s.maxBytes {
		return nil, fmt.Errorf("body larger than http.max_bytes (%d)", s.maxBytes)
	}
	img, _, err := image.Decode(bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("body (%d bytes, Content-Type %q) is not a JPEG or PNG picture: %w", len(body), resp.Header.Get("Content-Type"), err)
	}
	return img, nil
}

// snippet is the start of an error body, which often says what went wrong.
func snippet(body []byte) string {
	s := strings.TrimSpace(string(bytes.ToValidUTF8(body[:min(len(body), 200)], []byte("?"))))
	if s == "" {
		return ""
	}
	return ": " + strings.Join(strings.Fields(s), " ")
}
