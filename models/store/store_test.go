package store

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// clock is an injected clock that moves one second per reading.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(time.Second)
	return c.t
}

var quiet = slog.New(slog.DiscardHandler)

func openTest(t *testing.T, root string, keep int) *Store {
	t.Helper()
	s, err := Open(root, Options{Keep: keep, Now: newClock().Now, Logger: quiet})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// bundleFiles is what a bundle of version holds: its contents tell the versions apart.
func bundleFiles(version string) map[string]string {
	return map[string]string{
		"model.tflite":         strings.Repeat("tflite "+version+"|", 700),
		"labels.txt":           "cat\ndog\n" + version + "\n",
		"extra/reference.json": `{"version":"` + version + `"}`,
	}
}

// installVersion stages bundleFiles(version) as the bundle reader would and installs it.
func installVersion(s *Store, name, version string, seq uint64) error {
	dir, err := s.Stage()
	if err != nil {
		return err
	}
	for rel, content := range bundleFiles(version) {
		p := filepath.Join(dir, filepath.FromSlash(rel))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			return err
		}
	}
	err = s.Install(dir, VersionMeta{Name: name, Version: version, Sequence: seq, KeyID: "RWtestkey", SHA256: strings.Repeat("ab", 32)})
	if err != nil {
		s.Discard(dir)
	}
	return err
}

// checkIntact reports whether an installed version holds exactly bundleFiles(version) and a
// version.json that names it.
func checkIntact(root, name, version string) error {
	dir := filepath.Join(root, "versions", name, version)
	want := bundleFiles(version)
	seen := 0
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		rel = filepath.ToSlash(rel)
		if rel == MetaName {
			m, err := readMeta(p)
			if err != nil {
				return err
			}
			if m.Name != name || m.Version != version || m.Files != len(want) {
				return fmt.Errorf("%s: got %+v; want %s@%s with %d files", rel, m, name, version, len(want))
			}
			return nil
		}
		content, ok := want[rel]
		if !ok {
			return fmt.Errorf("unexpected file %s", rel)
		}
		got, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if string(got) != content {
			return fmt.Errorf("%s: got %d bytes that differ; want %d bytes of %s", rel, len(got), len(content), version)
		}
		seen++
		return nil
	})
	if err != nil {
		return fmt.Errorf("%s@%s: %w", name, version, err)
	}
	if seen != len(want) {
		return fmt.Errorf("%s@%s: got %d bundle files; want %d", name, version, seen, len(want))
	}
	return nil
}

func versionNames(t *testing.T, s *Store, name string) []string {
	t.Helper()
	vs, err := s.Versions(name)
	if err != nil {
		t.Fatalf("Versions(%s): %v", name, err)
	}
	var out []string
	for _, v := range vs {
		out = append(out, v.Version)
	}
	return out
}

