package tflitefmt

import (
	"errors"
	"math/rand"
	"os"
	"reflect"
	"testing"

	"github.com/edge-agent/edge-agent/internal/testenv"
)

func testdata(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(testenv.Data(t, name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParseRealModels(t *testing.T) {
	for _, tc := range []struct {
		file       string
		wantOps    []string
		wantCustom []string
	}{
		{"mnist_model.tflite", []string{"FULLY_CONNECTED", "SOFTMAX"}, nil},
		{"ssd_mobilenet_detect.tflite", []string{"CONV_2D", "DEPTHWISE_CONV_2D", "TFLite_Detection_PostProcess"}, []string{"TFLite_Detection_PostProcess"}},
	} {
		m, err := Parse(testdata(t, tc.file))
		if err != nil {
			t.Fatalf("%s: %v", tc.file, err)
		}
		names := m.OpNames()
		for _, w := range tc.wantOps {
			found := false
			for _, n := range names {
				found = found || n == w
			}
			if !found {
				t.Errorf("%s: ops %v; want them to include %s", tc.file, names, w)
			}
		}
		if got := m.CustomOps(); !reflect.DeepEqual(got, tc.wantCustom) && !(len(got) == 0 && len(tc.wantCustom) == 0) {
			t.Errorf("%s: custom ops %v; want %v", tc.file, got, tc.wantCustom)
		}
		if m.Subgraphs < 1 || m.Operators < 1 {
			t.Errorf("%s: %d subgraphs, %d operators; want ≥1 each", tc.file, m.Subgraphs, m.Operators)
		}
	}
}

func TestParseRejectsGarbage(t *testing.T) {
	good := testdata(t, "mnist_model.tflite")
	cases := map[string][]byte{
		"empty":       nil,
		"short":       good[:6],
		"truncated":   good[:1000],
		"random":      randomBytes(4096, 1),
		"wrong ident": append(append([]byte{}, good[:4]...), []byte("XXXX")...),
	}
	for name, b := range cases {
		if _, err := Parse(b); !errors.Is(err, ErrFormat) {
			t.Errorf("%s: err = %v; want ErrFormat", name, err)
		}
	}
}

func randomBytes(n int, seed int64) []byte {
	b := make([]byte, n)
	rand.New(rand.NewSource(seed)).Read(b)
	return b
}

func FuzzParse(f *testing.F) {
	f.Add(testdata(f, "mnist_model.tflite")[:4096])
	f.Add([]byte("\x10\x00\x00\x00TFL3\x00\x00"))
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _ = Parse(b) // must not panic
	})
}
