package preprocess

import (
	"fmt"
	"math"
	"slices"
	"strings"
	"sync/atomic"

	"github.com/edge-agent/edge-agent/agent/infer"
	"github.com/edge-agent/edge-agent/models/spec"
)

// vectorStage feeds numbers into input 0: features picked by name (or by position),
// standardised as (x - mean[i]) / std[i], quantised when the tensor is.
type vectorStage struct {
	n        int      // element count of input 0
	features []string // empty: positional
	mean     []float64
	std      []float64
	enc      encoder
	// order caches the feature → frame index mapping for the last frame.Names seen; sources
	// send the same names every frame, so lookups are a slice comparison.
	order atomic.Pointer[featureOrder]
}

type featureOrder struct {
	names []string // copy of frame.Names this order was built for
	idx   []int    // frame index of feature i
}

func newVectorStage(v spec.Vector, in infer.TensorInfo) (*vectorStage, error) {
	n := in.Elements()
	enc, err := newEncoder(in)
	if err != nil {
		return nil, fmt.Errorf("input.vector: %w", err)
	}
	if len(v.Features) > 0 && len(v.Features) != n {
		return nil, fmt.Errorf("input.vector.features: lists %d features but input %d (%s) %v takes %d values; list exactly %d", len(v.Features), in.Index, in.Name, in.Shape, n, n)
	}
	seen := map[string]bool{}
	for i, f := range v.Features {
		if seen[f] {
			return nil, fmt.Errorf("input.vector.features[%d]: %q is listed twice", i, f)
		}
		seen[f] = true
	}
	for _, st := range []struct {
		name string
		v    []float64
	}{{"mean", v.Mean}, {"std", v.Std}} {
		if len(st.v) > 1 && len(st.v) != n {
			return nil, fmt.Errorf("input.vector.%s: has %d values for %d inputs; give one value or %d", st.name, len(st.v), n, n)
		}
		for i, x := range st.v {
			if math.IsNaN(x) || math.IsInf(x, 0) {
				return nil, fmt.Errorf("input.vector.%s[%d]: %v is not a finite number", st.name, i, x)
			}
		}
	}
	s := &vectorStage{n: n, features: append([]string(nil), v.Features...), enc: enc}
	s.mean = broadcast(v.Mean, n, 0)
	s.std = broadcast(v.Std, n, 1)
	return s, nil
}

func broadcast(v []float64, n int, def float64) []float64 {
	out := make([]float64, n)
	for i := range out {
		switch len(v) {
		case 0:
			out[i] = def
		case 1:
			out[i] = v[0]
		default:
			out[i] = v[i]
		}
	}
	return out
}

func (s *vectorStage) apply(values []float64, names []string, data []byte) error {
	var idx []int
	if len(s.features) > 0 {
		o, err := s.lookup(names)
		if err != nil {
			return err
		}
		if len(values) != len(names) {
			return fmt.Errorf("%w: frame has %d values but %d names", ErrBadFrame, len(values), len(names))
		}
		idx = o.idx
	} else if len(values) != s.n {
		return fmt.Errorf("%w: frame has %d values, the model's input takes %d; list input.vector.features to pick them by name", ErrBadFrame, len(values), s.n)
	}
	var buf [64]float64
	for start := 0; start < s.n; start += len(buf) {
		chunk := buf[:min(len(buf), s.n-start)]
		for j := range chunk {
			i := start + j
			k := i
			if idx != nil {
				k = idx[i]
			}
			x := values[k]
			if math.IsNaN(x) || math.IsInf(x, 0) {
				return fmt.Errorf("%w: value %s is %v", ErrBadFrame, s.valueName(i, names, k), x)
			}
			chunk[j] = s.enc.quantise((x - s.mean[i]) / s.std[i])
		}
		s.enc.store(data, start, chunk)
	}
	return nil
}

func (s *vectorStage) valueName(i int, names []string, k int) string {
	if len(s.features) > 0 {
		return fmt.Sprintf("%q", s.features[i])
	}
	if k < len(names) {
		return fmt.Sprintf("%d (%q)", k, names[k])
	}
	return fmt.Sprint(k)
}

// lookup maps features to indexes of names, reusing the last mapping when names repeat.
func (s *vectorStage) lookup(names []string) (*featureOrder, error) {
	if o := s.order.Load(); o != nil && slices.Equal(o.names, names) {
		return o, nil
	}
	if len(names) == 0 {
		return nil, fmt.Errorf("%w: frame has unnamed values but input.vector.features picks them by name (%s); give the source column names or remove features", ErrBadFrame, strings.Join(s.features, ", "))
	}
	pos := make(map[string]int, len(names))
	for i, n := range names {
		if _, dup := pos[n]; !dup {
			pos[n] = i
		}
	}
	o := &featureOrder{names: append([]string(nil), names...), idx: make([]int, len(s.features))}
	var missing []string
	for i, f := range s.features {
		k, ok := pos[f]
		if !ok {
			missing = append(missing, fmt.Sprintf("%q", f))
		}
		o.idx[i] = k
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("%w: feature %s missing from the frame (it has %s); fix input.vector.features or the source", ErrBadFrame, strings.Join(missing, ", "), quoteList(names))
	}
	s.order.Store(o)
	return o, nil
}

func quoteList(names []string) string {
	const max = 20
	var b strings.Builder
	for i, n := range names {
		if i == max {
			fmt.Fprintf(&b, ", … (%d more)", len(names)-max)
			break
		}
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%q", n)
	}
	return b.String()
}
