package postprocess

// Embeddings: a model's output vector (a face, an image, a sentence, a style), sent as it is or
// L2-normalised, and matched against a gallery of labelled vectors by cosine similarity. The
// gallery is a JSON file shipped with the model:
//
//	{"entries": [{"label": "alice", "vector": [0.12, ...]}, ...]}
//
// Every entry must have the model's dimension; entries are normalised once at load.

import (
	"cmp"
	"encoding/json"
	"fmt"
	"math"
	"slices"

	"github.com/edge-agent/edge-agent/agent/infer"
	"github.com/edge-agent/edge-agent/agent/result"
	"github.com/edge-agent/edge-agent/models/spec"
)

// maxGallery bounds the entries a gallery may hold (each match is a pass over all of them).
const maxGallery = 100_000

type embedHead struct {
	tensor, dim, topK int
	normalize, omit   bool
	minSim            float64
	labels            []string
	gallery           [][]float64 // unit vectors
}

func (p *Postprocessor) newEmbedding(e spec.Embedding, readFile func(string) ([]byte, error)) error {
	o, err := p.tensor("output.embedding.tensor", e.Tensor)
	if err != nil {
		return err
	}
	h := &embedHead{tensor: e.Tensor, dim: o.Elements(), topK: cmp.Or(e.TopK, 1), normalize: e.Normalize, omit: e.OmitVector, minSim: e.MinSimilarity}
	if h.dim < 1 {
		return fmt.Errorf("output.embedding.tensor: output %d (%s) %s holds no values", e.Tensor, o.Name, shapeText(o))
	}
	if e.Gallery != "" {
		if readFile == nil {
			return fmt.Errorf("output.embedding.gallery: %q cannot be read here", e.Gallery)
		}
		b, err := readFile(e.Gallery)
		if err != nil {
			return fmt.Errorf("output.embedding.gallery: read %q: %w", e.Gallery, err)
		}
		var g struct {
			Entries []struct {
				Label  string    `json:"label"`
				Vector []float64 `json:"vector"`
			} `json:"entries"`
		}
		if err := json.Unmarshal(b, &g); err != nil {
			return fmt.Errorf("output.embedding.gallery: %q is not a gallery (%v): want {\"entries\": [{\"label\": ..., \"vector\": [...]}]}", e.Gallery, err)
		}
		if len(g.Entries) == 0 || len(g.Entries) > maxGallery {
			return fmt.Errorf("output.embedding.gallery: %q holds %d entries; want 1 to %d", e.Gallery, len(g.Entries), maxGallery)
		}
		for i, en := range g.Entries {
			if len(en.Vector) != h.dim {
				return fmt.Errorf("output.embedding.gallery: entry %d (%q) has %d values; the model's vectors have %d", i, en.Label, len(en.Vector), h.dim)
			}
			u, n := unit(slices.Clone(en.Vector))
			if n == 0 || !finite(n) {
				return fmt.Errorf("output.embedding.gallery: entry %d (%q) is a zero or non-finite vector", i, en.Label)
			}
			h.labels, h.gallery = append(h.labels, en.Label), append(h.gallery, u)
		}
		h.topK = min(h.topK, len(h.gallery))
	}
	p.embed = h
	return nil
}

// unit scales v to length 1 in place and returns it with its former length.
func unit(v []float64) ([]float64, float64) {
	var s float64
	for _, x := range v {
		s += x * x
	}
	n := math.Sqrt(s)
	if n > 0 {
		for i := range v {
			v[i] /= n
		}
	}
	return v, n
}

func (p *Postprocessor) embedding(out []infer.Tensor) (Output, error) {
	h := p.embed
	v, err := p.values(out, h.tensor)
	if err != nil {
		return Output{}, err
	}
	for i, x := range v {
		if !finite(x) {
			return Output{}, nonFinite(fmt.Sprintf("embedding output %d", h.tensor), i, x)
		}
	}
	raw := slices.Clone(v)
	u, norm := unit(v)
	e := &result.Embedding{Dim: h.dim, Norm: norm}
	if !h.omit {
		e.Vector = raw
		if h.normalize {
			e.Vector = u
		}
	}
	if len(h.gallery) > 0 && norm > 0 {
		sims := make([]float64, len(h.gallery))
		for i, g := range h.gallery {
			var d float64
			for j, x := range g {
				d += x * u[j]
			}
			sims[i] = d
		}
		for _, i := range topK(sims, h.topK) {
			if sims[i] < h.minSim {
				break
			}
			e.Matches = append(e.Matches, result.Match{Label: h.labels[i], Similarity: sims[i]})
		}
	}
	return Output{Embedding: e}, nil
}
