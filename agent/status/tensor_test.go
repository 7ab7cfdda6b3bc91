package status

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/edge-agent/edge-agent/agent/infer"
)

func TestParseTensor(t *testing.T) {
	for _, c := range []struct {
		json  string
		dt    infer.DType
		shape []int
		want  []float64
		err   string
	}{
		{json: `[[1, 2, 3], [4, 5, 6]]`, dt: infer.Float32, shape: []int{2, 3}, want: []float64{1, 2, 3, 4, 5, 6}},
		{json: ` [ -0.5 , 1e-3,2.25E2 ] `, dt: infer.Float32, shape: []int{3}, want: []float64{-0.5, float64(float32(1e-3)), 225}},
		{json: `[[[0, 255]], [[17, 3]]]`, dt: infer.UInt8, shape: []int{2, 1, 2}, want: []float64{0, 255, 17, 3}},
		{json: `[-128, 127, 5.0]`, dt: infer.Int8, shape: []int{3}, want: []float64{-128, 127, 5}},
		{json: `[-2147483648, 2147483647]`, dt: infer.Int32, shape: []int{2}, want: []float64{math.MinInt32, math.MaxInt32}},
		{json: `[9007199254740993]`, dt: infer.Int64, shape: []int{1}, want: []float64{9007199254740993}},
		{json: `[true, false, 1, 0]`, dt: infer.Bool, shape: []int{4}, want: []float64{1, 0, 1, 0}},
		{json: `0.25`, dt: infer.Float64, shape: []int{}, want: []float64{0.25}},
		{json: `[]`, dt: infer.Float32, shape: []int{0}, want: []float64{}},
		{json: `[[1, 2], [3]]`, dt: infer.Float32, err: "x[1]: has 1 elements where an earlier array at the same depth has 2: the arrays are ragged"},
		{json: `[[1, 2], 3]`, dt: infer.Float32, err: "x[1]: a number where the other values are at depth 2"},
		{json: `[1, [2]]`, dt: infer.Float32, err: "x[1]: an array where the other values are numbers"},
		{json: `[256]`, dt: infer.UInt8, err: "x[0]: 256 is outside 0..255 (the model's input is uint8)"},
		{json: `[-1]`, dt: infer.UInt8, err: "x[0]: -1 is outside 0..255"},
		{json: `[1.5]`, dt: infer.Int32, err: "x[0]: 1.5 is not an integer"},
		{json: `[1e39]`, dt: infer.Float32, err: "x[0]: 1e39 is outside the float32 range"},
		{json: `["1"]`, dt: infer.Float32, err: `x[0]: "1" is not a number`},
		{json: `[null]`, dt: infer.Float32, err: `x[0]: null is not a number`},
		{json: `[2]`, dt: infer.Bool, err: "x[0]: 2 is not true, false, 0 or 1"},
		{json: `[1, 2`, dt: infer.Float32, err: "the JSON ends inside the tensor"},
		{json: `[1 2]`, dt: infer.Float32, err: `unexpected '2' in an array`},
		{json: `[1] x`, dt: infer.Float32, err: `unexpected 'x' after the tensor`},
		{json: `[[[[[[[[[1]]]]]]]]]`, dt: infer.Float32, err: "arrays nest deeper than 8"},
		{json: `[1]`, dt: infer.Float16, err: "cannot write"},
	} {
		shape, data, err := parseTensor([]byte(c.json), c.dt, 16, 4, "x")
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%s as %s: error %v; want %q", c.json, c.dt, err, c.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s as %s: %v", c.json, c.dt, err)
			continue
		}
		tn := infer.Tensor{DType: c.dt, Shape: shape, Data: data}
		got := make([]float64, tn.Len())
		for i := range got {
			got[i] = tn.Float(i)
		}
		if !slices.Equal(shape, c.shape) || !slices.Equal(got, c.want) {
			t.Errorf("%s as %s: shape %v values %v; want %v %v", c.json, c.dt, shape, got, c.shape, c.want)
		}
	}
}

// A tensor larger than allowed stops at the limit instead of reading (and allocating for)
// the whole body.
func TestParseTensorStopsAtTheLimit(t *testing.T) {
	big := "[" + strings.TrimSuffix(strings.Repeat("1,", 1_000_000), ",") + "]"
	_, data, err := parseTensor([]byte(big), infer.Float32, 784, 784, "x")
	if !errors.Is(err, errTooMany) || len(data) > 784*4 {
		t.Fatalf("error %v with %d bytes read; want errTooMany after 784 values", err, len(data))
	}
}

func TestInstanceShape(t *testing.T) {
	for _, c := range []struct{ in, want []int }{
		{[]int{1, 784}, []int{784}},
		{[]int{1, 300, 300, 3}, []int{300, 300, 3}},
		{[]int{4, 10}, []int{4, 10}},
		{[]int{1}, []int{1}},
	} {
		if got := instanceShape(infer.TensorInfo{Shape: c.in}); !slices.Equal(got, c.want) {
			t.Errorf("instanceShape(%v) = %v; want %v", c.in, got, c.want)
		}
	}
}

