//go:build cgo

package status_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"image"
	"image/png"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"github.com/edge-agent/edge-agent/agent/infer"
	"github.com/edge-agent/edge-agent/agent/pipeline"
	"github.com/edge-agent/edge-agent/agent/result"
	"github.com/edge-agent/edge-agent/hal/sensor"
	"github.com/edge-agent/edge-agent/hal/sensor/file"
	"github.com/edge-agent/edge-agent/internal/testenv"
)

type prediction struct {
	Version    string             `json:"version"`
	Classes    []result.Class     `json:"classes"`
	Detections []result.Detection `json:"detections"`
	Outputs    [][]float64        `json:"outputs"`
}

type rowAnswer struct {
	Predictions []prediction `json:"predictions"`
}

type columnAnswer struct {
	Outputs struct {
		Version    []string             `json:"version"`
		Classes    [][]result.Class     `json:"classes"`
		Detections [][]result.Detection `json:"detections"`
	} `json:"outputs"`
}

// decoded reads a shared test file the way the file source does.
func decoded(t testing.TB, name string) (sensor.Frame, []byte) {
	t.Helper()
	data, err := os.ReadFile(testenv.Data(t, name))
	if err != nil {
		t.Fatal(err)
	}
	f, err := file.Decode(name, data, sensor.FileSpec{})
	if err != nil {
		t.Fatal(err)
	}
	f.Source = "test"
	return f, data
}

// direct runs a frame through the agent's pipeline, and returns the result and the input
// tensor the model saw (captured with the pipeline's tap).
func direct(t testing.TB, p *pipeline.Pipeline, model string, f sensor.Frame) (*result.Result, infer.Tensor) {
	t.Helper()
	got := make(chan pipeline.Sample, 1)
	stop, err := p.Tap(model, func(s pipeline.Sample) bool { got <- s; return false })
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	r, err := p.Process(context.Background(), model, f)
	if err != nil {
		t.Fatalf("pipeline %s: %v", model, err)
	}
	s := <-got
	return r, s.Inputs[0]
}

// nested writes a tensor as JSON nested arrays of shape (its elements in row-major order).
func nested(tn infer.Tensor, shape []int) string {
	var b strings.Builder
	i := 0
	var walk func(d int)
	walk = func(d int) {
		if d == len(shape) {
			if tn.DType == infer.Float32 {
				b.WriteString(strconv.FormatFloat(tn.Float(i), 'g', -1, 32))
			} else {
				b.WriteString(strconv.FormatFloat(tn.Float(i), 'f', -1, 64))
			}
			i++
			return
		}
		b.WriteByte('[')
		for k := range shape[d] {
			if k > 0 {
				b.WriteByte(',')
			}
			walk(d + 1)
		}
		b.WriteByte(']')
	}
	walk(0)
	return b.String()
}

func b64(data []byte) string { return base64.StdEncoding.EncodeToString(data) }

