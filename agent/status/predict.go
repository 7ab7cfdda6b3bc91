package status

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"image/color"
	"image/jpeg"
	"image/png"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/edge-agent/edge-agent/agent/infer"
	"github.com/edge-agent/edge-agent/agent/result"
	"github.com/edge-agent/edge-agent/hal/sensor"
	"github.com/edge-agent/edge-agent/hal/sensor/file"
)

// The predict API (docs/status.md): TensorFlow Serving's REST shapes.
//
//	POST /v1/models/{name}:predict  {"instances": [...]} → {"predictions": [...]}
//	                                {"inputs": ...}      → {"outputs": {...}}
//	GET  /v1/models/{name}          → {"model_version_status": [...], "inputs": [...], "outputs": [...]}
//
// Every instance goes through the model's pipeline path (preprocess, infer, postprocess), so a
// prediction is the result the pipeline would publish for the same input (its classes,
// detections, values or raw outputs), not the raw output tensors; it is not published.

// prediction is one instance's result.
type prediction struct {
	Version    string             `json:"version"`
	Variant    string             `json:"variant,omitempty"`
	LatencyUS  int64              `json:"latency_us"`
	Classes    []result.Class     `json:"classes,omitempty"`
	Detections []result.Detection `json:"detections,omitempty"`
	Values     map[string]float64 `json:"values,omitempty"`
	Outputs    [][]float64        `json:"outputs,omitempty"`
}

// httpError is a request failure with its status code.
type httpError struct {
	code int
	msg  string
}

func (e *httpError) Error() string { return e.msg }

func badRequest(format string, a ...any) error {
	return &httpError{http.StatusBadRequest, fmt.Sprintf(format, a...)}
}

func (s *Server) handlePredict(w http.ResponseWriter, r *http.Request) {
	code := s.predict(w, r)
	s.met.predictDone(code)
}

func (s *Server) predict(w http.ResponseWriter, r *http.Request) int {
	path := r.PathValue("name")
	i := strings.LastIndexByte(path, ':')
	if i < 0 || path[i+1:] != "predict" {
		return writeError(w, http.StatusNotFound, fmt.Sprintf("POST %s: the only POST here is /v1/models/{name}:predict (classify and regress are not served)", r.URL.Path))
	}
	name := path[:i]
	m, err := s.agent.Model(name)
	if err != nil {
		return writeError(w, modelErrorCode(err), err.Error())
	}
	if r.ContentLength > s.opt.MaxBody {
		return writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("the body is %d bytes, over the limit of %d (status.max_body)", r.ContentLength, s.opt.MaxBody))
	}
	// The body is read before a predict slot is taken, within its own bound and deadline,
	// so that clients that send slowly (or not at all) cannot hold the slots.
	body, code, msg := s.readBody(w, r)
	if code != 0 {
		return writeError(w, code, msg)
	}
	select {
	case s.inflight <- struct{}{}:
		defer func() { <-s.inflight }()
	default:
		w.Header().Set("Retry-After", "1")
		return writeError(w, http.StatusTooManyRequests, fmt.Sprintf("%d predict requests are running, the most this server takes at once: retry shortly", s.opt.MaxInflight))
	}
	s.met.predictInflight.Inc()
	defer s.met.predictInflight.Dec()
	http.NewResponseController(w).SetWriteDeadline(time.Now().Add(predictDeadline))
	ctx, cancel := context.WithTimeout(r.Context(), predictDeadline)
	defer cancel()
	r = r.WithContext(ctx)
	frames, columnar, err := s.decodePredict(body, m)
	if err != nil {
		return writeRequestError(w, err)
	}
	preds := make([]prediction, len(frames))
	for i, f := range frames {
		res, err := s.agent.Predict(r.Context(), name, f)
		if err != nil {
			code := http.StatusInternalServerError
			switch {
			case errors.Is(err, ErrBadInput):
				code = http.StatusBadRequest
			case errors.Is(err, ErrUnknownModel):
				code = http.StatusNotFound
			case errors.Is(err, ErrNoVersion), errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
				code = http.StatusServiceUnavailable
			}
			return writeError(w, code, fmt.Sprintf("instance %d: %v", i, err))
		}
		s.met.predictInstances.Inc()
		preds[i] = prediction{Version: res.Version, Variant: res.Variant, LatencyUS: res.LatencyUS, Classes: res.Classes,
			Detections: res.Detections, Values: res.Values, Outputs: res.Outputs}
	}
	if columnar {
		return writeJSON(w, http.StatusOK, map[string]any{"outputs": columns(preds)})
	}
	return writeJSON(w, http.StatusOK, map[string]any{"predictions": preds})
}

