package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/edge-agent/edge-agent/agent"
	"github.com/edge-agent/edge-agent/agent/config"
	"github.com/edge-agent/edge-agent/agent/infer"
	"github.com/edge-agent/edge-agent/agent/infer/tflitefmt"
	"github.com/edge-agent/edge-agent/agent/pipeline"
	"github.com/edge-agent/edge-agent/agent/result"
	"github.com/edge-agent/edge-agent/hal/accel"
	"github.com/edge-agent/edge-agent/hal/sensor"
	"github.com/edge-agent/edge-agent/hal/sensor/file"
	"github.com/edge-agent/edge-agent/internal/yamlstrict"
	"github.com/edge-agent/edge-agent/models/spec"
)

// maxInputBytes bounds an input file for predict.
const maxInputBytes = 64 << 20

func cmdPredict(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("predict", flag.ContinueOnError)
	fs.SetOutput(stderr)
	model := fs.String("model", "", "the .tflite model (required)")
	input := fs.String("input", "", "input: PNG or JPEG picture, .npy tensor, .json array of numbers (required)")
	specPath := fs.String("spec", "", "YAML pre/post-processing spec (the `input:`/`output:` of a model in the config)")
	delegate := fs.String("delegate", "auto", "auto | cpu | xnnpack | edgetpu | gpu")
	threads := fs.Int("threads", 0, "CPU threads (0 = number of CPUs, at most 4)")
	asJSON := fs.Bool("json", false, "print the result as JSON")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *model == "" || *input == "" || fs.NArg() > 0 {
		return usageError{errors.New("--model and --input are required, and nothing else")}
	}
	m := config.Model{Name: strings.TrimSuffix(filepath.Base(*model), filepath.Ext(*model)), Path: *model,
		Version: "file", Delegate: *delegate, Threads: *threads, Workers: 1}
	if *specPath != "" {
		s, err := readSpec(*specPath)
		if err != nil {
			return err
		}
		m.Spec = s
	}
	frame, err := readInput(*input)
	if err != nil {
		return err
	}
	eng, err := infer.Engines.New("tflite")
	if err != nil {
		return err
	}
	serving, err := agent.LoadServing(eng, m, accel.Detect("/"), nil)
	if err != nil {
		return err
	}
	defer serving.Model.(infer.Model).Close()
	p := pipeline.New(pipeline.Options{Device: hostname()})
	if err := p.AddModel(pipeline.ModelConfig{Name: m.Name}, serving); err != nil {
		return err
	}
	r, err := p.Process(context.Background(), m.Name, frame)
	if err != nil {
		return err
	}
	if info := serving.Model.Info(); info.Fallback != "" {
		fmt.Fprintf(stderr, "note: running on %s: %s\n", info.Delegate, info.Fallback)
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(r)
	}
	printResult(stdout, r)
	return nil
}

// readSpec reads a spec file; unknown fields are refused so typos surface.
func readSpec(path string) (spec.Model, error) {
	var s spec.Model
	b, err := os.ReadFile(path)
	if err != nil {
		return s, fmt.Errorf("spec: %w", err)
	}
	if err := yamlstrict.Decode(b, &s); err != nil {
		return s, fmt.Errorf("spec %s: %w", path, err)
	}
	if s.Output.LabelsFile != "" && !filepath.IsAbs(s.Output.LabelsFile) {
		s.Output.LabelsFile = filepath.Join(filepath.Dir(path), s.Output.LabelsFile)
	}
	if err := s.Validate(); err != nil {
		return s, fmt.Errorf("spec %s: %w", path, err)
	}
	return s, nil
}