// The predict API returns exactly what the pipeline makes of the same input, for mnist
// (classification) and SSD (detection): pictures sent as {"b64": ...} go through the
// model's preprocessing; the preprocessed tensor sent as nested arrays (row and columnar)
// skips it and gives the same result. Predictions are not published as results.
func TestPredictMatchesPipeline(t *testing.T) {
	testenv.NoGoroutineLeaks(t)
	r := startAgent(t, "models:"+mnistModel+ssdModel)
	p := r.a.Pipeline()

	var columnar []string
	var wantCols [][]result.Class
	for _, d := range []int{0, 3, 7} {
		f, png := decoded(t, fmt.Sprintf("mnist_digit_%d.png", d))
		want, in := direct(t, p, "mnist", f)
		if want.Classes[0].Index != d {
			t.Fatalf("the pipeline reads digit %d as %d; the test needs a model that reads it right", d, want.Classes[0].Index)
		}
		for name, body := range map[string]string{
			"b64 PNG":       `{"instances": [{"b64": "` + b64(png) + `"}]}`,
			"nested tensor": `{"instances": [` + nested(in, []int{784}) + `]}`,
			"with batch":    `{"instances": [` + nested(in, []int{1, 784}) + `], "signature_name": "serving_default"}`,
			"named input":   fmt.Sprintf(`{"instances": [{%q: %s}]}`, "serving_default_dense_input:0", nested(in, []int{784})),
		} {
			var got rowAnswer
			if code, msg := r.post(t, "/v1/models/mnist:predict", body, &got); code != http.StatusOK {
				t.Fatalf("digit %d, %s: %d %s", d, name, code, msg)
			}
			if len(got.Predictions) != 1 || !reflect.DeepEqual(got.Predictions[0].Classes, want.Classes) || got.Predictions[0].Version != "0" {
				t.Errorf("digit %d, %s: predictions %+v; want the pipeline's classes %+v", d, name, got.Predictions, want.Classes)
			}
		}
		columnar = append(columnar, nested(in, []int{784}))
		wantCols = append(wantCols, want.Classes)
	}
	var cols columnAnswer
	if code, msg := r.post(t, "/v1/models/mnist:predict", `{"inputs": [`+strings.Join(columnar, ",")+`]}`, &cols); code != http.StatusOK {
		t.Fatalf("columnar: %d %s", code, msg)
	}
	if !reflect.DeepEqual(cols.Outputs.Classes, wantCols) || len(cols.Outputs.Version) != 3 {
		t.Errorf("columnar outputs %+v; want classes %+v", cols.Outputs, wantCols)
	}

	f, jpg := decoded(t, "ssd_example.jpg")
	want, in := direct(t, p, "ssd", f)
	if len(want.Detections) == 0 {
		t.Fatal("the pipeline finds nothing in ssd_example.jpg")
	}
	for name, body := range map[string]string{
		"b64 JPEG":      `{"instances": [{"b64": "` + b64(jpg) + `"}]}`,
		"nested tensor": `{"instances": [` + nested(in, []int{300, 300, 3}) + `]}`,
	} {
		var got rowAnswer
		if code, msg := r.post(t, "/v1/models/ssd:predict", body, &got); code != http.StatusOK {
			t.Fatalf("ssd, %s: %d %s", name, code, msg)
		}
		if len(got.Predictions) != 1 || !reflect.DeepEqual(got.Predictions[0].Detections, want.Detections) {
			t.Errorf("ssd, %s: detections %+v; want the pipeline's %+v", name, got.Predictions, want.Detections)
		}
	}
	for _, st := range p.Stats() {
		if st.Results != 0 || st.PreErrors+st.InferErrors+st.PostErrors != 0 {
			t.Errorf("model %s: %d results, %d errors after predictions; want none published and no errors", st.Name, st.Results, st.PreErrors+st.InferErrors+st.PostErrors)
		}
	}
}

// GET /v1/models/{name} answers in TensorFlow Serving's model status shape with the tensors'
// specs; unknown and unloaded models are told apart.
func TestModelStatus(t *testing.T) {
	broken := filepath.Join(t.TempDir(), "broken.tflite")
	os.WriteFile(broken, []byte("not a model"), 0o644)
	r := startAgent(t, "models:"+ssdModel+"\n  - {name: broken, path: "+broken+"}")
	code, body := r.call(t, http.MethodGet, "/v1/models/ssd", nil)
	for _, want := range []string{`"state":"AVAILABLE"`, `"error_code":"OK"`, `"version":"0"`, `"dtype":"uint8"`, `"instance_shape":[300,300,3]`, `"shape":[1,300,300,3]`, `"takes_image":true`} {
		if code != http.StatusOK || !strings.Contains(string(body), want) {
			t.Errorf("GET /v1/models/ssd: %d %s\nwant it to hold %s", code, body, want)
		}
	}
	code, body = r.call(t, http.MethodGet, "/v1/models/broken", nil)
	if code != http.StatusOK || !strings.Contains(string(body), `"state":"END"`) || !strings.Contains(string(body), "no loaded version") {
		t.Errorf("GET /v1/models/broken: %d %s; want state END saying it has no loaded version", code, body)
	}
	code, body = r.call(t, http.MethodGet, "/v1/models/nope", nil)
	if code != http.StatusNotFound || !strings.Contains(string(body), "broken, ssd") {
		t.Errorf("GET /v1/models/nope: %d %s; want 404 listing the served models", code, body)
	}
}