func TestLifecycle(t *testing.T) {
	root := t.TempDir()
	s := openTest(t, root, 3)
	steps := []struct {
		install      string // version to install first ("" none)
		seq          uint64
		activate     string // version to activate ("" none)
		wantActive   string
		wantPrevious string
		wantVersions []string // highest sequence first
	}{
		{install: "1.0.0", seq: 1, wantVersions: []string{"1.0.0"}},
		{activate: "1.0.0", wantActive: "1.0.0", wantVersions: []string{"1.0.0"}},
		{install: "1.1.0", seq: 2, activate: "1.1.0", wantActive: "1.1.0", wantPrevious: "1.0.0", wantVersions: []string{"1.1.0", "1.0.0"}},
		{install: "1.2.0", seq: 3, activate: "1.2.0", wantActive: "1.2.0", wantPrevious: "1.1.0", wantVersions: []string{"1.2.0", "1.1.0", "1.0.0"}},
		// a fourth version: the oldest is pruned
		{install: "1.3.0", seq: 4, activate: "1.3.0", wantActive: "1.3.0", wantPrevious: "1.2.0", wantVersions: []string{"1.3.0", "1.2.0", "1.1.0"}},
		// roll back to an older one
		{activate: "1.1.0", wantActive: "1.1.0", wantPrevious: "1.3.0", wantVersions: []string{"1.3.0", "1.2.0", "1.1.0"}},
		// the previous version is kept beyond Keep
		{install: "1.4.0", seq: 5, activate: "1.4.0", wantActive: "1.4.0", wantPrevious: "1.1.0", wantVersions: []string{"1.4.0", "1.3.0", "1.2.0", "1.1.0"}},
		{install: "1.5.0", seq: 6, activate: "1.5.0", wantActive: "1.5.0", wantPrevious: "1.4.0", wantVersions: []string{"1.5.0", "1.4.0", "1.3.0"}},
		// activating the active version again keeps its previous
		{activate: "1.5.0", wantActive: "1.5.0", wantPrevious: "1.4.0", wantVersions: []string{"1.5.0", "1.4.0", "1.3.0"}},
	}
	for i, st := range steps {
		if st.install != "" {
			if err := installVersion(s, "m", st.install, st.seq); err != nil {
				t.Fatalf("step %d: install: %v", i, err)
			}
		}
		if st.activate != "" {
			if err := s.Activate("m", st.activate, fmt.Sprintf("step %d", i)); err != nil {
				t.Fatalf("step %d: activate: %v", i, err)
			}
		}
		p, ok, err := s.Active("m")
		if err != nil {
			t.Fatalf("step %d: Active: %v", i, err)
		}
		if ok != (st.wantActive != "") || p.Version != st.wantActive || p.Previous != st.wantPrevious {
			t.Errorf("step %d: active got %q (previous %q, ok %v); want %q (previous %q)", i, p.Version, p.Previous, ok, st.wantActive, st.wantPrevious)
		}
		if ok && (p.Name != "m" || p.Reason != fmt.Sprintf("step %d", i) || p.ActivatedAt.IsZero()) {
			t.Errorf("step %d: pointer got %+v; want name m, reason \"step %d\", a time", i, p, i)
		}
		if got := versionNames(t, s, "m"); !slices.Equal(got, st.wantVersions) {
			t.Errorf("step %d: versions got %v; want %v", i, got, st.wantVersions)
		}
		for _, v := range st.wantVersions {
			if err := checkIntact(root, "m", v); err != nil {
				t.Errorf("step %d: %v", i, err)
			}
		}
	}

	p, _, _ := s.Active("m")
	if p.Sequence != 6 {
		t.Errorf("pointer sequence got %d; want 6", p.Sequence)
	}
	vs, _ := s.Versions("m")
	if got := vs[0]; got.Files != 3 || got.KeyID != "RWtestkey" || got.Installed.IsZero() || got.Sequence != 6 {
		t.Errorf("meta got %+v; want 3 files, key RWtestkey, an install time, sequence 6", got)
	}
	if got, want := s.Path("m", "1.5.0"), filepath.Join(root, "versions", "m", "1.5.0"); got != want {
		t.Errorf("Path got %q; want %q", got, want)
	}
	models, err := s.Models()
	if err != nil || !slices.Equal(models, []string{"m"}) {
		t.Errorf("Models got %v, %v; want [m]", models, err)
	}

	evs, err := s.History("m", 0)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range evs {
		got = append(got, e.Event+" "+e.Version)
	}
	want := []string{
		"installed 1.0.0", "activated 1.0.0",
		"installed 1.1.0", "activated 1.1.0",
		"installed 1.2.0", "activated 1.2.0",
		"installed 1.3.0", "activated 1.3.0", "pruned 1.0.0",
		"activated 1.1.0",
		"installed 1.4.0", "activated 1.4.0",
		"installed 1.5.0", "activated 1.5.0", "pruned 1.2.0", "pruned 1.1.0",
		"activated 1.5.0",
	}
	if !slices.Equal(got, want) {
		t.Errorf("history got\n%v; want\n%v", got, want)
	}
	for i := 1; i < len(evs); i++ {
		if !evs[i].At.After(evs[i-1].At) {
			t.Errorf("history not in order at %d: %v after %v", i, evs[i].At, evs[i-1].At)
		}
	}
	checkNoGarbage(t, root)
}

