// Package hostfs reads a board's /sys, /proc and /dev files under a root directory, so the
// hal packages run against fixture trees in tests. Paths are the board's ("/proc/cpuinfo");
// every read is bounded. It imports nothing of agent/.
package hostfs

import (
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
)

// MaxFile bounds every read: sysfs attributes are a page, /proc/cpuinfo on a large server a
// few hundred kilobytes.
const MaxFile = 4 << 20

// FS is a host filesystem seen from Root.
type FS struct{ Root string }

// New returns the FS for root ("" means the real system, "/").
func New(root string) FS {
	if root == "" {
		root = "/"
	}
	return FS{Root: root}
}

// Abs joins a board path to the root.
func (f FS) Abs(p string) string { return filepath.Join(f.Root, p) }

// Read returns a file's content (at most MaxFile bytes). A missing file gives an error
// wrapping fs.ErrNotExist.
func (f FS) Read(p string) (string, error) {
	file, err := os.Open(f.Abs(p))
	if err != nil {
		return "", err
	}
	defer file.Close()
	b, err := io.ReadAll(io.LimitReader(file, MaxFile))
	return string(b), err
}

// Value reads a one-line attribute, trimming whitespace and device-tree NULs.
func (f FS) Value(p string) (string, error) {
	v, err := f.Read(p)
	return strings.TrimSpace(strings.Trim(v, "\x00")), err
}

// Exists reports whether p is a regular file or a device node (fixtures use regular files
// where a board has character devices).
func (f FS) Exists(p string) bool {
	fi, err := os.Stat(f.Abs(p))
	if err != nil {
		return false
	}
	m := fi.Mode()
	return m.IsRegular() || m&fs.ModeDevice != 0
}

// List returns the board paths of the entries in dir whose names match pattern
// (filepath.Match syntax), sorted. Only names are matched, so a root holding glob
// metacharacters does no harm. A missing dir gives nothing.
func (f FS) List(dir, pattern string) []string {
	entries, err := os.ReadDir(f.Abs(dir))
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range entries {
		if ok, _ := filepath.Match(pattern, e.Name()); ok { // the only error is a bad pattern; callers pass constants
			out = append(out, path.Join(dir, e.Name()))
		}
	}
	sort.Strings(out)
	return out
}