// readInput decodes an input file the way the file source does; .json holds numbers.
func readInput(path string) (sensor.Frame, error) {
	f, err := os.Open(path)
	if err != nil {
		return sensor.Frame{}, fmt.Errorf("input: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxInputBytes+1))
	if err != nil {
		return sensor.Frame{}, fmt.Errorf("input %s: %w", path, err)
	}
	if len(data) > maxInputBytes {
		return sensor.Frame{}, fmt.Errorf("input %s: over the %d MiB limit", path, maxInputBytes>>20)
	}
	var fr sensor.Frame
	if strings.EqualFold(filepath.Ext(path), ".json") {
		fr.Values, err = numbers(data)
	} else {
		fr, err = file.Decode(path, data, sensor.FileSpec{})
	}
	if err != nil {
		return sensor.Frame{}, fmt.Errorf("input %s: %w", path, err)
	}
	fr.Source, fr.Seq, fr.Ref = "predict", 1, path
	return fr, nil
}

// numbers reads a JSON array of numbers, nested arrays flattened in row-major order.
func numbers(data []byte) ([]float64, error) {
	var v any
	if err := json.Unmarshal(data, &v); err != nil {
		return nil, fmt.Errorf("not JSON: %w", err)
	}
	var out []float64
	var walk func(any) error
	walk = func(x any) error {
		switch t := x.(type) {
		case float64:
			out = append(out, t)
		case []any:
			for _, e := range t {
				if err := walk(e); err != nil {
					return err
				}
			}
		default:
			return fmt.Errorf("want an array of numbers, found %T", x)
		}
		return nil
	}
	if err := walk(v); err != nil {
		return nil, err
	}
	return out, nil
}

func printResult(w io.Writer, r *result.Result) {
	fmt.Fprintf(w, "model %s  latency %.2f ms\n", r.Model, float64(r.LatencyUS)/1000)
	for _, c := range r.Classes {
		fmt.Fprintf(w, "  class %3d %-20s %.4f\n", c.Index, c.Label, c.Score)
	}
	for _, d := range r.Detections {
		fmt.Fprintf(w, "  %-14s %.3f  box ymin=%.3f xmin=%.3f ymax=%.3f xmax=%.3f\n", d.Label, d.Score, d.Box.YMin, d.Box.XMin, d.Box.YMax, d.Box.XMax)
	}
	for k, v := range r.Values {
		fmt.Fprintf(w, "  %s = %g\n", k, v)
	}
	for i, o := range r.Outputs {
		fmt.Fprintf(w, "  output %d: %s\n", i, head(o, 16))
	}
}

func head(v []float64, n int) string {
	var b strings.Builder
	for i, x := range v {
		if i == n {
			fmt.Fprintf(&b, " … (%d values)", len(v))
			break
		}
		fmt.Fprintf(&b, " %.5g", x)
	}
	return strings.TrimSpace(b.String())
}

func hostname() string {
	h, _ := os.Hostname()
	return h
}

func cmdInspect(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("inspect", flag.ContinueOnError)
	fs.SetOutput(stderr)
	asJSON := fs.Bool("json", false, "print JSON")
	delegate := fs.String("delegate", "auto", "auto | cpu | xnnpack | edgetpu | gpu (auto, as predict and run: what this device would use)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return usageError{errors.New("give exactly one model file")}
	}
	path := fs.Arg(0)
	eng, err := infer.Engines.New("tflite")
	if err != nil {
		// Without the runtime, still say what the file holds.
		data, rerr := os.ReadFile(path)
		if rerr != nil {
			return rerr
		}
		fm, perr := tflitefmt.Parse(data)
		if perr != nil {
			return fmt.Errorf("%s: %w", path, perr)
		}
		fmt.Fprintf(stdout, "%s: TensorFlow Lite schema %d, %d subgraphs, %d operators\nops: %s\n(%v)\n", path, fm.SchemaVersion, fm.Subgraphs, fm.Operators, strings.Join(fm.OpNames(), ", "), err)
		return nil
	}
	m, err := eng.LoadFile(path, infer.Options{Delegate: *delegate, EdgeTPUAvailable: accel.Detect("/").HasEdgeTPU()})
	if err != nil {
		return err
	}
	defer m.Close()
	info := m.Info()
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(struct {
			Path string `json:"path"`
			infer.ModelInfo
		}{path, info})
	}
	fmt.Fprintf(stdout, "model    %s (%d bytes)\nruntime  %s, delegate %s, %d threads\n", path, info.Bytes, info.Runtime, info.Delegate, info.Threads)
	if info.Fallback != "" {
		fmt.Fprintf(stdout, "fallback %s\n", info.Fallback)
	}
	for _, group := range []struct {
		name string
		ts   []infer.TensorInfo
	}{{"input", info.Inputs}, {"output", info.Outputs}} {
		for _, t := range group.ts {
			q := ""
			if t.Quant.Quantised() {
				q = fmt.Sprintf("  scale %g zero_point %d", t.Quant.Scale, t.Quant.ZeroPoint)
			}
			if t.Dynamic() {
				q += "  dynamic: its shape is known only after an invoke"
			}
			fmt.Fprintf(stdout, "%-8s %d %-32s %-8s %v%s\n", group.name, t.Index, t.Name, t.DType, t.Shape, q)
		}
	}
	fmt.Fprintf(stdout, "ops      %s\n", strings.Join(info.Ops, ", "))
	return nil
}

func cmdVersion(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("version", flag.ContinueOnError)
	fs.SetOutput(stderr)
	if err := fs.Parse(args); err != nil {
		return err
	}
	rt := "none (built without cgo: no inference engine)"
	if eng, err := infer.Engines.New("tflite"); err == nil {
		rt = "TensorFlow Lite " + eng.Version()
	}
	fmt.Fprintf(stdout, "edge-agent %s\nruntime    %s\ngo         %s %s/%s\nhardware   %s\n", agent.Version, rt, runtime.Version(), runtime.GOOS, runtime.GOARCH, accel.Detect("/").Summary())
	return nil
}