func TestRefusals(t *testing.T) {
	outside := t.TempDir()
	tests := []struct {
		name string
		do   func(s *Store) error
		want error // nil: any error
	}{
		{"model name with a slash", func(s *Store) error { return installVersion(s, "a/b", "1.0.0", 9) }, ErrInvalidName},
		{"model name ..", func(s *Store) error { return installVersion(s, "..", "1.0.0", 9) }, ErrInvalidName},
		{"model name escaping", func(s *Store) error { return installVersion(s, "../../etc", "1.0.0", 9) }, ErrInvalidName},
		{"hidden model name", func(s *Store) error { return installVersion(s, ".m", "1.0.0", 9) }, ErrInvalidName},
		{"model name with a space", func(s *Store) error { return installVersion(s, "a b", "1.0.0", 9) }, ErrInvalidName},
		{"model name with a backslash", func(s *Store) error { return installVersion(s, `a\b`, "1.0.0", 9) }, ErrInvalidName},
		{"empty version", func(s *Store) error { return installVersion(s, "m", "", 9) }, ErrInvalidName},
		{"version ..", func(s *Store) error { return installVersion(s, "m", "..", 9) }, ErrInvalidName},
		{"version with ..", func(s *Store) error { return installVersion(s, "m", "1..0", 9) }, ErrInvalidName},
		{"version with a slash", func(s *Store) error { return installVersion(s, "m", "1/0", 9) }, ErrInvalidName},
		{"version with a reserved suffix", func(s *Store) error { return installVersion(s, "m", "3.0.deleting", 9) }, ErrInvalidName},
		{"version too long", func(s *Store) error { return installVersion(s, "m", strings.Repeat("1", 200), 9) }, ErrInvalidName},
		{"duplicate install", func(s *Store) error { return installVersion(s, "m", "1.1.0", 9) }, ErrExists},
		{"install from outside staging", func(s *Store) error {
			return s.Install(outside, VersionMeta{Name: "m", Version: "3.0.0"})
		}, ErrNotStaging},
		{"install a staging dir that is gone", func(s *Store) error {
			dir, _ := s.Stage()
			s.Discard(dir)
			return s.Install(dir, VersionMeta{Name: "m", Version: "3.0.0"})
		}, fs.ErrNotExist},
		{"bundle holding version.json", func(s *Store) error {
			dir, _ := s.Stage()
			os.WriteFile(filepath.Join(dir, MetaName), []byte("{}"), 0o644)
			return s.Install(dir, VersionMeta{Name: "m", Version: "3.0.0"})
		}, nil},
		{"bundle holding a symlink", func(s *Store) error {
			dir, _ := s.Stage()
			os.Symlink("/etc/passwd", filepath.Join(dir, "model.tflite"))
			return s.Install(dir, VersionMeta{Name: "m", Version: "3.0.0"})
		}, nil},
		{"activate an unknown version", func(s *Store) error { return s.Activate("m", "9.9.9", "test") }, ErrNotInstalled},
		{"activate an unknown model", func(s *Store) error { return s.Activate("other", "1.1.0", "test") }, ErrNotInstalled},
		{"activate a bad name", func(s *Store) error { return s.Activate("../m", "1.1.0", "test") }, ErrInvalidName},
		{"remove the active version", func(s *Store) error { return s.Remove("m", "1.1.0") }, ErrInUse},
		{"remove the previous version", func(s *Store) error { return s.Remove("m", "1.0.0") }, ErrInUse},
		{"remove an unknown version", func(s *Store) error { return s.Remove("m", "9.9.9") }, ErrNotInstalled},
		{"record without an event", func(s *Store) error { return s.Record("m", "1.1.0", "", "why") }, nil},
		{"record a bad name", func(s *Store) error { return s.Record("a/b", "", "rollback", "why") }, ErrInvalidName},
		{"discard outside staging", func(s *Store) error { return s.Discard(outside) }, ErrNotStaging},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			s := openTest(t, root, 3)
			for i, v := range []string{"0.9.0", "1.0.0", "1.1.0"} {
				if err := installVersion(s, "m", v, uint64(i+1)); err != nil {
					t.Fatal(err)
				}
			}
			s.Activate("m", "1.0.0", "setup")
			s.Activate("m", "1.1.0", "setup")

			err := tt.do(s)
			switch {
			case err == nil:
				t.Fatalf("got no error; want %v", tt.want)
			case tt.want != nil && !errors.Is(err, tt.want):
				t.Errorf("got %v; want %v", err, tt.want)
			case !strings.HasPrefix(err.Error(), "store: "):
				t.Errorf("got %q; want an error that names the store and the operation", err)
			}
			p, _, _ := s.Active("m")
			if got := versionNames(t, s, "m"); p.Version != "1.1.0" || p.Previous != "1.0.0" || !slices.Equal(got, []string{"1.1.0", "1.0.0", "0.9.0"}) {
				t.Errorf("after the refusal: active %s (previous %s), versions %v; want 1.1.0 (previous 1.0.0), [1.1.0 1.0.0 0.9.0]", p.Version, p.Previous, got)
			}
			if ents, _ := os.ReadDir(filepath.Join(root, "versions")); len(ents) != 1 {
				t.Errorf("versions/ holds %d entries; want only m", len(ents))
			}
		})
	}
}

