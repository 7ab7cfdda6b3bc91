package testenv_test

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"image"
	_ "image/jpeg"
	_ "image/png"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/edge-agent/edge-agent/internal/testenv"
)

// row is one line of the table in testdata/README.md.
type row struct{ name, bytes, dims, sha string }

var rowRE = regexp.MustCompile("^\\| `([^`]+)` \\| ([0-9]+) \\| ([^|]+) \\| `([0-9a-f]{64})` \\|$")

func readmeRows(t *testing.T) map[string]row {
	t.Helper()
	data, err := os.ReadFile(testenv.Data(t, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	rows := map[string]row{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		if m := rowRE.FindStringSubmatch(sc.Text()); m != nil {
			if _, dup := rows[m[1]]; dup {
				t.Errorf("testdata/README.md lists %s twice", m[1])
			}
			rows[m[1]] = row{m[1], m[2], strings.TrimSpace(m[3]), m[4]}
		}
	}
	if len(rows) == 0 {
		t.Fatal("testdata/README.md has no table rows of the form | `file` | bytes | dimensions | `sha256` |")
	}
	return rows
}

// TestTestdataREADMEDescribesEveryFile holds testdata/README.md to the files: each file is
// listed, and its size, sha256 and measurable dimensions (pictures, lines, CSV rows) match.
func TestTestdataREADMEDescribesEveryFile(t *testing.T) {
	rows := readmeRows(t)
	dir := testenv.DataDir(t)
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, e := range entries {
		if e.Name() == "README.md" {
			continue
		}
		seen[e.Name()] = true
		r, ok := rows[e.Name()]
		if !ok {
			t.Errorf("testdata/%s is not listed in testdata/README.md (give its size, dimensions, sha256, origin and licence)", e.Name())
			continue
		}
		data, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if got := strconv.Itoa(len(data)); got != r.bytes {
			t.Errorf("%s: %s bytes; README says %s", r.name, got, r.bytes)
		}
		sum := sha256.Sum256(data)
		if got := hex.EncodeToString(sum[:]); got != r.sha {
			t.Errorf("%s: sha256 %s; README says %s", r.name, got, r.sha)
		}
		if got, ok := measure(t, r, data); ok && got != r.dims {
			t.Errorf("%s: dimensions %q; README says %q", r.name, got, r.dims)
		}
	}
	for name := range rows {
		if !seen[name] {
			t.Errorf("testdata/README.md lists %s, which is not in testdata/", name)
		}
	}
}

// measure returns the dimensions of a file the way the README writes them, when they can be
// measured without a model runtime (model shapes are checked by the engine's own tests).
func measure(t *testing.T, r row, data []byte) (string, bool) {
	switch ext := filepath.Ext(r.name); {
	case ext == ".png" || ext == ".jpg":
		cfg, _, err := image.DecodeConfig(bytes.NewReader(data))
		if err != nil {
			t.Errorf("%s: %v", r.name, err)
			return "", false
		}
		return strconv.Itoa(cfg.Width) + "x" + strconv.Itoa(cfg.Height), true
	case ext == ".txt":
		return strconv.Itoa(bytes.Count(data, []byte("\n"))) + " lines", true
	case ext == ".csv":
		lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
		return strconv.Itoa(len(lines)-1) + " rows x " + strconv.Itoa(len(strings.Split(lines[0], ","))) + " columns, with a header", true
	}
	return "", false
}