// Predict request bounds: readersPerSlot requests per predict slot may be receiving their
// bodies at once, each for at most bodyDeadline; a request then runs for at most
// predictDeadline.
const (
	readersPerSlot  = 4
	bodyDeadline    = 30 * time.Second
	predictDeadline = 60 * time.Second
)

// readBody reads a predict body (at most status.max_body, within bodyDeadline), holding one
// of the reader tokens while it does. code is 0 on success, else the status to answer.
func (s *Server) readBody(w http.ResponseWriter, r *http.Request) (body []byte, code int, msg string) {
	select {
	case s.reading <- struct{}{}:
		defer func() { <-s.reading }()
	default:
		w.Header().Set("Retry-After", "1")
		return nil, http.StatusTooManyRequests, fmt.Sprintf("%d predict requests are sending their bodies, the most this server takes at once: retry shortly", cap(s.reading))
	}
	s.met.predictReading.Inc()
	defer s.met.predictReading.Dec()
	http.NewResponseController(w).SetReadDeadline(time.Now().Add(bodyDeadline))
	buf := bytes.NewBuffer(make([]byte, 0, min(max(r.ContentLength, 512), s.opt.MaxBody)))
	_, err := buf.ReadFrom(http.MaxBytesReader(w, r.Body, s.opt.MaxBody))
	if err != nil {
		if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
			return nil, http.StatusRequestEntityTooLarge, fmt.Sprintf("the body is over the limit of %d bytes (status.max_body)", s.opt.MaxBody)
		}
		return nil, http.StatusBadRequest, fmt.Sprintf("reading the body: %v (it must arrive within %v)", err, bodyDeadline)
	}
	return buf.Bytes(), 0, ""
}

func modelErrorCode(err error) int {
	switch {
	case errors.Is(err, ErrUnknownModel):
		return http.StatusNotFound
	case errors.Is(err, ErrNoVersion):
		return http.StatusServiceUnavailable
	}
	return http.StatusInternalServerError
}

// columns turns predictions into the columnar response: each field a list over the batch,
// the result fields only when some prediction has them.
func columns(preds []prediction) map[string]any {
	version := make([]string, len(preds))
	latency := make([]int64, len(preds))
	classes := make([][]result.Class, len(preds))
	dets := make([][]result.Detection, len(preds))
	values := make([]map[string]float64, len(preds))
	outputs := make([][][]float64, len(preds))
	for i, p := range preds {
		version[i], latency[i] = p.Version, p.LatencyUS
		classes[i], dets[i], values[i], outputs[i] = p.Classes, p.Detections, p.Values, p.Outputs
	}
	out := map[string]any{"version": version, "latency_us": latency}
	has := func(f func(prediction) bool) bool { return slices.ContainsFunc(preds, f) }
	if has(func(p prediction) bool { return p.Classes != nil }) {
		out["classes"] = classes
	}
	if has(func(p prediction) bool { return p.Detections != nil }) {
		out["detections"] = dets
	}
	if has(func(p prediction) bool { return p.Values != nil }) {
		out["values"] = values
	}
	if has(func(p prediction) bool { return p.Outputs != nil }) {
		out["outputs"] = outputs
	}
	return out
}