func TestRemove(t *testing.T) {
	root := t.TempDir()
	s := openTest(t, root, 5)
	for i, v := range []string{"1.0.0", "2.0.0", "3.0.0"} {
		if err := installVersion(s, "m", v, uint64(i+1)); err != nil {
			t.Fatal(err)
		}
	}
	s.Activate("m", "2.0.0", "test")
	s.Activate("m", "3.0.0", "test")
	if err := s.Remove("m", "1.0.0"); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	if got, want := versionNames(t, s, "m"), []string{"3.0.0", "2.0.0"}; !slices.Equal(got, want) {
		t.Errorf("versions got %v; want %v", got, want)
	}
	evs, _ := s.History("m", 1)
	if len(evs) != 1 || evs[0].Event != "removed" || evs[0].Version != "1.0.0" {
		t.Errorf("last event got %+v; want removed 1.0.0", evs)
	}
	checkNoGarbage(t, root)
}

func TestStageDiscard(t *testing.T) {
	root := t.TempDir()
	s := openTest(t, root, 3)
	a, err := s.Stage()
	if err != nil {
		t.Fatal(err)
	}
	b, _ := s.Stage()
	if a == b || filepath.Dir(a) != filepath.Join(root, "staging") || !strings.HasSuffix(a, ".unverified") {
		t.Errorf("Stage got %s and %s; want two fresh dirs under %s/staging ending in .unverified", a, b, root)
	}
	if ents, err := os.ReadDir(a); err != nil || len(ents) != 0 {
		t.Errorf("staging dir got %d entries, %v; want empty", len(ents), err)
	}
	os.WriteFile(filepath.Join(a, "f"), []byte("x"), 0o644)
	for range 2 { // discarding twice is fine
		if err := s.Discard(a); err != nil {
			t.Errorf("Discard: got %v; want nil", err)
		}
	}
	if _, err := os.Stat(a); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("after Discard: got %v; want it gone", err)
	}
}

func TestHistory(t *testing.T) {
	s := openTest(t, t.TempDir(), 3)
	for i, ev := range []string{"canary-failed", "rollback", "probation-passed"} {
		if err := s.Record("m", "1.0."+strconv.Itoa(i), ev, "reason "+ev); err != nil {
			t.Fatalf("Record: %v", err)
		}
	}
	if err := s.Record("m", "", "refused", "no version"); err != nil {
		t.Fatalf("Record without version: %v", err)
	}
	tests := []struct {
		limit int
		want  []string
	}{
		{0, []string{"canary-failed", "rollback", "probation-passed", "refused"}},
		{2, []string{"probation-passed", "refused"}},
		{10, []string{"canary-failed", "rollback", "probation-passed", "refused"}},
	}
	for _, tt := range tests {
		evs, err := s.History("m", tt.limit)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, e := range evs {
			got = append(got, e.Event)
		}
		if !slices.Equal(got, tt.want) {
			t.Errorf("History(m, %d) got %v; want %v", tt.limit, got, tt.want)
		}
	}
	if evs, err := s.History("nothing", 0); err != nil || len(evs) != 0 {
		t.Errorf("History of an unknown model got %v, %v; want none", evs, err)
	}
}

