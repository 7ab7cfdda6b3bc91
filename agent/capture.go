package agent

// The capture command: upload a model's next N inputs with their outputs as samples for
// retraining. The pipeline's tap copies each served frame's tensors on the worker; this
// handler encodes them and stores them in the outbox's samples stream, which the link sends
// to <prefix>/<device>/samples like results (durably, in order, across outages).

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"image/png"
	"time"

	"github.com/edge-agent/edge-agent/agent/command"
	"github.com/edge-agent/edge-agent/agent/infer"
	"github.com/edge-agent/edge-agent/agent/pipeline"
)

// SampleSchema is the schema field of every captured sample.
const SampleSchema = "edge-agent/sample/v1"

// Capture bounds.
const (
	maxCaptureCount = 1000
	// maxSampleBytes bounds one stored sample; above it the source frame is left out (the
	// model's input tensors stay), and a sample still above it is skipped.
	maxSampleBytes = 4 << 20
	// captureQueue bounds samples copied by the workers and not yet stored; a frame that
	// finds it full is not captured (the capture takes a later one).
	captureQueue = 8
)

// sampleTensor is a tensor in a sample: element bytes little-endian, base64 in JSON.
type sampleTensor struct {
	DType infer.DType `json:"dtype"`
	Shape []int       `json:"shape"`
	Data  []byte      `json:"data"`
}

// sampleRecord is one stored sample (docs/mqtt.md#samples).
type sampleRecord struct {
	Schema   string         `json:"schema"`
	Device   string         `json:"device"`
	Reason   string         `json:"reason,omitempty"` // why it was taken when not by a capture command ("drift")
	Drift    any            `json:"drift,omitempty"`  // the drift alert that took it
	Capture  string         `json:"capture"`          // the capture command's id
	N        int            `json:"n"`                // 1-based index within the capture
	Of       int            `json:"of"`
	Model    string         `json:"model"`
	Version  string         `json:"version"`
	Variant  string         `json:"variant,omitempty"`
	TS       time.Time      `json:"ts"`
	Source   string         `json:"source,omitempty"`
	FrameSeq uint64         `json:"frame_seq,omitempty"`
	InputRef string         `json:"input_ref,omitempty"`
	Frame    *sampleFrame   `json:"frame,omitempty"`
	Omitted  string         `json:"omitted,omitempty"` // why Frame is missing
	Inputs   []sampleTensor `json:"inputs"`
	Outputs  []sampleTensor `json:"outputs"`
	Result   any            `json:"result"`
}

// sampleFrame is the source's frame before preprocessing: an image as PNG, numbers, or a raw
// tensor.
type sampleFrame struct {
	PNG    []byte        `json:"png,omitempty"`
	Values []float64     `json:"values,omitempty"`
	Names  []string      `json:"names,omitempty"`
	Tensor *sampleTensor `json:"tensor,omitempty"`
}

type captureArgs struct {
	Model string `json:"model"`
	Count int    `json:"count"`
}

// captureHandler adds the capture command.
func (a *Agent) captureHandler(h map[string]command.Handler) {
	h["capture"] = func(ctx context.Context, c command.Command, progress command.Progress) (any, error) {
		var args captureArgs
		if len(c.Args) > 0 {
			if err := json.Unmarshal(c.Args, &args); err != nil {
				return nil, fmt.Errorf(`capture needs args {"model": NAME, "count": 1..%d}: %v`, maxCaptureCount, err)
			}
		}
		if args.Count == 0 {
			args.Count = 10
		}
		if args.Count < 1 || args.Count > maxCaptureCount {
			return nil, fmt.Errorf("capture count %d is out of range: ask for 1..%d samples", args.Count, maxCaptureCount)
		}
		if args.Model == "" {
			names := a.modelNames()
			if len(names) != 1 {
				return nil, fmt.Errorf(`capture needs args {"model": NAME}: this device serves %v`, names)
			}
			args.Model = names[0]
		}
		if a.fleet == nil {
			return nil, errors.New("no outbox on this agent: samples have nowhere to go")
		}
		return a.capture(ctx, c.ID, args, progress)
	}
}

func (a *Agent) modelNames() []string {
	var names []string
	for _, st := range a.pipe.Stats() {
		names = append(names, st.Name)
	}
	return names
}

