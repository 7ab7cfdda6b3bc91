package preprocess

import (
	"encoding/binary"
	"errors"
	"image"
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/edge-agent/edge-agent/agent/infer"
	"github.com/edge-agent/edge-agent/hal/sensor"
	"github.com/edge-agent/edge-agent/models/spec"
)

func vectorSpec(v spec.Vector) spec.Model {
	return spec.Model{Input: spec.Input{Kind: spec.InputVector, Vector: v}}
}

func TestVector(t *testing.T) {
	f32 := func(n int) infer.TensorInfo { return tensorInfo(infer.Float32, 1, n) }
	for _, tc := range []struct {
		name   string
		v      spec.Vector
		in     infer.TensorInfo
		values []float64
		names  []string
		want   []float64
	}{
		{"positional", spec.Vector{}, f32(3), []float64{1, 2, 3}, nil, []float64{1, 2, 3}},
		{"features pick by name, in the model's order", spec.Vector{Features: []string{"c", "a"}}, f32(2),
			[]float64{1, 2, 3}, []string{"a", "b", "c"}, []float64{3, 1}},
		{"standardised per feature", spec.Vector{Features: []string{"x", "y"}, Mean: []float64{10, 20}, Std: []float64{2, 4}}, f32(2),
			[]float64{14, 12}, []string{"y", "x"}, []float64{1, -1.5}},
		{"one mean and std for all", spec.Vector{Mean: []float64{1}, Std: []float64{2}}, f32(3),
			[]float64{1, 3, 5}, nil, []float64{0, 1, 2}},
		{"shape [1,2,2] takes 4 values", spec.Vector{}, tensorInfo(infer.Float32, 1, 2, 2), []float64{1, 2, 3, 4}, nil, []float64{1, 2, 3, 4}},
		{"quantised uint8", spec.Vector{}, infer.TensorInfo{DType: infer.UInt8, Shape: []int{1, 3}, Quant: infer.Quant{Scale: 0.5, ZeroPoint: 10}},
			[]float64{0, 1.2, 500}, nil, []float64{10, 12, 255}},
		{"quantised int8", spec.Vector{}, infer.TensorInfo{DType: infer.Int8, Shape: []int{1, 3}, Quant: infer.Quant{Scale: 0.1, ZeroPoint: -5}},
			[]float64{0, -1, 100}, nil, []float64{-5, -15, 127}},
		{"int32 rounds", spec.Vector{}, tensorInfo(infer.Int32, 1, 3), []float64{1.4, 2.5, -7.6}, nil, []float64{1, 2, -8}},
		{"int64", spec.Vector{}, tensorInfo(infer.Int64, 1, 2), []float64{1e18, -3}, nil, []float64{1e18, -3}},
		{"float64", spec.Vector{}, tensorInfo(infer.Float64, 1, 2), []float64{0.1, 1e300}, nil, []float64{0.1, 1e300}},
		{"long vector in chunks", spec.Vector{Mean: []float64{1}}, f32(150), ramp(150), nil, addAll(ramp(150), -1)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := New(vectorSpec(tc.v), []infer.TensorInfo{tc.in})
			if err != nil {
				t.Fatalf("New: %v", err)
			}
			for i := 0; i < 2; i++ { // twice: the second uses the cached feature order
				out, err := p.Apply(sensor.Frame{Values: tc.values, Names: tc.names}, nil)
				if err != nil {
					t.Fatalf("Apply: %v", err)
				}
				if got := out[0].Floats(infer.Quant{}); !near(got, tc.want, 1e-6) {
					t.Errorf("got %v; want %v", got, tc.want)
				}
			}
		})
	}
}

func ramp(n int) []float64 {
	v := make([]float64, n)
	for i := range v {
		v[i] = float64(i)
	}
	return v
}

func addAll(v []float64, d float64) []float64 {
	for i := range v {
		v[i] += d
	}
	return v
}

