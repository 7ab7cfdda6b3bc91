package pipeline

import (
	"context"
	"fmt"
	"hash/fnv"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/edge-agent/edge-agent/agent/postprocess"
	"github.com/edge-agent/edge-agent/hal/sensor"
)

// Variant tags of results during an experiment: "a" is the serving version, "b" the
// candidate.
const (
	VariantA = "a"
	VariantB = "b"
)

// Experiment runs a candidate version beside a model's serving version.
//
//   - Split (Shadow false): each stream key (the frame's source) is assigned to the
//     candidate when its hash falls below Weight, so a given sensor always sees the same
//     variant; both variants' results are published, tagged "a" or "b".
//   - Shadow: every frame runs on the serving version, whose result is published as usual,
//     and also on the candidate, whose result is only compared: top-1 agreement and the mean
//     absolute difference of the outputs, and its latency.
type Experiment struct {
	Candidate *Serving
	Weight    float64 // split: the share of stream keys sent to the candidate, 0..1
	Shadow    bool
}

// ExperimentStats are an experiment's figures since it started.
type ExperimentStats struct {
	Mode             string  `json:"mode"` // split | shadow
	Weight           float64 `json:"weight,omitempty"`
	CandidateVersion string  `json:"candidate_version"`
	A                Arm     `json:"a"`
	B                Arm     `json:"b"`
	// Shadow comparisons: frames both variants answered, how many had the same top-1 class
	// (classification and detection only), and the mean absolute difference of the outputs.
	Compared     uint64  `json:"compared,omitempty"`
	Top1Compared uint64  `json:"top1_compared,omitempty"`
	Top1Agree    uint64  `json:"top1_agree,omitempty"`
	Agreement    float64 `json:"top1_agreement,omitempty"` // Top1Agree / Top1Compared
	MeanAbsDiff  float64 `json:"mean_abs_diff,omitempty"`
}

// Arm is one variant's figures.
type Arm struct {
	Results    uint64  `json:"results"`
	Errors     uint64  `json:"errors"`
	LatencyP50 float64 `json:"latency_p50_ms"`
	LatencyP99 float64 `json:"latency_p99_ms"`
}

// experiment is an Experiment with its counters.
type experiment struct {
	Experiment
	a, b arm

	mu           sync.Mutex
	compared     uint64
	top1Compared uint64
	top1Agree    uint64
	sumAbsDiff   float64
}

type arm struct {
	errors atomic.Uint64
	stats  modelStats // results count and the latency ring
}

// SetExperiment starts (x non-nil) or ends (nil) an experiment on model and returns the one
// it replaces, whose candidate the caller closes once in-flight frames are done with it
// (infer.Model.Close waits for them).
func (p *Pipeline) SetExperiment(model string, x *Experiment) (*Experiment, error) {
	e, ok := p.models[model]
	if !ok {
		return nil, fmt.Errorf("%w %q", ErrUnknownModel, model)
	}
	var next *experiment
	if x != nil {
		if x.Candidate == nil {
			return nil, fmt.Errorf("model %q: an experiment needs a candidate version", model)
		}
		if x.Weight < 0 || x.Weight > 1 || math.IsNaN(x.Weight) {
			return nil, fmt.Errorf("model %q: experiment weight %v is outside 0..1", model, x.Weight)
		}
		next = &experiment{Experiment: *x}
	}
	old := e.exp.Swap(next)
	if old == nil {
		return nil, nil
	}
	return &old.Experiment, nil
}

// Assign reports whether a stream key goes to the candidate of a split with weight w. The
// hash covers the model name too, so different models split a fleet's sensors differently.
func Assign(model, key string, w float64) bool {
	// FNV alone spreads similar keys ("cam-1", "cam-2") unevenly; the splitmix64
	// finaliser mixes every input bit into the high bits used here.
	h := fnv.New64a()
	h.Write([]byte(model))
	h.Write([]byte{0})
	h.Write([]byte(key))
	z := h.Sum64()
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	z ^= z >> 31
	return float64(z>>11)/float64(1<<53) < w
}

// route picks the serving version for a frame and its variant tag.
func (x *experiment) route(model string, f sensor.Frame, primary *Serving) (*Serving, string, *arm) {
	if x.Shadow || !Assign(model, f.Source, x.Weight) {
		return primary, VariantA, &x.a
	}
	return x.Candidate, VariantB, &x.b
}

// shadow runs the candidate on the same frame and compares its output with the primary's.
func (x *experiment) shadow(ctx context.Context, f sensor.Frame, primary postprocess.Output, w *workerState, now func() time.Time) {
	c := x.Candidate
	start := now()
	in, err := c.Pre.Apply(f, w.shadowIn)
	if err == nil {
		w.shadowIn = in
		out, err := c.Model.Infer(ctx, in)
		if err == nil {
			var po postprocess.Output
			po, err = c.Post.Apply(out)
			if err == nil {
				x.b.stats.observe(now().Sub(start))
				x.b.stats.results.Add(1)
				x.compare(primary, po)
				return
			}
		}
	}
	x.b.errors.Add(1)
}

func (x *experiment) compare(a, b postprocess.Output) {
	top1 := func(o postprocess.Output) (int, bool) {
		switch {
		case len(o.Classes) > 0:
			return o.Classes[0].Index, true
		case len(o.Detections) > 0:
			return o.Detections[0].Class, true
		}
		return 0, false
	}
	va, vb := flatten(a), flatten(b)
	n := min(len(va), len(vb))
	var sum float64
	for i := range n {
		sum += math.Abs(va[i] - vb[i])
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	x.compared++
	if n > 0 {
		x.sumAbsDiff += sum / float64(n)
	}
	ta, oka := top1(a)
	tb, okb := top1(b)
	if oka || okb {
		x.top1Compared++
		if oka && okb && ta == tb {
			x.top1Agree++
		}
	}
}

// flatten lists an output's numbers in a fixed order: raw outputs, class scores by index,
// detection scores, regression values by name.
func flatten(o postprocess.Output) []float64 {
	var v []float64
	for _, t := range o.Outputs {
		v = append(v, t...)
	}
	cs := slices.Clone(o.Classes)
	slices.SortFunc(cs, func(a, b postprocess.Class) int { return a.Index - b.Index })
	for _, c := range cs {
		v = append(v, c.Score)
	}
	for _, d := range o.Detections {
		v = append(v, d.Score)
	}
	names := make([]string, 0, len(o.Values))
	for k := range o.Values {
		names = append(names, k)
	}
	slices.Sort(names)
	for _, k := range names {
		v = append(v, o.Values[k])
	}
	return v
}

func (x *experiment) stats() *ExperimentStats {
	st := &ExperimentStats{Mode: "split", Weight: x.Weight, CandidateVersion: x.Candidate.Version}
	if x.Shadow {
		st.Mode, st.Weight = "shadow", 0
	}
	for _, p := range []struct {
		arm *arm
		out *Arm
	}{{&x.a, &st.A}, {&x.b, &st.B}} {
		lat, _ := p.arm.stats.percentiles()
		*p.out = Arm{Results: p.arm.stats.results.Load(), Errors: p.arm.errors.Load(), LatencyP50: lat.p50, LatencyP99: lat.p99}
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	st.Compared, st.Top1Compared, st.Top1Agree = x.compared, x.top1Compared, x.top1Agree
	if x.top1Compared > 0 {
		st.Agreement = float64(x.top1Agree) / float64(x.top1Compared)
	}
	if x.compared > 0 {
		st.MeanAbsDiff = x.sumAbsDiff / float64(x.compared)
	}
	return st
}
