package postprocess

import (
	"errors"
	"math"
	"strings"
	"testing"

	"github.com/edge-agent/edge-agent/agent/infer"
	"github.com/edge-agent/edge-agent/models/spec"
)

// Multi-label classification: each logit through its own sigmoid, every class at or above the
// threshold kept (here two of four), highest first.
func TestSigmoidClassification(t *testing.T) {
	p := mustNew(t, spec.Output{Kind: spec.OutputClassification, Labels: []string{"a", "b", "c", "d"},
		Classification: spec.Classification{Sigmoid: true, TopK: 4, Threshold: 0.6}}, []infer.TensorInfo{info(infer.Float32, 1, 4)})
	out, err := p.Apply([]infer.Tensor{f32([]int{1, 4}, 2, -1, 0.5, 1)})
	if err != nil {
		t.Fatal(err)
	}
	s := func(x float64) float64 { return 1 / (1 + math.Exp(-x)) }
	want := []Class{{Index: 0, Label: "a", Score: s(2)}, {Index: 3, Label: "d", Score: s(1)}} // s(0.5) = 0.622 ≥ 0.6 too
	want = append(want, Class{Index: 2, Label: "c", Score: s(0.5)})
	if len(out.Classes) != 3 {
		t.Fatalf("classes %+v; want %+v", out.Classes, want)
	}
	for i := range want {
		if out.Classes[i].Index != want[i].Index || math.Abs(out.Classes[i].Score-want[i].Score) > 1e-9 {
			t.Errorf("class %d = %+v; want %+v", i, out.Classes[i], want[i])
		}
	}
	if err := (spec.Model{Output: spec.Output{Kind: spec.OutputClassification, Classification: spec.Classification{Sigmoid: true, Softmax: true}}}).Validate(); err == nil {
		t.Error("softmax and sigmoid together were accepted")
	}
}

// An embedding is sent with its norm, normalised on request, and matched against a gallery by
// cosine similarity: [3,4] is nearest to "right" ([0.6,0.8] exactly, similarity 1), then
// "diagonal" ([1,1]: 7/(5·√2)), and "left" ([-1,0]: -0.6) is under min_similarity.
func TestEmbeddingGallery(t *testing.T) {
	gallery := `{"entries": [{"label": "left", "vector": [-1, 0]}, {"label": "diagonal", "vector": [1, 1]}, {"label": "right", "vector": [6, 8]}]}`
	read := func(name string) ([]byte, error) {
		if name != "g.json" {
			return nil, errors.New("no such file")
		}
		return []byte(gallery), nil
	}
	p, err := New(spec.Output{Kind: spec.OutputEmbedding, Embedding: spec.Embedding{Normalize: true, Gallery: "g.json", TopK: 3, MinSimilarity: 0}},
		[]infer.TensorInfo{info(infer.Float32, 1, 2)}, read)
	if err != nil {
		t.Fatal(err)
	}
	out, err := p.Apply([]infer.Tensor{f32([]int{1, 2}, 3, 4)})
	if err != nil {
		t.Fatal(err)
	}
	e := out.Embedding
	if e.Dim != 2 || e.Norm != 5 || math.Abs(e.Vector[0]-0.6) > 1e-12 || math.Abs(e.Vector[1]-0.8) > 1e-12 {
		t.Errorf("embedding %+v; want dim 2, norm 5, vector [0.6 0.8]", e)
	}
	if len(e.Matches) != 2 || e.Matches[0].Label != "right" || math.Abs(e.Matches[0].Similarity-1) > 1e-12 ||
		e.Matches[1].Label != "diagonal" || math.Abs(e.Matches[1].Similarity-7/(5*math.Sqrt2)) > 1e-12 {
		t.Errorf("matches %+v; want right (1), diagonal (0.9899)", e.Matches)
	}
	for _, c := range []struct{ gallery, want string }{
		{`{"entries": [{"label": "x", "vector": [1, 2, 3]}]}`, "has 3 values; the model's vectors have 2"},
		{`{"entries": []}`, "holds 0 entries"},
		{`{"entries": [{"label": "z", "vector": [0, 0]}]}`, "zero or non-finite"},
		{`not json`, "is not a gallery"},
	} {
		gallery = c.gallery
		if _, err := New(spec.Output{Kind: spec.OutputEmbedding, Embedding: spec.Embedding{Gallery: "g.json"}}, []infer.TensorInfo{info(infer.Float32, 1, 2)}, read); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("gallery %s: %v; want %q", c.gallery, err, c.want)
		}
	}
	p = mustNew(t, spec.Output{Kind: spec.OutputEmbedding, Embedding: spec.Embedding{OmitVector: true}}, []infer.TensorInfo{info(infer.Float32, 1, 2)})
	if out, _ := p.Apply([]infer.Tensor{f32([]int{1, 2}, 3, 4)}); out.Embedding.Vector != nil || out.Embedding.Norm != 5 {
		t.Errorf("omit_vector: %+v", out.Embedding)
	}
}