func TestHistoryBounded(t *testing.T) {
	root := t.TempDir()
	s := openTest(t, root, 3)
	reason := strings.Repeat("r", 8<<10)
	path := filepath.Join(root, "history", "m.jsonl")
	trimmed := false
	var last int
	for i := 0; i < 200; i++ {
		if err := s.Record("m", "1.0.0", "probe-"+strconv.Itoa(i), reason); err != nil {
			t.Fatal(err)
		}
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Size() > MaxHistoryBytes {
			t.Fatalf("after %d events the history is %d bytes; want at most %d", i+1, fi.Size(), MaxHistoryBytes)
		}
		if fi.Size() < int64(last) {
			trimmed = true
		}
		last = int(fi.Size())
	}
	if !trimmed {
		t.Fatalf("history never trimmed")
	}
	evs, err := s.History("m", 0)
	if err != nil {
		t.Fatal(err)
	}
	if n := len(evs); n < 40 || n > 130 || evs[n-1].Event != "probe-199" {
		t.Errorf("kept %d events ending in %s; want the newer half (~64..128) ending in probe-199", n, evs[n-1].Event)
	}
	for i := 1; i < len(evs); i++ {
		a, _ := strconv.Atoi(strings.TrimPrefix(evs[i-1].Event, "probe-"))
		b, _ := strconv.Atoi(strings.TrimPrefix(evs[i].Event, "probe-"))
		if b != a+1 {
			t.Fatalf("kept events are not consecutive: %s then %s", evs[i-1].Event, evs[i].Event)
		}
	}
	checkHistoryFile(t, root, "m")
	checkNoGarbage(t, root)
}

func TestOpenRecovers(t *testing.T) {
	root := t.TempDir()
	s := openTest(t, root, 3)
	installVersion(s, "m", "1.0.0", 1)
	s.Activate("m", "1.0.0", "setup")
	s.Close()

	write := func(rel, content string) {
		p := filepath.Join(root, filepath.FromSlash(rel))
		os.MkdirAll(filepath.Dir(p), 0o750)
		if err := os.WriteFile(p, []byte(content), 0o640); err != nil {
			t.Fatal(err)
		}
	}
	garbage := []string{
		"staging/0123.unverified/model.tflite",
		"staging/stray",
		"active/m.json.tmp",
		"history/m.jsonl.tmp",
		"versions/m/0.9.0.deleting/model.tflite",
		"versions/m/2.0.0/model.tflite", // no version.json: not from Install
		"versions/x.tmp",
		"versions/m/1.0.0.tmp",
	}
	for _, g := range garbage {
		write(g, "junk")
	}
	f, _ := os.OpenFile(filepath.Join(root, "history", "m.jsonl"), os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString(`{"at":"2025-03-01T12:00:00Z","name":"m","ev`) // a torn append
	f.Close()

	s = openTest(t, root, 3)
	for _, g := range garbage {
		if _, err := os.Stat(filepath.Join(root, filepath.FromSlash(g))); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s after Open: got %v; want it removed", g, err)
		}
	}
	checkNoGarbage(t, root)
	checkHistoryFile(t, root, "m")
	p, ok, err := s.Active("m")
	if err != nil || !ok || p.Version != "1.0.0" {
		t.Errorf("Active got %+v, %v, %v; want 1.0.0", p, ok, err)
	}
	if got := versionNames(t, s, "m"); !slices.Equal(got, []string{"1.0.0"}) {
		t.Errorf("versions got %v; want [1.0.0]", got)
	}
	if err := checkIntact(root, "m", "1.0.0"); err != nil {
		t.Error(err)
	}
	evs, _ := s.History("m", 1)
	if len(evs) != 1 || evs[0].Event != "removed" || evs[0].Version != "2.0.0" {
		t.Errorf("last event got %+v; want removed 2.0.0", evs)
	}
	// 2.0.0 can now be installed for real.
	if err := installVersion(s, "m", "2.0.0", 2); err != nil {
		t.Errorf("install after recovery: %v", err)
	}
}

