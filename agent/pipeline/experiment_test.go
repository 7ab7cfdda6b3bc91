package pipeline

import (
	"context"
	"fmt"
	"math"
	"testing"

	"github.com/edge-agent/edge-agent/hal/sensor"
)

// Over 10,000 stream keys the share sent to the candidate is the weight within 2 points,
// and a key always gets the same variant.
func TestAssignSplitsByWeightAndSticks(t *testing.T) {
	for _, w := range []float64{0, 0.05, 0.3, 0.5, 1} {
		n := 0
		for i := range 10_000 {
			key := fmt.Sprintf("cam-%d", i)
			b := Assign("detector", key, w)
			if b {
				n++
			}
			if Assign("detector", key, w) != b {
				t.Fatalf("key %s changed variant", key)
			}
		}
		if got := float64(n) / 10_000; math.Abs(got-w) > 0.02 {
			t.Errorf("weight %v: %v of keys went to the candidate", w, got)
		}
	}
}

// A split tags results with their variant and serves each source from its assigned version;
// ending the experiment returns to the serving version alone.
func TestSplitExperiment(t *testing.T) {
	p := New(Options{Device: "d", Sink: &keep{}})
	if err := p.AddModel(ModelConfig{Name: "m"}, serving("1", &standInModel{add: 0})); err != nil {
		t.Fatal(err)
	}
	cand := &standInModel{add: 100}
	if _, err := p.SetExperiment("m", &Experiment{Candidate: serving("2", cand), Weight: 0.5}); err != nil {
		t.Fatal(err)
	}
	counts := map[string]int{}
	for i := range 400 {
		src := fmt.Sprintf("s%d", i%40)
		r, err := p.Process(context.Background(), "m", sensor.Frame{Source: src, Values: []float64{1}})
		if err != nil {
			t.Fatal(err)
		}
		wantB := Assign("m", src, 0.5)
		if (r.Variant == VariantB) != wantB || (r.Variant == VariantB) != (r.Version == "2") {
			t.Fatalf("source %s: variant %q version %q; want b on version 2 exactly when assigned", src, r.Variant, r.Version)
		}
		if r.Version == "2" && r.Outputs[0][0] != 101 {
			t.Fatalf("candidate output %v; want 101", r.Outputs[0][0])
		}
		counts[r.Variant]++
	}
	st := p.Stats()[0].Experiment
	if st == nil || st.A.Results != uint64(counts["a"]) || st.B.Results != uint64(counts["b"]) || st.Mode != "split" || st.CandidateVersion != "2" {
		t.Fatalf("experiment stats %+v; want a=%d b=%d", st, counts["a"], counts["b"])
	}
	old, _ := p.SetExperiment("m", nil)
	if old == nil || old.Candidate.Version != "2" {
		t.Fatalf("ending returned %+v; want the experiment with candidate 2", old)
	}
	r, _ := p.Process(context.Background(), "m", sensor.Frame{Source: "s1", Values: []float64{1}})
	if r.Variant != "" || r.Version != "1" || p.Stats()[0].Experiment != nil {
		t.Errorf("after the experiment: %+v", r)
	}
}

// Shadow publishes only the serving version's results and compares the candidate's: a
// candidate that adds 0.5 differs by exactly 0.5 on average.
func TestShadowExperiment(t *testing.T) {
	p := New(Options{Device: "d", Sink: &keep{}})
	p.AddModel(ModelConfig{Name: "m"}, serving("1", &standInModel{}))
	cand := &standInModel{add: 0.5}
	p.SetExperiment("m", &Experiment{Candidate: serving("2", cand), Shadow: true})
	for i := range 50 {
		r, err := p.Process(context.Background(), "m", sensor.Frame{Source: fmt.Sprint(i), Values: []float64{float64(i)}})
		if err != nil || r.Version != "1" || r.Variant != VariantA {
			t.Fatalf("shadow result %+v, %v; want version 1 tagged a", r, err)
		}
	}
	st := p.Stats()[0].Experiment
	if cand.calls.Load() != 50 || st.Compared != 50 || st.B.Results != 50 || math.Abs(st.MeanAbsDiff-0.5) > 1e-9 || st.Mode != "shadow" {
		t.Fatalf("shadow stats %+v (candidate calls %d); want 50 compared, mean abs diff 0.5", st, cand.calls.Load())
	}
}

func TestSetExperimentRefusesBadInput(t *testing.T) {
	p := New(Options{Device: "d", Sink: &keep{}})
	p.AddModel(ModelConfig{Name: "m"}, serving("1", &standInModel{}))
	for _, x := range []*Experiment{{Weight: 0.5}, {Candidate: serving("2", &standInModel{}), Weight: 1.5}} {
		if _, err := p.SetExperiment("m", x); err == nil {
			t.Errorf("SetExperiment(%+v) succeeded", x)
		}
	}
	if _, err := p.SetExperiment("nope", nil); err == nil {
		t.Error("SetExperiment on an unknown model succeeded")
	}
}
