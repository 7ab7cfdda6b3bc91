//go:build cgo

// Package bundletest makes real, signed model bundles for tests: a fleet key, and bundles of
// real models whose tensors and golden vectors come from running the model with the real
// runtime. Only tests import it.
package bundletest

import (
	"context"
	"encoding/base64"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"testing"

	"github.com/edge-agent/edge-agent/agent/infer"
	"github.com/edge-agent/edge-agent/agent/infer/tflite"
	"github.com/edge-agent/edge-agent/internal/testenv"
	"github.com/edge-agent/edge-agent/models/bundle"
	"github.com/edge-agent/edge-agent/models/sign"
	"github.com/edge-agent/edge-agent/models/spec"
)

// Fleet is a signing key and a folder of bundles made with it.
type Fleet struct {
	Pub  sign.PublicKey
	Priv sign.PrivateKey
	Dir  string
}

// NewFleet makes a fresh key.
func NewFleet(t testing.TB) *Fleet {
	pub, priv, err := sign.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	return &Fleet{Pub: pub, Priv: priv, Dir: t.TempDir()}
}

// SinProcessing reads the sin model's output as the named value "y".
var SinProcessing = spec.Model{Output: spec.Output{Kind: spec.OutputRegression, Regression: spec.Regression{Names: []string{"y"}}}}

// Opt describes a bundle.
type Opt struct {
	Name      string // default "sin"
	Version   string
	Seq       uint64
	ModelPath string     // default: go-tflite's sin model
	Proc      spec.Model // default SinProcessing
	Golden    int        // golden vectors (default 3)
	Edit      func(*bundle.Manifest)
	Signer    *sign.PrivateKey // default the fleet key
	// Comment is the signature's trusted comment (default sign.BundleComment(Name, Seq)).
	Comment string
}

// Pack builds a signed .tar.gz bundle of a real model and returns its path.
func (f *Fleet) Pack(t testing.TB, o Opt) string {
	t.Helper()
	if o.Name == "" {
		o.Name = "sin"
	}
	if o.ModelPath == "" {
		o.ModelPath = testenv.Data(t, "sin_model.tflite")
	}
	if o.Proc.Output.Kind == "" && o.Proc.Input.Kind == "" {
		o.Proc = SinProcessing
	}
	if o.Golden == 0 {
		o.Golden = 3
	}
	m := bundle.Manifest{Name: o.Name, Version: o.Version, Sequence: o.Seq, Model: "model.tflite", Processing: o.Proc}
	if mod, err := tflite.New().LoadFile(o.ModelPath, infer.Options{Delegate: "cpu", Threads: 1}); err == nil {
		describe(t, mod, &m, o.Golden)
		mod.Close()
	} else { // a model that does not load still gets a well-formed manifest
		m.Inputs = []bundle.Tensor{{DType: "float32", Shape: []int{1, 1}}}
		m.Outputs = []bundle.Tensor{{DType: "float32", Shape: []int{1, 1}}}
	}
	if o.Edit != nil {
		o.Edit(&m)
	}
	key := f.Priv
	if o.Signer != nil {
		key = *o.Signer
	}
	path := filepath.Join(f.Dir, fmt.Sprintf("%s-%s-%d.tar.gz", m.Name, m.Version, rand.Int()))
	out, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	comment := o.Comment
	if comment == "" {
		comment = sign.BundleComment(m.Name, m.Sequence)
	}
	if _, err := bundle.Pack(out, m, map[string]string{"model.tflite": o.ModelPath}, func(b []byte) ([]byte, error) {
		return sign.Sign(key, b, comment)
	}, bundle.PackOptions{Gzip: true}); err != nil {
		t.Fatalf("pack: %v", err)
	}
	return path
}

// describe fills the manifest's tensors and n golden vectors by running the model on
// deterministic inputs; large inputs (images) are stored as raw bytes.
func describe(t testing.TB, mod infer.Model, m *bundle.Manifest, n int) {
	info := mod.Info()
	for _, ts := range info.Inputs {
		m.Inputs = append(m.Inputs, tensorOf(ts))
	}
	for _, ts := range info.Outputs {
		m.Outputs = append(m.Outputs, tensorOf(ts))
	}
	for k := range n {
		in := infer.NewTensor(info.Inputs[0].DType, info.Inputs[0].Shape)
		for i := range in.Len() {
			v := float64((i*7+k*13)%200) / 100 // 0..2, fits float and uint8 inputs alike
			if info.Inputs[0].DType != infer.Float32 {
				v = float64((i*7 + k*13) % 200)
			}
			in.SetFloat(i, v)
		}
		out, err := mod.Infer(context.Background(), []infer.Tensor{in})
		if err != nil {
			t.Fatal(err)
		}
		g := bundle.Golden{Tolerance: 1e-4}
		if in.Len() > 1024 {
			g.RawInputs = []string{base64.StdEncoding.EncodeToString(in.Data)}
		} else {
			g.Inputs = [][]float64{in.Floats(infer.Quant{})}
		}
		for o, ts := range out {
			g.Outputs = append(g.Outputs, ts.Floats(info.Outputs[o].Quant))
		}
		m.Golden = append(m.Golden, g)
	}
}

func tensorOf(t infer.TensorInfo) bundle.Tensor {
	return bundle.Tensor{Name: t.Name, DType: t.DType.String(), Shape: t.Shape, Scale: t.Quant.Scale, Zero: t.Quant.ZeroPoint}
}