func TestOpenRepairsPointer(t *testing.T) {
	pointer := func(name, version, previous string) string {
		b, _ := json.Marshal(Pointer{Name: name, Version: version, Previous: previous})
		return string(b)
	}
	tests := []struct {
		name         string
		pointer      string // new content of active/m.json ("" keep)
		breakIt      func(root string)
		wantActive   string // "" no pointer
		wantPrevious string
	}{
		{name: "corrupt JSON, rebuilt from history", pointer: `{"name":"m","vers`, wantActive: "1.1.0", wantPrevious: "1.0.0"},
		{name: "empty file, rebuilt from history", pointer: " ", wantActive: "1.1.0", wantPrevious: "1.0.0"},
		{name: "binary junk, rebuilt from history", pointer: "\x00\xff\x01", wantActive: "1.1.0", wantPrevious: "1.0.0"},
		{name: "pointer of another model", pointer: pointer("other", "1.1.0", ""), wantActive: "1.1.0", wantPrevious: "1.0.0"},
		{name: "pointer with a bad version", pointer: pointer("m", "../x", ""), wantActive: "1.1.0", wantPrevious: "1.0.0"},
		{name: "corrupt JSON and no history", pointer: "{", breakIt: func(root string) {
			os.Remove(filepath.Join(root, "history", "m.jsonl"))
		}},
		{name: "active version missing: previous", breakIt: func(root string) {
			os.RemoveAll(filepath.Join(root, "versions", "m", "1.1.0"))
		}, wantActive: "1.0.0"},
		{name: "active version.json corrupt: previous", breakIt: func(root string) {
			os.WriteFile(filepath.Join(root, "versions", "m", "1.1.0", MetaName), []byte("{"), 0o640)
		}, wantActive: "1.0.0"},
		{name: "active and previous missing", pointer: pointer("m", "9.9.9", "8.8.8")},
		{name: "previous missing", pointer: pointer("m", "1.1.0", "0.1.0"), wantActive: "1.1.0"},
		{name: "wrong sequence", pointer: pointer("m", "1.1.0", "1.0.0"), wantActive: "1.1.0", wantPrevious: "1.0.0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			s := openTest(t, root, 3)
			installVersion(s, "m", "1.0.0", 1)
			installVersion(s, "m", "1.1.0", 2)
			s.Activate("m", "1.0.0", "setup")
			s.Activate("m", "1.1.0", "setup")
			s.Close()
			if tt.pointer != "" {
				os.WriteFile(filepath.Join(root, "active", "m.json"), []byte(tt.pointer), 0o640)
			}
			if tt.breakIt != nil {
				tt.breakIt(root)
			}

			s = openTest(t, root, 3)
			p, ok, err := s.Active("m")
			if err != nil {
				t.Fatalf("Active after Open: %v", err)
			}
			if ok != (tt.wantActive != "") || p.Version != tt.wantActive || p.Previous != tt.wantPrevious {
				t.Errorf("active got %q (previous %q, ok %v); want %q (previous %q)", p.Version, p.Previous, ok, tt.wantActive, tt.wantPrevious)
			}
			if ok {
				if err := checkIntact(root, "m", p.Version); err != nil {
					t.Error(err)
				}
				vs, _ := s.Versions("m")
				if i := slices.IndexFunc(vs, func(v VersionMeta) bool { return v.Version == p.Version }); i < 0 || vs[i].Sequence != p.Sequence {
					t.Errorf("pointer sequence got %d; want that of %s in %+v", p.Sequence, p.Version, vs)
				}
			}
			evs, _ := s.History("m", 0)
			if last := evs[len(evs)-1]; last.Event != "pointer repaired" || last.Reason == "" {
				t.Errorf("last event got %+v; want pointer repaired with a reason", last)
			}
			checkNoGarbage(t, root)
			checkHistoryFile(t, root, "m")
			// A second Open finds nothing to repair.
			s.Close()
			s = openTest(t, root, 3)
			if again, _ := s.History("m", 0); len(again) != len(evs) {
				t.Errorf("a second Open repaired again: %+v", again[len(again)-1])
			}
		})
	}
}

