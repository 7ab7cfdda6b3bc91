package testenv

import (
	"fmt"
	"math/rand/v2"
	"os"
	"testing"

	"github.com/edge-agent/edge-agent/internal/boltcheck"
)

// DamagedCopies reads the whole bbolt file at path and returns damaged copies of it by name,
// the fault-injection audit's patterns: truncated at the extra sizes given and at fixed places
// below the pages its meta page names (100 bytes, one page and a bit, three pages, half, one
// page short, one byte short), one data page of random bytes (five pages, three seeds each),
// each meta page zeroed, both zeroed, a file of random bytes and an empty file (which bbolt
// takes as a new one). Truncations are named "truncated ..."; every one of them loses pages.
// The file must hold at least 20 pages.
func DamagedCopies(t testing.TB, path string, truncateAt ...int) map[string][]byte {
	t.Helper()
	good, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	m, err := boltcheck.Preflight(path)
	if err != nil {
		t.Fatal(err)
	}
	ps, need := int(m.PageSize), int(m.Pages)*int(m.PageSize) // bbolt grows files ahead: past need, nothing is lost
	if m.Pages < 20 {
		t.Fatalf("%s holds %d pages; want at least 20 to damage", path, m.Pages)
	}
	cases := map[string][]byte{}
	for _, n := range append(truncateAt, 100, ps+10, 3*ps, need/2, need-ps, need-1) {
		if n < need {
			cases[fmt.Sprintf("truncated to %d bytes", n)] = good[:n]
		}
	}
	for _, page := range []int{2, 3, 5, need / ps / 2, need/ps - 2} {
		for seed := range 3 {
			b := append([]byte(nil), good...)
			r := rand.New(rand.NewPCG(uint64(page), uint64(seed)))
			for i := page * ps; i < (page+1)*ps; i++ {
				b[i] = byte(r.IntN(256))
			}
			cases[fmt.Sprintf("page %d random (seed %d)", page, seed)] = b
		}
	}
	for i, name := range []string{"first", "second"} {
		b := append([]byte(nil), good...)
		clear(b[i*ps : (i+1)*ps])
		cases[name+" meta page zeroed"] = b
	}
	both := append([]byte(nil), good...)
	clear(both[:2*ps])
	cases["both meta pages zeroed"] = both
	random := make([]byte, len(good))
	r := rand.New(rand.NewPCG(7, 7))
	for i := range random {
		random[i] = byte(r.IntN(256))
	}
	cases["random bytes"] = random
	cases["zero length"] = []byte{}
	return cases
}
