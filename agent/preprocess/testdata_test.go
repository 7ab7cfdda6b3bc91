package preprocess

import (
	"image"
	_ "image/jpeg"
	_ "image/png"
	"os"
	"path/filepath"
	"testing"
)

// testdataDir finds ../shared/testdata next to the repository root (the directory holding
// go.mod). It fails the test when the folder is missing: the real pictures are part of the
// test, never skipped.
func testdataDir(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatalf("getwd: %v", err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			break
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatalf("no go.mod above the test directory; cannot locate ../shared/testdata")
		}
		dir = parent
	}
	td := filepath.Join(dir, "..", "shared", "testdata")
	if _, err := os.Stat(td); err != nil {
		t.Fatalf("test data folder missing: %v (it holds the real mnist/ssd pictures; see its README.md)", err)
	}
	return td
}

func decodeTestImage(t testing.TB, name string) image.Image {
	t.Helper()
	f, err := os.Open(filepath.Join(testdataDir(t), name))
	if err != nil {
		t.Fatalf("open test image: %v", err)
	}
	defer f.Close()
	img, _, err := image.Decode(f)
	if err != nil {
		t.Fatalf("decode %s: %v", name, err)
	}
	return img
}