func TestVectorBadFrames(t *testing.T) {
	named, err := New(vectorSpec(spec.Vector{Features: []string{"temp", "humidity"}}), []infer.TensorInfo{tensorInfo(infer.Float32, 1, 2)})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	positional, err := New(vectorSpec(spec.Vector{}), []infer.TensorInfo{tensorInfo(infer.Float32, 1, 3)})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	for _, tc := range []struct {
		name string
		p    *Preprocessor
		f    sensor.Frame
		want string
	}{
		{"missing feature named", named, sensor.Frame{Values: []float64{1, 2}, Names: []string{"temp", "pressure"}}, `"humidity" missing`},
		{"unnamed values", named, sensor.Frame{Values: []float64{1, 2}}, "unnamed values"},
		{"fewer values than names", named, sensor.Frame{Values: []float64{1}, Names: []string{"temp", "humidity"}}, "1 values but 2 names"},
		{"too few values", positional, sensor.Frame{Values: []float64{1, 2}}, "2 values, the model's input takes 3"},
		{"too many values", positional, sensor.Frame{Values: []float64{1, 2, 3, 4}}, "4 values, the model's input takes 3"},
		{"empty values", positional, sensor.Frame{Values: []float64{}}, "0 values"},
		{"NaN", positional, sensor.Frame{Values: []float64{1, math.NaN(), 3}, Names: []string{"a", "b", "c"}}, `value 1 ("b") is NaN`},
		{"Inf by feature", named, sensor.Frame{Values: []float64{math.Inf(1), 2}, Names: []string{"temp", "humidity"}}, `"temp" is +Inf`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.p.Apply(tc.f, nil)
			if !errors.Is(err, ErrBadFrame) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v; want an ErrBadFrame error mentioning %q", err, tc.want)
			}
		})
	}
	// The cached feature order follows the names: a source that reorders columns still works.
	for _, f := range []sensor.Frame{
		{Values: []float64{1, 2}, Names: []string{"temp", "humidity"}},
		{Values: []float64{2, 1}, Names: []string{"humidity", "temp"}},
		{Values: []float64{9, 2, 1}, Names: []string{"x", "humidity", "temp"}},
	} {
		out, err := named.Apply(f, nil)
		if err != nil {
			t.Fatalf("Apply(%v): %v", f.Names, err)
		}
		if got := out[0].Floats(infer.Quant{}); !near(got, []float64{1, 2}, 0) {
			t.Errorf("names %v: got %v; want [1 2]", f.Names, got)
		}
	}
}

func TestTensor(t *testing.T) {
	in := tensorInfo(infer.Float32, 1, 3)
	p, err := New(spec.Model{Input: spec.Input{Kind: spec.InputTensor}}, []infer.TensorInfo{in})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	data := infer.FromFloat32([]int{3}, []float32{1, 2, 3}).Data
	out, err := p.Apply(sensor.Frame{Tensor: &sensor.Raw{DType: "float32", Shape: []int{3}, Data: data}}, nil)
	if err != nil {
		t.Fatalf("Apply: %v", err)
	}
	if got := out[0].Floats(infer.Quant{}); !near(got, []float64{1, 2, 3}, 0) {
		t.Errorf("got %v; want [1 2 3]", got)
	}
	if &out[0].Data[0] == &data[0] {
		t.Errorf("the tensor shares the frame's bytes; want a copy")
	}
	for _, tc := range []struct {
		name string
		raw  *sensor.Raw
		want string
	}{
		{"wrong dtype", &sensor.Raw{DType: "uint8", Data: make([]byte, 12)}, "tensor is uint8, the model's input is float32"},
		{"unknown dtype", &sensor.Raw{DType: "complex64", Data: make([]byte, 12)}, "unknown dtype"},
		{"too short", &sensor.Raw{DType: "float32", Shape: []int{2}, Data: make([]byte, 8)}, "holds 8 bytes, the model's input needs 12"},
		{"too long", &sensor.Raw{DType: "float32", Data: make([]byte, 16)}, "holds 16 bytes"},
		{"no data", &sensor.Raw{DType: "float32"}, "holds 0 bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := p.Apply(sensor.Frame{Tensor: tc.raw}, nil)
			if !errors.Is(err, ErrBadFrame) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v; want an ErrBadFrame error mentioning %q", err, tc.want)
			}
		})
	}
}

