package update

import "testing"

// Each list is in ascending order, written by hand from the semver rules and git describe's
// meaning (N commits after the tag).
func TestVersionOrder(t *testing.T) {
	ordered := []string{
		"0.9.9", "1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-alpha.beta", "1.0.0-beta.2", "1.0.0-beta.11",
		"1.0.0-rc.1", "v1.0.0", "1.0.0-3-gabc1234", "1.0.0-12-g0ff1ce0-dirty", "1.0.1", "1.2.0", "1.10.0", "2.0.0",
	}
	for i := range ordered {
		for j := range ordered {
			a, aok := parseVersion(ordered[i])
			b, bok := parseVersion(ordered[j])
			if !aok || !bok {
				t.Fatalf("%q or %q does not parse", ordered[i], ordered[j])
			}
			want := cmpUint(uint64(i), uint64(j))
			if got := compareVersions(a, b); got != want {
				t.Errorf("compare(%s, %s) = %d; want %d", ordered[i], ordered[j], got, want)
			}
		}
	}
	a, _ := parseVersion("1.0.0+build.5")
	b, _ := parseVersion("1.0.0")
	if compareVersions(a, b) != 0 {
		t.Errorf("build metadata changed the order")
	}
	for _, bad := range []string{"dev", "4e6fc0e", "4e6fc0e-dirty", "1.0", "1.0.0.0", "1.x.0", "1.0.0-", "1.0.0-a..b", "", "v"} {
		if _, ok := parseVersion(bad); ok {
			t.Errorf("%q parsed as a release version", bad)
		}
	}
}