func TestLock(t *testing.T) {
	root := t.TempDir()
	s := openTest(t, root, 3)
	installVersion(s, "m", "1.0.0", 1)
	s.Activate("m", "1.0.0", "test")

	_, err := Open(root, Options{Logger: quiet})
	if !errors.Is(err, ErrLocked) {
		t.Fatalf("second Open got %v; want %v", err, ErrLocked)
	}
	lock := filepath.Join(root, ".lock")
	if !strings.Contains(err.Error(), lock) || !strings.Contains(err.Error(), "pid "+strconv.Itoa(os.Getpid())) {
		t.Errorf("got %q; want it to name %s and pid %d", err, lock, os.Getpid())
	}

	// Readers do not need the lock, and cannot change anything.
	ro, err := OpenReadOnly(root)
	if err != nil {
		t.Fatal(err)
	}
	if p, ok, err := ro.Active("m"); err != nil || !ok || p.Version != "1.0.0" {
		t.Errorf("read-only Active got %+v, %v, %v; want 1.0.0", p, ok, err)
	}
	if _, err := ro.Stage(); !errors.Is(err, ErrReadOnly) {
		t.Errorf("read-only Stage got %v; want %v", err, ErrReadOnly)
	}
	if err := ro.Activate("m", "1.0.0", "x"); !errors.Is(err, ErrReadOnly) {
		t.Errorf("read-only Activate got %v; want %v", err, ErrReadOnly)
	}
	if err := ro.Record("m", "", "x", ""); !errors.Is(err, ErrReadOnly) {
		t.Errorf("read-only Record got %v; want %v", err, ErrReadOnly)
	}

	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Activate("m", "1.0.0", "x"); !errors.Is(err, ErrClosed) {
		t.Errorf("Activate after Close got %v; want %v", err, ErrClosed)
	}
	s2, err := Open(root, Options{Logger: quiet})
	if err != nil {
		t.Fatalf("Open after Close: %v", err)
	}
	s2.Close()
}

func TestOpenReadOnlyMissingRoot(t *testing.T) {
	ro, err := OpenReadOnly(filepath.Join(t.TempDir(), "nothing"))
	if err != nil {
		t.Fatal(err)
	}
	if names, err := ro.Models(); err != nil || len(names) != 0 {
		t.Errorf("Models got %v, %v; want none", names, err)
	}
	if _, ok, err := ro.Active("m"); ok || err != nil {
		t.Errorf("Active got %v, %v; want none", ok, err)
	}
}

func TestOptions(t *testing.T) {
	tests := []struct {
		keep    int
		wantErr bool
	}{
		{0, false}, {2, false}, {10, false}, {1, true}, {-1, true},
	}
	for _, tt := range tests {
		s, err := Open(t.TempDir(), Options{Keep: tt.keep, Logger: quiet})
		if (err != nil) != tt.wantErr {
			t.Errorf("Keep %d: got %v; want error %v", tt.keep, err, tt.wantErr)
		}
		if s != nil {
			want := tt.keep
			if want == 0 {
				want = DefaultKeep
			}
			if s.keep != want {
				t.Errorf("Keep %d: got keep %d; want %d", tt.keep, s.keep, want)
			}
			s.Close()
		}
	}
}

func TestPathRefusesBadNames(t *testing.T) {
	s := openTest(t, t.TempDir(), 3)
	for _, c := range [][2]string{{"..", "1"}, {"m", "../../x"}, {"", "1"}, {"m", ""}, {"m/x", "1"}} {
		if got := s.Path(c[0], c[1]); got != "" {
			t.Errorf("Path(%q, %q) got %q; want \"\"", c[0], c[1], got)
		}
	}
}

// checkNoGarbage fails on anything an interrupted change leaves behind.
func checkNoGarbage(t *testing.T, root string) {
	t.Helper()
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			t.Errorf("walk %s: %v", p, err)
			return nil
		}
		for _, suf := range []string{tmpSuffix, deletingExt, stagingExt} {
			if strings.HasSuffix(p, suf) {
				t.Errorf("garbage left: %s", p)
			}
		}
		return nil
	})
	if ents, _ := os.ReadDir(filepath.Join(root, "staging")); len(ents) != 0 {
		t.Errorf("staging holds %d entries; want none", len(ents))
	}
}

// checkHistoryFile fails unless every line of the history file parses.
func checkHistoryFile(t *testing.T, root, name string) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root, "history", name+".jsonl"))
	if err != nil {
		t.Errorf("history: %v", err)
		return
	}
	if len(b) > 0 && b[len(b)-1] != '\n' {
		t.Errorf("history ends in a torn line")
	}
	for line := range bytes.Lines(b) {
		var e Event
		if err := json.Unmarshal(line, &e); err != nil || e.Event == "" {
			t.Errorf("history line %q: %v", line, err)
		}
	}
}