// decodePredict reads a request body into one frame per instance. Row-format tensors are
// parsed in place as the body is walked; objects ({"b64": ...}, named inputs) go through
// encoding/json.
func (s *Server) decodePredict(body []byte, m Model) (frames []sensor.Frame, columnar bool, err error) {
	sc := &jscan{b: body}
	notRequest := func(err error) error {
		return badRequest("the body is not a predict request (%v): send {\"instances\": [...]} or {\"inputs\": ...} as JSON", err)
	}
	if err := sc.eat('{', "expected an object"); err != nil {
		return nil, false, notRequest(err)
	}
	var inputs []byte
	seen := map[string]bool{}
	if sc.peek() == '}' {
		sc.pos++
	} else {
		for {
			key, err := sc.str()
			if err != nil {
				return nil, false, notRequest(err)
			}
			if seen[key] {
				return nil, false, badRequest("%q appears twice in the request", key)
			}
			seen[key] = true
			if err := sc.eat(':', "expected ':' after a key"); err != nil {
				return nil, false, notRequest(err)
			}
			switch key {
			case "instances":
				left := int64(s.opt.MaxRequestPixels)
				if frames, err = s.rowFrames(sc, m, &left); err != nil {
					return nil, false, err
				}
			case "inputs":
				if inputs, err = sc.value(); err != nil {
					return nil, false, notRequest(err)
				}
			case "signature_name":
				raw, err := sc.value()
				if err != nil {
					return nil, false, notRequest(err)
				}
				var sig string
				if err := json.Unmarshal(raw, &sig); err != nil {
					return nil, false, badRequest("signature_name must be a string")
				}
				if sig != "" && sig != "serving_default" {
					return nil, false, badRequest("signature_name %q: a TensorFlow Lite model has one signature, serving_default", sig)
				}
			default:
				return nil, false, badRequest("unknown field %q: a predict request holds instances (row format) or inputs (columnar), and optionally signature_name", key)
			}
			if sc.peek() == ',' {
				sc.pos++
				continue
			}
			if err := sc.eat('}', "expected ',' or '}' in the request object"); err != nil {
				return nil, false, notRequest(err)
			}
			break
		}
	}
	if sc.ws(); sc.pos != len(body) {
		return nil, false, badRequest("the body holds more than one JSON value")
	}
	switch {
	case seen["instances"] && seen["inputs"]:
		return nil, false, badRequest("give either instances (row format) or inputs (columnar format), not both")
	case seen["instances"]:
		return frames, false, nil
	case seen["inputs"]:
		frames, err = s.columnFrames(inputs, m)
		return frames, true, err
	}
	return nil, false, badRequest("the request has neither instances nor inputs: send {\"instances\": [...]}")
}

// rowFrames reads the instances array at sc: [instance, ...].
func (s *Server) rowFrames(sc *jscan, m Model, pixelsLeft *int64) ([]sensor.Frame, error) {
	if sc.peek() != '[' {
		return nil, badRequest("instances must be a JSON array, one element per instance")
	}
	sc.pos++
	if sc.peek() == ']' {
		return nil, badRequest("instances is empty: send at least one")
	}
	var frames []sensor.Frame
	for {
		if len(frames) == s.opt.MaxInstances {
			return nil, &httpError{http.StatusRequestEntityTooLarge, fmt.Sprintf("more than %d instances in one request: split the batch", s.opt.MaxInstances)}
		}
		where := "instances[" + strconv.Itoa(len(frames)) + "]"
		var f sensor.Frame
		var err error
		if sc.peek() == '{' {
			var el []byte
			if el, err = sc.value(); err != nil {
				return nil, badRequest("%s: %v", where, err)
			}
			f, err = s.objectInstance(el, m, where, pixelsLeft)
		} else {
			f, err = s.tensorAt(sc, m, where)
		}
		if err != nil {
			return nil, err
		}
		f.Seq = uint64(len(frames) + 1)
		frames = append(frames, f)
		switch sc.peek() {
		case ',':
			sc.pos++
		case ']':
			sc.pos++
			return frames, nil
		default:
			return nil, badRequest("instances: %v", sc.fail("expected ',' or ']' after an instance"))
		}
	}
}

// objectInstance reads {"b64": "..."} (a PNG, JPEG or .npy file) or an object of input
// name → tensor.
func (s *Server) objectInstance(raw []byte, m Model, where string, pixelsLeft *int64) (sensor.Frame, error) {
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(raw, &obj); err != nil {
		return sensor.Frame{}, badRequest("%s: %v", where, err)
	}
	if b, ok := obj["b64"]; ok && len(obj) == 1 {
		return s.b64Frame(b, m, where+".b64", pixelsLeft)
	}
	return s.namedInputs(obj, m, where)
}

