package deploy

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"path"
	"strings"
)

// maxRedirects bounds the redirects one download follows.
const maxRedirects = 5

// AllowList is the set of URL prefixes deploy and selfupdate commands may download from
// (deploy.allowed_urls). An entry is scheme://host[:port][/path]: a URL matches when its
// scheme and host are the entry's, its port is the entry's (any port when the entry names
// none), and its cleaned path lies under the entry's path at a "/" boundary. Nothing else is
// fetched, redirects included, so a signed command cannot make a device probe its network.
type AllowList struct{ entries []*url.URL }

// ParseAllowList checks the entries of deploy.allowed_urls.
func ParseAllowList(entries []string) (AllowList, error) {
	var l AllowList
	for _, e := range entries {
		u, err := url.Parse(e)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Hostname() == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" {
			return AllowList{}, fmt.Errorf("%q is not an http(s)://host[:port][/path] prefix", e)
		}
		u.Path = strings.TrimSuffix(path.Clean("/"+u.Path), "/")
		l.entries = append(l.entries, u)
	}
	return l, nil
}

// Empty reports whether the list allows nothing.
func (l AllowList) Empty() bool { return len(l.entries) == 0 }

// String lists the entries, for messages.
func (l AllowList) String() string {
	s := make([]string, len(l.entries))
	for i, e := range l.entries {
		s[i] = e.String()
	}
	return strings.Join(s, ", ")
}

// Check reports whether raw may be fetched.
func (l AllowList) Check(raw string) error {
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Hostname() == "" {
		return fmt.Errorf("%q is not an http(s) URL", raw)
	}
	if l.allows(u) {
		return nil
	}
	if l.Empty() {
		return fmt.Errorf("%s is refused: this device downloads from no URL (set deploy.allowed_urls, or mqtt.broker for its default)", redact(u))
	}
	return fmt.Errorf("%s is not under deploy.allowed_urls (%s): add its prefix in the device's config", redact(u), l)
}

func (l AllowList) allows(u *url.URL) bool {
	if u.User != nil {
		return false
	}
	p := path.Clean("/" + u.Path)
	for _, e := range l.entries {
		if u.Scheme != e.Scheme || !strings.EqualFold(u.Hostname(), e.Hostname()) {
			continue
		}
		if e.Port() != "" && portOf(u) != portOf(e) {
			continue
		}
		if e.Path == "" || p == e.Path || strings.HasPrefix(p, e.Path+"/") {
			return true
		}
	}
	return false
}

func portOf(u *url.URL) string {
	if p := u.Port(); p != "" {
		return p
	}
	if u.Scheme == "https" {
		return "443"
	}
	return "80"
}

// redact drops credentials and the query (which may hold a token) from a URL for messages.
func redact(u *url.URL) string {
	c := *u
	c.User, c.RawQuery, c.Fragment = nil, "", ""
	return c.String()
}

// Client returns an HTTP client that follows at most maxRedirects redirects, each of them
// inside the list. base supplies the transport and timeout.
func (l AllowList) Client(base *http.Client) *http.Client {
	c := *base
	c.CheckRedirect = func(req *http.Request, via []*http.Request) error {
		if len(via) >= maxRedirects {
			return fmt.Errorf("redirected: more than %d times", maxRedirects)
		}
		if err := l.Check(req.URL.String()); err != nil {
			return fmt.Errorf("redirected: %w", err)
		}
		return nil
	}
	return &c
}

// FetchError is what a failed request tells the fleet: that the server could not be reached,
// not why (a refused connection, a timeout or a TLS failure would say which ports of an
// allowed host answer). Detail is for the device's own log.
type FetchError struct {
	URL    string
	Detail error
}

func (e *FetchError) Error() string {
	var ue *url.Error
	if errors.As(e.Detail, &ue) && strings.HasPrefix(ue.Err.Error(), "redirected: ") {
		return fmt.Sprintf("download %s: %v", e.URL, ue.Err) // our own refusal, safe to say
	}
	return fmt.Sprintf("download %s: the server could not be reached (the device's log has the detail)", e.URL)
}