func TestTensorSeveralInputs(t *testing.T) {
	ins := []infer.TensorInfo{tensorInfo(infer.UInt8, 1, 2), tensorInfo(infer.UInt8, 1, 3)}
	if _, err := New(spec.Model{}, ins); err == nil || !strings.Contains(err.Error(), "input.kind") {
		t.Errorf("kind \"\" with 2 inputs: got %v; want an input.kind error", err)
	}
	if _, err := New(vectorSpec(spec.Vector{}), ins); err == nil || !strings.Contains(err.Error(), "only kind tensor") {
		t.Errorf("kind vector with 2 inputs: got %v; want an error saying only kind tensor feeds several", err)
	}
	mixed := []infer.TensorInfo{tensorInfo(infer.UInt8, 1, 2), tensorInfo(infer.Float32, 1, 3)}
	if _, err := New(spec.Model{Input: spec.Input{Kind: spec.InputTensor}}, mixed); err == nil || !strings.Contains(err.Error(), "share one dtype") {
		t.Errorf("mixed dtypes: got %v; want a dtype error", err)
	}
	p, err := New(spec.Model{Input: spec.Input{Kind: spec.InputTensor}}, ins)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	out, err := p.Apply(sensor.Frame{Tensor: &sensor.Raw{DType: "uint8", Data: []byte{1, 2, 3, 4, 5}}}, nil)
	if err != nil {
		t.Fatalf("Apply: %v", err)
	}
	if string(out[0].Data) != "\x01\x02" || string(out[1].Data) != "\x03\x04\x05" {
		t.Errorf("got %v and %v; want [1 2] and [3 4 5]", out[0].Data, out[1].Data)
	}
	if _, err := p.Apply(sensor.Frame{Tensor: &sensor.Raw{DType: "uint8", Data: []byte{1, 2, 3}}}, nil); !errors.Is(err, ErrBadFrame) {
		t.Errorf("short bytes: got %v; want ErrBadFrame", err)
	}
}

func TestKindFromFrame(t *testing.T) {
	in := tensorInfo(infer.Float32, 1, 4)
	p, err := New(spec.Model{}, []infer.TensorInfo{in})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	img := greyImage([][]uint8{{1, 2}, {3, 4}})
	raw := &sensor.Raw{DType: "float32", Data: infer.FromFloat32([]int{4}, []float32{5, 6, 7, 8}).Data}
	for _, tc := range []struct {
		name string
		f    sensor.Frame
		want []float64
		err  string
	}{
		{"image", sensor.Frame{Image: img}, []float64{1, 2, 3, 4}, ""},
		{"values", sensor.Frame{Values: []float64{9, 8, 7, 6}}, []float64{9, 8, 7, 6}, ""},
		{"tensor", sensor.Frame{Tensor: raw}, []float64{5, 6, 7, 8}, ""},
		{"nothing", sensor.Frame{}, nil, "carries no image, values or tensor"},
		{"two things", sensor.Frame{Image: img, Values: []float64{1, 2, 3, 4}}, nil, "more than one"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := p.Apply(tc.f, nil)
			if tc.err != "" {
				if !errors.Is(err, ErrBadFrame) || !strings.Contains(err.Error(), tc.err) {
					t.Errorf("got %v; want an ErrBadFrame error mentioning %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Apply: %v", err)
			}
			if got := out[0].Floats(infer.Quant{}); !near(got, tc.want, 0) {
				t.Errorf("got %v; want %v", got, tc.want)
			}
		})
	}
	// A model whose input is no image layout refuses image frames, clearly.
	p, err = New(spec.Model{}, []infer.TensorInfo{tensorInfo(infer.Float32, 1, 10)})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if _, err := p.Apply(sensor.Frame{Image: img}, nil); !errors.Is(err, ErrBadFrame) || !strings.Contains(err.Error(), "not an image layout") {
		t.Errorf("image into [1,10]: got %v; want an ErrBadFrame error saying it is not an image layout", err)
	}
	// An explicit kind ignores the other fields, and refuses frames without its own.
	p, err = New(vectorSpec(spec.Vector{}), []infer.TensorInfo{in})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if _, err := p.Apply(sensor.Frame{Image: img, Values: []float64{1, 2, 3, 4}}, nil); err != nil {
		t.Errorf("kind vector with image and values: %v", err)
	}
	if _, err := p.Apply(sensor.Frame{Image: img}, nil); !errors.Is(err, ErrBadFrame) || !strings.Contains(err.Error(), "has no values") {
		t.Errorf("kind vector, image frame: got %v; want an ErrBadFrame error saying it has no values", err)
	}
}