// tensorAt reads a single-input model's tensor as nested arrays at sc.
func (s *Server) tensorAt(sc *jscan, m Model, where string) (sensor.Frame, error) {
	if len(m.Inputs) != 1 {
		return sensor.Frame{}, badRequest("%s: model %q has %d inputs: send each instance as an object {%s}", where, m.Name, len(m.Inputs), inputNames(m))
	}
	if err := needsTensor(m, where); err != nil {
		return sensor.Frame{}, err
	}
	in := m.Inputs[0]
	n := in.Elements()
	shape, data, end, err := parseTensorAt(sc.b[sc.pos:], in.DType, n, n, where)
	if err != nil {
		return sensor.Frame{}, tensorError(err, in, where)
	}
	sc.pos += end
	if err := checkShape(shape, in, where); err != nil {
		return sensor.Frame{}, err
	}
	return sensor.Frame{Source: "predict", Time: time.Now(), Tensor: &sensor.Raw{DType: in.DType.String(), Shape: slices.Clone(in.Shape), Data: data}}, nil
}

func inputNames(m Model) string {
	var b strings.Builder
	for i, in := range m.Inputs {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%q: %s%v", in.Name, in.DType, instanceShape(in))
	}
	return b.String()
}

func needsTensor(m Model, where string) error {
	if !m.TakesTensor {
		return badRequest("%s: model %q takes pictures only (its input.kind is image): send {\"b64\": \"<PNG or JPEG, base64>\"}", where, m.Name)
	}
	return nil
}

// readInput parses one instance of input in and checks its shape.
func readInput(raw []byte, in infer.TensorInfo, where string) ([]byte, error) {
	n := in.Elements()
	shape, data, err := parseTensor(raw, in.DType, n, n, where)
	if err != nil {
		return nil, tensorError(err, in, where)
	}
	if err := checkShape(shape, in, where); err != nil {
		return nil, err
	}
	return data, nil
}

func tensorError(err error, in infer.TensorInfo, where string) error {
	if errors.Is(err, errTooMany) {
		return badRequest("%s: more than the %d values of the model's input %q %s%v (send one instance as %v)", where, in.Elements(), in.Name, in.DType, in.Shape, instanceShape(in))
	}
	return badRequest("%v", err)
}

// checkShape accepts an instance shaped as the input without its batch dimension, as the
// whole input, or a bare number for a one-element input.
func checkShape(shape []int, in infer.TensorInfo, where string) error {
	if slices.Equal(shape, instanceShape(in)) || slices.Equal(shape, in.Shape) || (len(shape) == 0 && in.Elements() == 1) {
		return nil
	}
	return badRequest("%s: shape %v does not match the model's input %q %s%v: send one instance as %v", where, shape, in.Name, in.DType, in.Shape, instanceShape(in))
}

// namedInputs reads {"<input name>": tensor, ...}; several inputs are concatenated in the
// model's order, as the tensor preprocessing splits them.
func (s *Server) namedInputs(obj map[string]json.RawMessage, m Model, where string) (sensor.Frame, error) {
	if err := needsTensor(m, where); err != nil {
		return sensor.Frame{}, err
	}
	if len(obj) != len(m.Inputs) {
		return sensor.Frame{}, badRequest("%s: an object instance names every input of model %q: {%s}, or is {\"b64\": ...}", where, m.Name, inputNames(m))
	}
	var all []byte
	for _, in := range m.Inputs {
		raw, ok := obj[in.Name]
		if !ok {
			return sensor.Frame{}, badRequest("%s: input %q is missing; model %q takes {%s}", where, in.Name, m.Name, inputNames(m))
		}
		data, err := readInput(raw, in, where+"."+in.Name)
		if err != nil {
			return sensor.Frame{}, err
		}
		all = append(all, data...)
	}
	in := m.Inputs[0]
	return sensor.Frame{Source: "predict", Time: time.Now(), Tensor: &sensor.Raw{DType: in.DType.String(), Shape: []int{len(all) / in.DType.Size()}, Data: all}}, nil
}

