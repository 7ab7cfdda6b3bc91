package preprocess

import (
	"image"
	_ "image/jpeg"
	_ "image/png"
	"os"
	"path/filepath"
	"testing"

	"github.com/edge-agent/edge-agent/internal/testenv"
)

func decodeTestImage(t testing.TB, name string) image.Image {
	t.Helper()
	f, err := os.Open(filepath.Join(testenv.DataDir(t), name))
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