func TestNewErrors(t *testing.T) {
	rgb := tensorInfo(infer.UInt8, 1, 8, 8, 3)
	grey := tensorInfo(infer.Float32, 1, 784)
	for _, tc := range []struct {
		name string
		s    spec.Model
		in   []infer.TensorInfo
		want string
	}{
		{"no inputs", spec.Model{}, nil, "no input tensors"},
		{"bad kind", spec.Model{Input: spec.Input{Kind: "audio"}}, []infer.TensorInfo{rgb}, "input.kind"},
		{"bad resize", imageSpec(spec.Image{Resize: "lanczos"}), []infer.TensorInfo{rgb}, "input.image.resize"},
		{"std zero", imageSpec(spec.Image{Std: []float64{0}}), []infer.TensorInfo{rgb}, "input.image.std[0]"},
		{"rgb into grey", imageSpec(spec.Image{Color: "rgb"}), []infer.TensorInfo{grey}, "input.image.color"},
		{"3 means for grey", imageSpec(spec.Image{Mean: []float64{1, 2, 3}}), []infer.TensorInfo{grey}, "input.image.mean: has 3 values for a 1-channel input"},
		{"2 stds", imageSpec(spec.Image{Std: []float64{1, 2}}), []infer.TensorInfo{rgb}, "input.image"},
		{"NaN mean", imageSpec(spec.Image{Mean: []float64{math.NaN()}}), []infer.TensorInfo{rgb}, "input.image.mean[0]"},
		{"image kind, vector shape", imageSpec(spec.Image{}), []infer.TensorInfo{tensorInfo(infer.Float32, 1, 10)}, "not an image layout"},
		{"image kind, batch 2", imageSpec(spec.Image{}), []infer.TensorInfo{tensorInfo(infer.Float32, 2, 8, 8, 3)}, "not an image layout"},
		{"bool input", imageSpec(spec.Image{}), []infer.TensorInfo{tensorInfo(infer.Bool, 1, 8, 8, 3)}, "bool"},
		{"dynamic shape", spec.Model{}, []infer.TensorInfo{tensorInfo(infer.Float32, 1, -1)}, "dynamic"},
		{"features count", vectorSpec(spec.Vector{Features: []string{"a"}}), []infer.TensorInfo{grey}, "input.vector.features: lists 1 features but input 0"},
		{"duplicate feature", vectorSpec(spec.Vector{Features: []string{"a", "a"}}), []infer.TensorInfo{tensorInfo(infer.Float32, 1, 2)}, "listed twice"},
		{"vector mean count", vectorSpec(spec.Vector{Mean: []float64{1, 2}}), []infer.TensorInfo{tensorInfo(infer.Float32, 1, 3)}, "input.vector.mean: has 2 values for 3 inputs"},
		{"vector std zero", vectorSpec(spec.Vector{Std: []float64{0}}), []infer.TensorInfo{tensorInfo(infer.Float32, 1, 3)}, "input.vector.std[0]"},
		{"float16 vector", vectorSpec(spec.Vector{}), []infer.TensorInfo{tensorInfo(infer.Float16, 1, 3)}, "float16"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(tc.s, tc.in)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v; want an error mentioning %q", err, tc.want)
			}
		})
	}
}