// Malformed JSON, wrong shapes and dtypes, oversize bodies and the rest get a 4xx with a
// reason, and none of it reaches the pipeline's error counters (which a version on
// probation is judged by).
func TestPredictRefusesBadRequests(t *testing.T) {
	testenv.NoGoroutineLeaks(t)
	broken := filepath.Join(t.TempDir(), "broken.tflite")
	os.WriteFile(broken, []byte("not a model"), 0o644)
	r := startAgent(t, "models:"+mnistModel+ssdModel+`
  - name: pictures
    path: @TESTDATA@/mnist_model.tflite
    input: {kind: image, image: {resize: area, color: grey, std: [255]}}
  - {name: broken, path: `+broken+`}`)
	zeros := func(n int) string { return "[" + strings.TrimSuffix(strings.Repeat("0,", n), ",") + "]" }
	ssdWith := func(bad string) string { // a 300×300×3 uint8 instance whose first value is bad
		row := "[" + strings.TrimSuffix(strings.Repeat("[0,0,0],", 300), ",") + "]"
		img := "[" + strings.TrimSuffix(strings.Repeat(row+",", 300), ",") + "]"
		return `{"instances": [` + strings.Replace(img, "[[0,", "[["+bad+",", 1) + `]}`
	}
	many := `{"instances": [` + strings.TrimSuffix(strings.Repeat(zeros(784)+",", 65), ",") + `]}`
	for _, c := range []struct {
		name, model, body string
		code              int
		reason            string
	}{
		{"malformed JSON", "mnist", `{"instances": [[1,2`, 400, "the JSON ends inside the tensor"},
		{"malformed envelope", "mnist", `{"instances" [[1]]}`, 400, "not a predict request (invalid JSON at byte 13"},
		{"not JSON", "mnist", `hello`, 400, "not a predict request"},
		{"two JSON values", "mnist", `{"instances": [` + zeros(784) + `]} {}`, 400, "more than one JSON value"},
		{"unknown field", "mnist", `{"instance": []}`, 400, `unknown field "instance"`},
		{"no instances", "mnist", `{}`, 400, "neither instances nor inputs"},
		{"both formats", "mnist", `{"instances": [` + zeros(784) + `], "inputs": [` + zeros(784) + `]}`, 400, "not both"},
		{"empty instances", "mnist", `{"instances": []}`, 400, "instances is empty"},
		{"instances not an array", "mnist", `{"instances": 3}`, 400, "must be a JSON array"},
		{"wrong shape", "mnist", `{"instances": [[1,2,3]]}`, 400, "shape [3] does not match"},
		{"wrong rank", "mnist", `{"instances": [[` + zeros(784) + `,` + zeros(784) + `]]}`, 400, "more than the 784 values"},
		{"ragged", "mnist", `{"instances": [[[1,2],[3]]]}`, 400, "ragged"},
		{"string in tensor", "mnist", `{"instances": [["x"]]}`, 400, "is not a number"},
		{"uint8 out of range", "ssd", ssdWith("300"), 400, "300 is outside 0..255"},
		{"uint8 not integer", "ssd", ssdWith("1.5"), 400, "1.5 is not an integer"},
		{"columnar without batch", "mnist", `{"inputs": ` + zeros(784) + `}`, 400, "is not [batch]+[784]"},
		{"bad b64", "mnist", `{"instances": [{"b64": "!!!"}]}`, 400, "not base64"},
		{"b64 not a picture", "mnist", `{"instances": [{"b64": "` + b64([]byte("hello there")) + `"}]}`, 400, "send a PNG, a JPEG or a .npy"},
		{"unknown input name", "mnist", `{"instances": [{"image": ` + zeros(784) + `}]}`, 400, `input "serving_default_dense_input:0" is missing`},
		{"tensor for a picture model", "pictures", `{"instances": [` + zeros(784) + `]}`, 400, "takes pictures only"},
		{"other signature", "mnist", `{"signature_name": "classify", "instances": [` + zeros(784) + `]}`, 400, "serving_default"},
		{"too many instances", "mnist", many, 413, "more than 64 instances"},
		{"unknown model", "nope", `{"instances": [` + zeros(784) + `]}`, 404, `unknown model "nope"`},
		{"model not loaded", "broken", `{"instances": [` + zeros(784) + `]}`, 503, "no loaded version"},
	} {
		code, msg := r.post(t, "/v1/models/"+c.model+":predict", c.body, nil)
		if code != c.code || !strings.Contains(errorText(t, msg), c.reason) {
			t.Errorf("%s: %d %s; want %d with a JSON error saying %q", c.name, code, msg, c.code, c.reason)
		}
	}
	// Oversize bodies, with and without a declared length.
	big := bytes.Repeat([]byte(" "), 9<<20)
	if code, msg := r.post(t, "/v1/models/mnist:predict", big, nil); code != http.StatusRequestEntityTooLarge || !strings.Contains(msg, "limit") {
		t.Errorf("9 MiB body: %d %s; want 413", code, msg)
	}
	code, msg := r.call(t, http.MethodPost, "/v1/models/mnist:predict", io.MultiReader(bytes.NewReader(big)), "Content-Type", "application/json")
	if code != http.StatusRequestEntityTooLarge || !strings.Contains(string(msg), "limit") {
		t.Errorf("9 MiB chunked body: %d %s; want 413", code, msg)
	}
	if code, msg := r.call(t, http.MethodGet, "/v1/models/mnist:predict", nil); code != http.StatusMethodNotAllowed {
		t.Errorf("GET :predict: %d %s; want 405", code, msg)
	}
	if code, msg := r.post(t, "/v1/models/mnist:classify", `{}`, nil); code != http.StatusNotFound || !strings.Contains(msg, "classify and regress are not served") {
		t.Errorf("POST :classify: %d %s; want 404 saying so", code, msg)
	}
	// The picture model takes pictures; every model still serves after the refusals.
	_, png := decoded(t, "mnist_digit_3.png")
	var got rowAnswer
	for _, m := range []string{"pictures", "mnist"} {
		if code, msg := r.post(t, "/v1/models/"+m+":predict", `{"instances": [{"b64": "`+b64(png)+`"}]}`, &got); code != http.StatusOK {
			t.Errorf("%s after the refusals: %d %s", m, code, msg)
		}
	}
	for _, st := range r.a.Pipeline().Stats() {
		if n := st.PreErrors + st.InferErrors + st.PostErrors; n != 0 {
			t.Errorf("model %s counted %d errors from refused requests; want 0", st.Name, n)
		}
	}
}

