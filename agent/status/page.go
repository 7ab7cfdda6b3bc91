package status

import (
	"bytes"
	"embed"
	"fmt"
	"html/template"
	"io/fs"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/edge-agent/edge-agent/agent/health"
	"github.com/edge-agent/edge-agent/agent/pipeline"
	"github.com/edge-agent/edge-agent/agent/result"
)

// The page's assets are embedded: the device may have no network, and a status page must
// not depend on a CDN.
//
//go:embed assets
var assetFS embed.FS

// page renders the status page; its template and assets are read-only after newPage.
type page struct {
	tmpl   *template.Template
	static fs.FS
}

func newPage() (*page, error) {
	static, err := fs.Sub(assetFS, "assets")
	if err != nil {
		return nil, err
	}
	t, err := template.New("page.html").Funcs(template.FuncMap{
		"count":    fmtCount,
		"bytes":    fmtBytes,
		"ms":       func(v float64) string { return fmt.Sprintf("%.2f", v) },
		"rate":     func(v float64) string { return fmt.Sprintf("%.1f", v) },
		"dur":      fmtDur,
		"age":      func(now, t time.Time) string { return fmtAge(now, t) },
		"clock":    func(t time.Time) string { return t.UTC().Format("15:04:05") },
		"num":      func(v float64) string { return strconv.FormatFloat(v, 'g', 4, 64) },
		"pct":      func(v float64) string { return fmt.Sprintf("%.1f%%", 100*v) },
		"errsum":   func(a, b, c, d, e uint64) string { return fmtCount(a + b + c + d + e) },
		"severity": func(v any) string { return fmt.Sprint(v) },
		"u64":      func(n int) uint64 { return uint64(max(n, 0)) },
		"worst":    worst,
		"abText":   abText,
		"totalRate": func(r map[string]float64) float64 {
			var t float64
			for _, v := range r {
				t += v
			}
			return t
		},
		"totalResults": func(ms []pipeline.ModelStats) uint64 {
			var t uint64
			for _, m := range ms {
				t += m.Results
			}
			return t
		},
		"waiting": func(o *Outbox) uint64 {
			for _, st := range o.Streams {
				if st.Name == "results" {
					return uint64(st.Count)
				}
			}
			return 0
		},
		"oldest": func(now time.Time, o *Outbox) string {
			for _, st := range o.Streams {
				if st.Name == "results" {
					return fmtAge(now, st.OldestTS)
				}
			}
			return "—"
		},
		"dropped": func(st OutboxStream) uint64 { return st.DroppedOldest + st.DroppedNewest + st.DroppedAge },
		"refused": func(st OutboxStream) uint64 { return st.RefusedNoSpace + st.RefusedFailed },
		"newest": func(es []result.Event) []result.Event {
			out := make([]result.Event, 0, min(len(es), maxPageEvents))
			for i := len(es) - 1; i >= 0 && len(out) < maxPageEvents; i-- {
				out = append(out, es[i])
			}
			return out
		},
	}).ParseFS(assetFS, "assets/page.html")
	if err != nil {
		return nil, fmt.Errorf("status page template: %w", err)
	}
	return &page{tmpl: t, static: static}, nil
}

func (p *page) assets() http.Handler {
	files := http.StripPrefix("/assets/", http.FileServerFS(p.static))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-cache")
		files.ServeHTTP(w, r)
	})
}

// contentSecurity allows only this server's own script, style and stream: nothing the page
// shows (event messages, error texts) can run as code even if escaping failed.
const contentSecurity = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

func (s *Server) handlePage(w http.ResponseWriter, r *http.Request) {
	v := s.view(s.agent.Snapshot())
	var b bytes.Buffer
	if err := s.page.tmpl.Execute(&b, v); err != nil {
		s.log.Error("status page", "err", err)
		writeError(w, http.StatusInternalServerError, "render status page: "+err.Error())
		return
	}
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Content-Security-Policy", contentSecurity)
	h.Set("Cache-Control", "no-store")
	w.Write(b.Bytes())
}

// The formatting below matches app.js, so the first render and the live updates agree.

// maxPageEvents is how many recent events the page lists.
const maxPageEvents = 50

// worst is the highest severity among conditions: "ok" when there are none.
func worst(cs []health.Condition) string {
	if len(cs) == 0 {
		return "ok"
	}
	w := health.Info
	for _, c := range cs {
		w = max(w, c.Severity)
	}
	return w.String()
}

// abText describes a running experiment in one line.
func abText(x *pipeline.ExperimentStats) string {
	if x.Mode == "shadow" {
		s := fmt.Sprintf("shadow %s: %s compared", x.CandidateVersion, fmtCount(x.Compared))
		if x.Top1Compared > 0 {
			s += fmt.Sprintf(", top-1 agreement %.1f%%", 100*x.Agreement)
		}
		return s
	}
	return fmt.Sprintf("split %.0f%% → %s (a %s · b %s)", 100*x.Weight, x.CandidateVersion, fmtCount(x.A.Results), fmtCount(x.B.Results))
}

func fmtCount(n uint64) string {
	s := strconv.FormatUint(n, 10)
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}

func fmtBytes(n int64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB"}
	v, i := float64(n), 0
	for v >= 1024 && i < len(units)-1 {
		v /= 1024
		i++
	}
	if i == 0 {
		return fmt.Sprintf("%d B", n)
	}
	return fmt.Sprintf("%.1f %s", v, units[i])
}

func fmtDur(sec float64) string {
	s := int64(math.Max(0, math.Floor(sec)))
	switch {
	case s < 60:
		return fmt.Sprintf("%ds", s)
	case s < 3600:
		return fmt.Sprintf("%dm %ds", s/60, s%60)
	case s < 86400:
		return fmt.Sprintf("%dh %dm", s/3600, s%3600/60)
	}
	return fmt.Sprintf("%dd %dh", s/86400, s%86400/3600)
}

func fmtAge(now, t time.Time) string {
	if t.IsZero() {
		return "—"
	}
	return fmtDur(now.Sub(t).Seconds())
}