// b64Frame decodes {"b64": "..."}: a PNG or JPEG picture (through the model's image
// preprocessing) or a .npy tensor, read as the file source reads files.
// pixelsLeft is what is left of the request's pixel budget (status.max_request_pixels); the
// picture's pixels are taken from it before it is decoded.
func (s *Server) b64Frame(raw json.RawMessage, m Model, where string, pixelsLeft *int64) (sensor.Frame, error) {
	var str string
	if err := json.Unmarshal(raw, &str); err != nil {
		return sensor.Frame{}, badRequest("%s must be a base64 string", where)
	}
	var data []byte
	var err error
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if data, err = enc.DecodeString(str); err == nil {
			break
		}
	}
	if err != nil {
		return sensor.Frame{}, badRequest("%s is not base64: %v", where, err)
	}
	var w, h int
	deep := false // 16 bits per channel: decodes to twice the memory of 8 bits
	isImage := true
	switch {
	case bytes.HasPrefix(data, []byte("\x89PNG\r\n\x1a\n")):
		c, err := png.DecodeConfig(bytes.NewReader(data))
		if err != nil {
			return sensor.Frame{}, badRequest("%s: not a readable PNG: %v", where, err)
		}
		w, h = c.Width, c.Height
		deep = c.ColorModel == color.Gray16Model || c.ColorModel == color.RGBA64Model || c.ColorModel == color.NRGBA64Model
	case bytes.HasPrefix(data, []byte{0xff, 0xd8, 0xff}):
		c, err := jpeg.DecodeConfig(bytes.NewReader(data))
		if err != nil {
			return sensor.Frame{}, badRequest("%s: not a readable JPEG: %v", where, err)
		}
		w, h = c.Width, c.Height
	default:
		isImage = false
	}
	if isImage {
		if !m.TakesImage {
			return sensor.Frame{}, badRequest("%s: model %q does not take pictures (its input %s%v is not image-shaped, or input.kind is not image): send the input tensor as nested arrays", where, m.Name, m.Inputs[0].DType, m.Inputs[0].Shape)
		}
		// Checked from the header, before anything is decoded: a small compressed file can
		// decode to hundreds of megabytes.
		px := int64(w) * int64(h)
		cost := px
		if deep {
			cost *= 2
		}
		if cost > int64(s.opt.MaxPixels) {
			depth := ""
			if deep {
				depth = " with 16-bit channels, which count twice"
			}
			return sensor.Frame{}, &httpError{http.StatusRequestEntityTooLarge, fmt.Sprintf("%s: the picture is %d×%d%s, over the limit of %d pixels per picture (status.max_pixels): scale it down", where, w, h, depth, s.opt.MaxPixels)}
		}
		if *pixelsLeft -= cost; *pixelsLeft < 0 {
			return sensor.Frame{}, &httpError{http.StatusRequestEntityTooLarge, fmt.Sprintf("%s: the request's pictures are over the limit of %d pixels per request (status.max_request_pixels): send fewer per request", where, s.opt.MaxRequestPixels)}
		}
	}
	f, err := file.Decode("", data, sensor.FileSpec{})
	if err != nil {
		return sensor.Frame{}, badRequest("%s: %v (send a PNG, a JPEG or a .npy file)", where, err)
	}
	if f.Tensor != nil {
		if err := needsTensor(m, where); err != nil {
			return sensor.Frame{}, err
		}
		total, in := 0, m.Inputs[0]
		for _, t := range m.Inputs {
			total += t.Bytes
		}
		if f.Tensor.DType != in.DType.String() || len(f.Tensor.Data) != total {
			return sensor.Frame{}, badRequest("%s: the .npy tensor is %s%v, the model's input is %s%v", where, f.Tensor.DType, f.Tensor.Shape, in.DType, in.Shape)
		}
	}
	f.Source, f.Time = "predict", time.Now()
	return f, nil
}