func TestHistoryRing(t *testing.T) {
	h := newHistory(3)
	if got := h.all(); len(got) != 0 {
		t.Fatalf("empty history holds %v", got)
	}
	for i := range 5 {
		h.add(point{T: int64(i)})
	}
	var ts []int64
	for _, p := range h.all() {
		ts = append(ts, p.T)
	}
	if !slices.Equal(ts, []int64{2, 3, 4}) {
		t.Fatalf("history %v; want the last three, oldest first", ts)
	}
}

// A stream that does not read keeps only the newest update, and never blocks publish;
// streams beyond the maximum are refused until one ends.
func TestBroadcaster(t *testing.T) {
	b := newBroadcaster(2)
	ch, cancel, ok := b.subscribe()
	if !ok {
		t.Fatal("first subscribe refused")
	}
	_, cancel2, _ := b.subscribe()
	if _, _, ok := b.subscribe(); ok {
		t.Fatal("third subscribe accepted with a maximum of 2")
	}
	for i := range 10 {
		b.publish([]byte(fmt.Sprint(i)))
	}
	if got := string(<-ch); got != "9" {
		t.Errorf("slow stream got %q; want the newest, 9", got)
	}
	cancel2()
	cancel2()
	if _, _, ok := b.subscribe(); !ok {
		t.Error("subscribe refused after a stream ended")
	}
	cancel()
	if n := b.count(); n != 1 {
		t.Errorf("%d streams; want 1", n)
	}
}

func TestFormatting(t *testing.T) {
	for _, c := range []struct{ got, want string }{
		{fmtCount(0), "0"}, {fmtCount(999), "999"}, {fmtCount(1000), "1,000"}, {fmtCount(1234567), "1,234,567"},
		{fmtBytes(512), "512 B"}, {fmtBytes(1536), "1.5 KiB"}, {fmtBytes(256 << 20), "256.0 MiB"},
		{fmtDur(42), "42s"}, {fmtDur(125), "2m 5s"}, {fmtDur(7300), "2h 1m"}, {fmtDur(90000), "1d 1h"},
	} {
		if c.got != c.want {
			t.Errorf("got %q; want %q", c.got, c.want)
		}
	}
}

// Decoding one mnist instance (784 float32 values as JSON) for the predict API; the cost that
// jscan saves over encoding/json (docs/benchmarks.md section 8).
func BenchmarkDecodeMnistInstance(b *testing.B) {
	var sb strings.Builder
	sb.WriteString(`{"instances": [[`)
	for i := range 784 {
		if i > 0 {
			sb.WriteByte(',')
		}
		v := float32(i%255) / 255
		if i%3 == 0 {
			v = 0
		}
		sb.WriteString(strconv.FormatFloat(float64(v), 'g', -1, 32))
	}
	sb.WriteString(`]]}`)
	body := []byte(sb.String())
	s := &Server{opt: Options{MaxInstances: 64}}
	m := Model{Name: "mnist", Inputs: []infer.TensorInfo{{Name: "in", DType: infer.Float32, Shape: []int{1, 784}, Bytes: 784 * 4}}, TakesTensor: true}
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := s.decodePredict(body, m); err != nil {
			b.Fatal(err)
		}
	}
}

func TestValidNumber(t *testing.T) {
	for tok, want := range map[string]bool{
		"0": true, "-0": true, "12": true, "1.5": true, "-0.25e-3": true, "1E+9": true,
		"": false, "-": false, "01": false, "1.": false, ".5": false, "1e": false, "+1": false, "0x10": false, "1_000": false, "Inf": false,
	} {
		if got := validNumber([]byte(tok)); got != want {
			t.Errorf("validNumber(%q) = %v; want %v", tok, got, want)
		}
	}
}

// jscan finds a value's span through strings with escapes and nesting, and refuses what is
// not JSON or nests without end.
func TestJscanValue(t *testing.T) {
	for _, c := range []struct{ in, span, err string }{
		{` {"a": ["x\"]", 1, {"b": null}]} , 2`, `{"a": ["x\"]", 1, {"b": null}]}`, ""},
		{`[true,false,null]`, `[true,false,null]`, ""},
		{`"a\\"b`, `"a\\"`, ""},
		{`[1,]`, "", "expected a value"},
		{`{"a" 1}`, "", "expected ':'"},
		{`[01]`, "", "invalid number"},
		{`"abc`, "", "unterminated string"},
		{strings.Repeat("[", 100) + strings.Repeat("]", 100), "", "nest deeper than 64"},
		{`[tru]`, "", "expected a value"},
	} {
		sc := &jscan{b: []byte(c.in)}
		span, err := sc.value()
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%s: %v; want an error saying %q", c.in, err, c.err)
			}
			continue
		}
		if err != nil || string(span) != c.span {
			t.Errorf("%s: span %q, %v; want %q", c.in, span, err, c.span)
		}
	}
}