func TestMalformedFramesNeverPanic(t *testing.T) {
	// Random frames against random models: Apply returns a tensor or an error, never panics.
	rng := rand.New(rand.NewPCG(3, 4))
	dtypes := []infer.DType{infer.Float32, infer.UInt8, infer.Int8, infer.Int16, infer.Int32, infer.Int64, infer.Float64}
	shapes := [][]int{{1, 1}, {1, 4}, {1, 9}, {1, 3, 3}, {1, 2, 5, 3}, {1, 7, 1, 1}, {3}, {2, 2}}
	kinds := []string{"", spec.InputImage, spec.InputVector, spec.InputTensor}
	for i := 0; i < 2000; i++ {
		in := infer.TensorInfo{DType: dtypes[rng.IntN(len(dtypes))], Shape: shapes[rng.IntN(len(shapes))]}
		if rng.IntN(2) == 0 {
			in.Quant = infer.Quant{Scale: rng.Float32() + 0.001, ZeroPoint: int32(rng.IntN(20) - 10)}
		}
		s := spec.Model{Input: spec.Input{Kind: kinds[rng.IntN(len(kinds))]}}
		if rng.IntN(2) == 0 {
			s.Input.Vector.Features = []string{"a", "b", "c", "d"}[:1+rng.IntN(4)]
		}
		p, err := New(s, []infer.TensorInfo{in})
		if err != nil {
			continue
		}
		var f sensor.Frame
		switch rng.IntN(4) {
		case 0:
			w, h := rng.IntN(6), rng.IntN(6)
			f.Image = image.NewNRGBA(image.Rect(0, 0, w, h))
		case 1:
			f.Values = make([]float64, rng.IntN(12))
			for j := range f.Values {
				f.Values[j] = []float64{0, 1, -1e300, math.NaN(), 1e9, math.Inf(-1)}[rng.IntN(6)]
			}
			if rng.IntN(2) == 0 {
				f.Names = []string{"a", "b", "c", "d", "e"}[:rng.IntN(6)]
			}
		case 2:
			f.Tensor = &sensor.Raw{DType: dtypes[rng.IntN(len(dtypes))].String(), Data: make([]byte, rng.IntN(80))}
		}
		out, err := p.Apply(f, nil)
		if err == nil {
			if len(out) != 1 || out[0].Check() != nil {
				t.Fatalf("frame %d: Apply returned no error but tensors %v", i, out)
			}
		} else if !errors.Is(err, ErrBadFrame) {
			t.Fatalf("frame %d: got %v; want frame errors to wrap ErrBadFrame", i, err)
		}
	}
}

// FuzzPreprocessVector feeds arbitrary numbers and names into a named, standardised,
// quantised vector input.
func FuzzPreprocessVector(f *testing.F) {
	f.Add([]byte{}, "a,b,c")
	f.Add(binary.LittleEndian.AppendUint64(nil, math.Float64bits(1.5)), "b")
	f.Add(make([]byte, 24), "c,a,b")
	f.Add(make([]byte, 40), "a,a,b,c,d")
	ins := []infer.TensorInfo{
		{DType: infer.UInt8, Shape: []int{1, 3}, Quant: infer.Quant{Scale: 0.1, ZeroPoint: 7}},
		{DType: infer.Float32, Shape: []int{1, 3}},
		{DType: infer.Int64, Shape: []int{1, 3}},
	}
	var ps []*Preprocessor
	for _, in := range ins {
		for _, features := range [][]string{nil, {"c", "a", "b"}} {
			p, err := New(vectorSpec(spec.Vector{Features: features, Mean: []float64{1, 2, 3}, Std: []float64{0.5, 1, 2}}), []infer.TensorInfo{in})
			if err != nil {
				f.Fatalf("New: %v", err)
			}
			ps = append(ps, p)
		}
	}
	f.Fuzz(func(t *testing.T, raw []byte, names string) {
		var values []float64
		for len(raw) >= 8 {
			values = append(values, math.Float64frombits(binary.LittleEndian.Uint64(raw)))
			raw = raw[8:]
		}
		var ns []string
		if names != "" {
			ns = strings.Split(names, ",")
		}
		for _, p := range ps {
			out, err := p.Apply(sensor.Frame{Values: values, Names: ns}, nil)
			if err != nil {
				if !errors.Is(err, ErrBadFrame) {
					t.Fatalf("got %v; want frame errors to wrap ErrBadFrame", err)
				}
				continue
			}
			if err := out[0].Check(); err != nil {
				t.Fatalf("output: %v", err)
			}
		}
	})
}

// An error names its frame once, however many stages wrap it.
func TestErrorNamesTheFrameOnce(t *testing.T) {
	p, err := New(spec.Model{Input: spec.Input{Kind: spec.InputTensor}}, []infer.TensorInfo{{Name: "x", DType: infer.Float32, Shape: []int{1, 2}, Bytes: 8}})
	if err != nil {
		t.Fatal(err)
	}
	_, err = p.Apply(sensor.Frame{Source: "predict", Seq: 1}, nil)
	if err == nil || strings.Count(err.Error(), "predict#1") != 1 {
		t.Errorf("%v; want the frame named once", err)
	}
}