// Clients that announce a body and send it slowly do not hold the predict slots: the slots
// are taken once the body is in, so eight such clients leave a ninth request served. What
// they hold is a reader token, of which there are four per slot; with all taken, the next
// request gets 429 saying why.
func TestPredictSaturation(t *testing.T) {
	testenv.NoGoroutineLeaks(t)
	r := startAgent(t, "models:"+mnistModel)
	addr := strings.TrimPrefix(r.url, "http://")
	var slow []net.Conn
	defer func() {
		for _, c := range slow {
			c.Close()
		}
	}()
	stall := func(n int) {
		for range n {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			slow = append(slow, c)
			fmt.Fprintf(c, "POST /v1/models/mnist:predict HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{\"instances\": [", addr)
		}
		eventually(t, fmt.Sprintf("%d predict bodies being received", len(slow)), func() bool {
			v, _ := metric(r.scrape(t), "edge_agent_predict_reading")
			return v == float64(len(slow))
		})
	}
	body := `{"instances": [[` + strings.TrimSuffix(strings.Repeat("0,", 784), ",") + `]]}`
	stall(8)
	if code, msg := r.post(t, "/v1/models/mnist:predict", body, nil); code != http.StatusOK {
		t.Fatalf("with 8 slow senders: %d %s; want 200 (they must not hold the predict slots)", code, msg)
	}
	stall(24) // 32 = 4 readers per slot × 8 slots
	code, msg := r.post(t, "/v1/models/mnist:predict", body, nil)
	if code != http.StatusTooManyRequests || !strings.Contains(msg, "32 predict requests are sending their bodies") {
		t.Fatalf("with 32 slow senders: %d %s; want 429", code, msg)
	}
	for _, c := range slow {
		c.Close()
	}
	eventually(t, "the slow requests to end", func() bool {
		v, _ := metric(r.scrape(t), "edge_agent_predict_reading")
		return v == 0
	})
	if code, msg := r.post(t, "/v1/models/mnist:predict", body, nil); code != http.StatusOK {
		t.Fatalf("after the slow requests ended: %d %s; want 200", code, msg)
	}
	mfs := r.scrape(t)
	if n := mustMetric(t, mfs, "edge_agent_predict_requests_total", "code=429"); n != 1 {
		t.Errorf("edge_agent_predict_requests_total{code=429} = %v; want 1", n)
	}
}

