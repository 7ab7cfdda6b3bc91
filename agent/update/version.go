package update

import (
	"regexp"
	"strconv"
	"strings"
)

// version is a release version as edge-agent builds name them: MAJOR.MINOR.PATCH with an
// optional leading "v", a semver pre-release ("-rc.1", below the release), or git describe's
// "-N-gHASH" (N commits after the release, above it). Build metadata ("+...") is ignored.
type version struct {
	num  [3]uint64
	pre  []string // semver pre-release identifiers; nil for a release
	post uint64   // commits after the release (git describe)
}

var describeSuffix = regexp.MustCompile(`^-([0-9]+)-g[0-9a-f]+(-dirty)?$`)

func parseVersion(s string) (version, bool) {
	var v version
	s = strings.TrimPrefix(s, "v")
	s, _, _ = strings.Cut(s, "+")
	end := strings.IndexByte(s, '-')
	if end < 0 {
		end = len(s)
	}
	parts := strings.Split(s[:end], ".")
	if len(parts) != 3 {
		return v, false
	}
	for i, p := range parts {
		n, err := strconv.ParseUint(p, 10, 64)
		if err != nil || p == "" {
			return v, false
		}
		v.num[i] = n
	}
	rest := s[end:]
	switch m := describeSuffix.FindStringSubmatch(rest); {
	case rest == "":
	case m != nil:
		v.post, _ = strconv.ParseUint(m[1], 10, 64)
	default:
		v.pre = strings.Split(rest[1:], ".")
		for _, id := range v.pre {
			if id == "" {
				return v, false
			}
		}
	}
	return v, true
}

// compareVersions orders a and b (-1, 0, +1).
func compareVersions(a, b version) int {
	for i := range a.num {
		if c := cmpUint(a.num[i], b.num[i]); c != 0 {
			return c
		}
	}
	switch {
	case a.pre != nil && b.pre == nil:
		return -1
	case a.pre == nil && b.pre != nil:
		return 1
	case a.pre != nil:
		return comparePre(a.pre, b.pre)
	}
	return cmpUint(a.post, b.post)
}

// comparePre orders semver pre-release identifiers: numeric ones by value and below
// alphanumeric ones, a shorter list below a longer one it starts.
func comparePre(a, b []string) int {
	for i := 0; i < len(a) && i < len(b); i++ {
		an, aerr := strconv.ParseUint(a[i], 10, 64)
		bn, berr := strconv.ParseUint(b[i], 10, 64)
		var c int
		switch {
		case aerr == nil && berr == nil:
			c = cmpUint(an, bn)
		case aerr == nil:
			c = -1
		case berr == nil:
			c = 1
		default:
			c = strings.Compare(a[i], b[i])
		}
		if c != 0 {
			return c
		}
	}
	return cmpUint(uint64(len(a)), uint64(len(b)))
}

func cmpUint(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
