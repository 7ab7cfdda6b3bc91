package update

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A damaged floor: the running version stands in, so upgrades above it are taken and nothing
// at or below it; no downgrade is taken (which were taken is lost), also after a confirmed
// update, until the file is removed by hand.
func TestDamagedFloorFailsClosed(t *testing.T) {
	exe := filepath.Join(t.TempDir(), "edge-agent")
	p := pathsOf(exe)
	os.WriteFile(p.floor, []byte(`{"schema":"edge-agent/update-floor/v1","version":"3.`), 0o644) // torn
	check := func(what string, s Signed, want string) {
		t.Helper()
		err := checkFloor(p, "2.0.0", s)
		if want == "" && err != nil || want != "" && (err == nil || !strings.Contains(err.Error(), want)) {
			t.Errorf("%s: %v; want %q", what, err, want)
		}
	}
	check("an upgrade", Signed{Version: "2.1.0"}, "")
	check("the running version", Signed{Version: "2.0.0"}, "not above 2.0.0")
	check("a downgrade", Signed{Version: "1.0.0", Downgrade: 99}, "found damaged")
	tr := &Trial{p: p, Pending: Pending{Version: "2.1.0", FromVersion: "2.0.0"}}
	os.WriteFile(p.pending, []byte("{}"), 0o644) // Confirm removes it
	if err := tr.Confirm(); err != nil {
		t.Fatal(err)
	}
	fl, err := ReadFloor(exe)
	if err != nil || fl.Version != "2.1.0" || !fl.DowngradesLost {
		t.Fatalf("floor after confirming: %+v, %v; want 2.1.0 with downgrades lost", fl, err)
	}
	check("a downgrade after the floor was rewritten", Signed{Version: "1.0.0", Downgrade: 99}, "found damaged")
	os.Remove(p.floor) // by hand
	check("a downgrade once the file is removed", Signed{Version: "1.0.0", Downgrade: 1}, "")
}