// Pictures are checked against the pixel budgets from their headers, before anything is
// decoded: a 130 KB 4096×4096 16-bit PNG (about 130 MB decoded) gets 413 naming the limit
// and costs the server far less than decoding it would, and a request whose pictures are
// each within the limit but together over the request's budget gets 413 too.
func TestPredictPixelBudgets(t *testing.T) {
	testenv.NoGoroutineLeaks(t)
	r := startAgent(t, `models:
  - name: pictures
    path: @TESTDATA@/mnist_model.tflite
    input: {kind: image, image: {resize: area, color: grey, std: [255]}}`)
	encode := func(img image.Image) string {
		var b bytes.Buffer
		if err := png.Encode(&b, img); err != nil {
			t.Fatal(err)
		}
		return base64.StdEncoding.EncodeToString(b.Bytes())
	}
	big := encode(image.NewGray16(image.Rect(0, 0, 4096, 4096)))
	req := `{"instances": [{"b64": "` + big + `"}]}`
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	code, msg := r.post(t, "/v1/models/pictures:predict", req, nil)
	runtime.ReadMemStats(&after)
	if code != http.StatusRequestEntityTooLarge || !strings.Contains(msg, "4096×4096 with 16-bit channels") || !strings.Contains(msg, "status.max_pixels") {
		t.Errorf("4096×4096 16-bit PNG: %d %s; want 413 naming the per-picture limit", code, msg)
	}
	if grew := after.TotalAlloc - before.TotalAlloc; grew > 50<<20 {
		t.Errorf("the refused picture cost %d MB of allocations; want under 50 MB (it must not be decoded)", grew>>20)
	}
	mid := encode(image.NewGray(image.Rect(0, 0, 2900, 2900))) // 8.4 MP: within 12 MP
	three := `{"instances": [{"b64": "` + mid + `"}, {"b64": "` + mid + `"}, {"b64": "` + mid + `"}]}`
	if code, msg := r.post(t, "/v1/models/pictures:predict", three, nil); code != http.StatusRequestEntityTooLarge || !strings.Contains(msg, "status.max_request_pixels") {
		t.Errorf("three 8.4 MP pictures: %d %s; want 413 naming the per-request limit", code, msg)
	}
	two := `{"instances": [{"b64": "` + mid + `"}, {"b64": "` + mid + `"}]}`
	if code, msg := r.post(t, "/v1/models/pictures:predict", two, nil); code != http.StatusOK {
		t.Errorf("two 8.4 MP pictures: %d %s; want 200", code, msg)
	}
}

// errorText is the reason of a JSON error answer {"error": "..."}.
func errorText(t testing.TB, body string) string {
	t.Helper()
	var e struct {
		Error string `json:"error"`
	}
	if err := json.Unmarshal([]byte(body), &e); err != nil || e.Error == "" {
		t.Errorf("answer %s is not a JSON error", body)
	}
	return e.Error
}

// readLine reads one line (for raw HTTP exchanges in tests).
func readLine(t testing.TB, br *bufio.Reader) string {
	t.Helper()
	line, err := br.ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimRight(line, "\r\n")
}