// capture stores the model's next args.Count samples, or fails at ctx's end saying how many
// it got (those are stored and sent all the same).
func (a *Agent) capture(ctx context.Context, id string, args captureArgs, progress command.Progress) (any, error) {
	ch := make(chan pipeline.Sample, captureQueue)
	// One token per sample still wanted; workers of the model take them concurrently.
	want := make(chan struct{}, args.Count)
	for range args.Count {
		want <- struct{}{}
	}
	stop, err := a.pipe.Tap(args.Model, func(s pipeline.Sample) bool {
		select {
		case <-want:
		default:
			return true // all taken; stop() disarms the tap when the capture ends
		}
		select {
		case ch <- s:
		default:
			want <- struct{}{} // the queue is full: give the token back for a later frame
		}
		return true
	})
	if err != nil {
		return nil, err
	}
	defer stop()
	stored, skipped := 0, 0
	var first, last uint64
	for stored < args.Count {
		var s pipeline.Sample
		select {
		case s = <-ch:
		case <-ctx.Done():
			return nil, fmt.Errorf("captured %d of %d samples of %s before the command's deadline (%v): the model served too few frames; are its sources producing?", stored, args.Count, args.Model, context.Cause(ctx))
		}
		data, err := a.sampleJSON(id, stored+1, args.Count, s, sampleTag{})
		if err != nil {
			skipped++
			a.log.Warn("capture: sample skipped", "model", args.Model, "err", err)
			select {
			case want <- struct{}{}:
			default:
			}
			continue
		}
		seq, err := a.fleet.samples.Append(ctx, data)
		if err != nil {
			return nil, fmt.Errorf("store sample %d of %d: %w", stored+1, args.Count, err)
		}
		if first == 0 {
			first = seq
		}
		last = seq
		stored++
		progress(float64(stored)/float64(args.Count), fmt.Sprintf("captured %d of %d", stored, args.Count))
	}
	return map[string]any{"model": args.Model, "captured": stored, "skipped": skipped, "stream": streamSamples, "first_seq": first, "last_seq": last}, nil
}

// sampleTag marks samples not taken by a capture command.
type sampleTag struct {
	Reason string
	Drift  any
}

// sampleJSON encodes a sample, leaving the source frame out when it would exceed
// maxSampleBytes.
func (a *Agent) sampleJSON(id string, n, of int, s pipeline.Sample, tag sampleTag) ([]byte, error) {
	r := s.Result
	rec := sampleRecord{
		Schema: SampleSchema, Device: a.cfg.Device, Reason: tag.Reason, Drift: tag.Drift, Capture: id, N: n, Of: of,
		Model: r.Model, Version: r.Version, Variant: r.Variant, TS: r.TS,
		Source: r.Source, FrameSeq: r.FrameSeq, InputRef: r.InputRef,
		Inputs: tensorsOf(s.Inputs), Outputs: tensorsOf(s.Outputs),
		Result: struct {
			LatencyUS  int64 `json:"latency_us"`
			Outputs    any   `json:"outputs,omitempty"`
			Classes    any   `json:"classes,omitempty"`
			Detections any   `json:"detections,omitempty"`
			Values     any   `json:"values,omitempty"`
		}{r.LatencyUS, r.Outputs, r.Classes, r.Detections, r.Values},
	}
	frame, err := frameOf(s)
	if err != nil {
		rec.Omitted = err.Error()
	} else {
		rec.Frame = frame
	}
	data, err := json.Marshal(rec)
	if err == nil && len(data) > maxSampleBytes && rec.Frame != nil {
		rec.Frame, rec.Omitted = nil, fmt.Sprintf("the source frame would make the sample larger than %d bytes", maxSampleBytes)
		data, err = json.Marshal(rec)
	}
	if err != nil {
		return nil, fmt.Errorf("encode sample: %w", err)
	}
	if len(data) > maxSampleBytes {
		return nil, fmt.Errorf("sample is %d bytes, above the %d-byte cap (the model's tensors alone are too large to upload)", len(data), maxSampleBytes)
	}
	return data, nil
}

func tensorsOf(ts []infer.Tensor) []sampleTensor {
	out := make([]sampleTensor, len(ts))
	for i, t := range ts {
		out[i] = sampleTensor{DType: t.DType, Shape: t.Shape, Data: t.Data}
	}
	return out
}

// frameOf is the source frame as the sample carries it.
func frameOf(s pipeline.Sample) (*sampleFrame, error) {
	f := s.Frame
	switch {
	case f.Image != nil:
		var b bytes.Buffer
		if err := (&png.Encoder{CompressionLevel: png.BestSpeed}).Encode(&b, f.Image); err != nil {
			return nil, fmt.Errorf("encode the frame as PNG: %w", err)
		}
		return &sampleFrame{PNG: b.Bytes()}, nil
	case f.Tensor != nil:
		dt, err := infer.ParseDType(f.Tensor.DType)
		if err != nil {
			return nil, err
		}
		return &sampleFrame{Tensor: &sampleTensor{DType: dt, Shape: f.Tensor.Shape, Data: f.Tensor.Data}}, nil
	case f.Values != nil:
		return &sampleFrame{Values: f.Values, Names: f.Names}, nil
	}
	return nil, errors.New("the frame carries no data")
}