// columnFrames reads {"inputs": tensor} or {"inputs": {"<input name>": tensor, ...}}, each
// tensor with the batch as its first dimension.
func (s *Server) columnFrames(raw json.RawMessage, m Model) ([]sensor.Frame, error) {
	raw = bytes.TrimSpace(raw)
	named := map[string]json.RawMessage{}
	if raw[0] == '{' {
		if err := json.Unmarshal(raw, &named); err != nil {
			return nil, badRequest("inputs: %v", err)
		}
		if len(named) != len(m.Inputs) {
			return nil, badRequest("inputs: name every input of model %q: {%s}", m.Name, inputNames(m))
		}
	} else {
		if len(m.Inputs) != 1 {
			return nil, badRequest("inputs: model %q has %d inputs: send {%s}", m.Name, len(m.Inputs), inputNames(m))
		}
		named[m.Inputs[0].Name] = raw
	}
	if err := needsTensor(m, "inputs"); err != nil {
		return nil, err
	}
	batch := -1
	parts := make([][]byte, len(m.Inputs))
	for i, in := range m.Inputs {
		r, ok := named[in.Name]
		if !ok {
			return nil, badRequest("inputs: input %q is missing; model %q takes {%s}", in.Name, m.Name, inputNames(m))
		}
		where := "inputs"
		if len(m.Inputs) > 1 || raw[0] == '{' {
			where += "." + in.Name
		}
		n := in.Elements()
		shape, data, err := parseTensor(r, in.DType, n*s.opt.MaxInstances, n, where)
		if errors.Is(err, errTooMany) {
			return nil, &httpError{http.StatusRequestEntityTooLarge, fmt.Sprintf("%s: more than %d instances in one request: split the batch", where, s.opt.MaxInstances)}
		}
		if err != nil {
			return nil, badRequest("%v", err)
		}
		want := instanceShape(in)
		if len(shape) != len(want)+1 || !slices.Equal(shape[1:], want) || shape[0] == 0 {
			return nil, badRequest("%s: shape %v is not [batch]+%v: the columnar format puts the batch first, then the model's input %q %s%v without its batch dimension", where, shape, want, in.Name, in.DType, in.Shape)
		}
		if batch >= 0 && shape[0] != batch {
			return nil, badRequest("%s: batch of %d where another input has %d", where, shape[0], batch)
		}
		batch, parts[i] = shape[0], data
	}
	frames := make([]sensor.Frame, batch)
	in0 := m.Inputs[0]
	for b := range batch {
		var all []byte
		for i, in := range m.Inputs {
			all = append(all, parts[i][b*in.Bytes:(b+1)*in.Bytes]...)
		}
		shape := slices.Clone(in0.Shape)
		if len(m.Inputs) > 1 {
			shape = []int{len(all) / in0.DType.Size()}
		}
		frames[b] = sensor.Frame{Source: "predict", Seq: uint64(b + 1), Time: time.Now(), Tensor: &sensor.Raw{DType: in0.DType.String(), Shape: shape, Data: all}}
	}
	return frames, nil
}

// handleModel is TensorFlow Serving's model status, with the tensors' specs added.
func (s *Server) handleModel(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if strings.HasSuffix(name, ":predict") {
		w.Header().Set("Allow", http.MethodPost)
		writeError(w, http.StatusMethodNotAllowed, "predict takes POST with a JSON body")
		return
	}
	m, err := s.agent.Model(name)
	if errors.Is(err, ErrNoVersion) {
		writeJSON(w, http.StatusOK, map[string]any{"model_version_status": []any{map[string]any{
			"version": "", "state": "END", "status": map[string]string{"error_code": "UNAVAILABLE", "error_message": err.Error()}}}})
		return
	}
	if err != nil {
		writeError(w, modelErrorCode(err), err.Error())
		return
	}
	spec := func(ts []infer.TensorInfo, withInstance bool) []map[string]any {
		out := []map[string]any{}
		for _, t := range ts {
			e := map[string]any{"name": t.Name, "dtype": t.DType, "shape": t.Shape}
			if t.Quant.Quantised() {
				e["quantization"] = t.Quant
			}
			if withInstance {
				e["instance_shape"] = instanceShape(t)
			}
			out = append(out, e)
		}
		return out
	}
	body := map[string]any{
		"model_version_status": []any{map[string]any{
			"version": m.Version, "state": "AVAILABLE", "status": map[string]string{"error_code": "OK", "error_message": ""}}},
		"inputs":       spec(m.Inputs, true),
		"outputs":      spec(m.Outputs, false),
		"takes_tensor": m.TakesTensor,
		"takes_image":  m.TakesImage,
	}
	for _, st := range s.agent.Snapshot().Models {
		if st.Name == name && st.Experiment != nil {
			body["experiment"] = map[string]any{"mode": st.Experiment.Mode, "weight": st.Experiment.Weight, "candidate_version": st.Experiment.CandidateVersion}
		}
	}
	writeJSON(w, http.StatusOK, body)
}

// writeJSON writes v with code and returns code.
func writeJSON(w http.ResponseWriter, code int, v any) int {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
	return code
}

// writeError writes {"error": msg}.
func writeError(w http.ResponseWriter, code int, msg string) int {
	return writeJSON(w, code, map[string]string{"error": msg})
}

func writeRequestError(w http.ResponseWriter, err error) int {
	if he, ok := errors.AsType[*httpError](err); ok {
		return writeError(w, he.code, he.msg)
	}
	return writeError(w, http.StatusBadRequest, err.Error())
}
