//go:build cgo

package tflite

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"runtime/cgo"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	tfl "github.com/mattn/go-tflite"
	"golang.org/x/sys/unix"

	"github.com/edge-agent/edge-agent/agent/infer"
	"github.com/edge-agent/edge-agent/agent/infer/tflitefmt"
)

func init() {
	infer.Engines.Register("tflite", func() (infer.Engine, error) { return New(), nil })
}

// MaxModelBytes bounds a model file; larger files are refused before they are read.
const MaxModelBytes = 512 << 20

// EdgeTPUCustomOp is the custom op the Edge TPU compiler puts in a compiled model.
const EdgeTPUCustomOp = "edgetpu-custom-op"

// DefaultEdgeTPULibrary is the Edge TPU runtime (Debian/Coral package libedgetpu1-std).
const DefaultEdgeTPULibrary = "libedgetpu.so.1"

// stockCustomOps are the custom ops the stock TF 2.9 C library resolves by itself.
var stockCustomOps = []string{"TFLite_Detection_PostProcess", "Mfcc", "AudioSpectrogram"}

// Engine loads TensorFlow Lite models. It holds no state; models own their resources.
type Engine struct{}

// New returns the engine.
func New() *Engine { return &Engine{} }

// Name is "tflite".
func (*Engine) Name() string { return "tflite" }

// Version is the C library's version, e.g. "2.9.0".
func (*Engine) Version() string { return runtimeVersion() }

// LoadFile loads a model from a .tflite file; the runtime memory-maps it.
func (e *Engine) LoadFile(path string, opt infer.Options) (infer.Model, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("load model %s: %w", path, err)
	}
	if st.Size() > MaxModelBytes {
		return nil, fmt.Errorf("load model %s: %w: %d bytes is over the %d byte limit", path, infer.ErrBadModel, st.Size(), MaxModelBytes)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load model %s: %w", path, err)
	}
	return e.load(path, data, path, opt, nil)
}

// LoadBytes loads a model from memory. The bytes go into an anonymous in-memory file
// (memfd) that the runtime maps, so nothing is written to disk and nothing leaks when the
// model is closed.
func (e *Engine) LoadBytes(data []byte, opt infer.Options) (infer.Model, error) {
	if len(data) > MaxModelBytes {
		return nil, fmt.Errorf("load model: %w: %d bytes is over the %d byte limit", infer.ErrBadModel, len(data), MaxModelBytes)
	}
	fd, err := unix.MemfdCreate("edge-agent-model", unix.MFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("load model: memfd_create: %w", err)
	}
	f := os.NewFile(uintptr(fd), "memfd:model")
	if _, err := f.Write(data); err != nil {
		f.Close()
		return nil, fmt.Errorf("load model: write memfd: %w", err)
	}
	// The runtime opens and maps /proc/self/fd/N itself; our descriptor is closed with the model.
	return e.load("(bytes)", data, fmt.Sprintf("/proc/self/fd/%d", fd), opt, f)
}

func (e *Engine) load(name string, data []byte, path string, opt infer.Options, keep *os.File) (_ infer.Model, err error) {
	fm, perr := tflitefmt.Parse(data)
	if perr != nil {
		if keep != nil {
			keep.Close()
		}
		return nil, fmt.Errorf("load model %s: %w: %v", name, infer.ErrBadModel, perr)
	}
	m := &model{
		name:    name,
		opt:     opt,
		keep:    keep,
		msgs:    &messages{logf: opt.Logf},
		threads: opt.Threads,
		custom:  fm.CustomOps(),
	}
	if m.threads <= 0 {
		m.threads = min(runtime.NumCPU(), 4)
	}
	size := max(opt.Pool, 1)
	m.sem = make(chan struct{}, size)
	m.done = make(chan struct{})
	m.handle = cgo.NewHandle(m.msgs)
	defer func() {
		if err != nil {
			m.free()
		}
	}()

	m.tm = tfl.NewModelFromFile(path)
	if m.tm == nil {
		return nil, fmt.Errorf("load model %s: %w: the runtime could not read it", name, infer.ErrBadModel)
	}

	kind, reason, err := m.chooseDelegate(fm)
	if err != nil {
		return nil, fmt.Errorf("load model %s: %w", name, err)
	}
	first, ierr := m.newInterp(kind)
	if ierr != nil && kind != infer.DelegateCPU {
		reason = fmt.Sprintf("%s delegate failed: %v", kind, ierr)
		if opt.Logf != nil {
			opt.Logf("model %s: %s; falling back to the CPU", name, reason)
		}
		if kind == infer.DelegateEdgeTPU && slices.Contains(m.custom, EdgeTPUCustomOp) {
			return nil, fmt.Errorf("load model %s: %w (it uses %s) and the Edge TPU delegate failed: %v", name, infer.ErrNeedsEdgeTPU, EdgeTPUCustomOp, ierr)
		}
		kind = infer.DelegateCPU
		first, ierr = m.newInterp(kind)
	}
	if ierr != nil {
		if un := m.unsupported(); len(un) > 0 {
			return nil, fmt.Errorf("load model %s: %w: custom ops %s (%v); register them in a custom build of the runtime or convert the model without them", name, infer.ErrUnsupportedOps, strings.Join(un, ", "), ierr)
		}
		return nil, fmt.Errorf("load model %s: %w", name, ierr)
	}
	m.kind = kind
	m.all = append(m.all, first)
	m.free_ = append(m.free_, first)
	m.info = infer.ModelInfo{
		Inputs:    tensorInfos(first.in),
		Outputs:   tensorInfos(first.out),
		Ops:       fm.OpNames(),
		CustomOps: m.custom,
		Delegate:  kind,
		Fallback:  reason,
		Threads:   m.threads,
		Pool:      size,
		Runtime:   "tflite " + runtimeVersion(),
		Bytes:     int64(len(data)),
	}
	return m, nil
}

// chooseDelegate decides which delegate to try and, when it is not the one asked for, why.
func (m *model) chooseDelegate(fm tflitefmt.Model) (kind, reason string, err error) {
	want := m.opt.Delegate
	if want == "" {
		want = infer.DelegateAuto
	}
	compiledForTPU := slices.Contains(m.custom, EdgeTPUCustomOp)
	tpuLib := m.opt.EdgeTPULibrary
	if tpuLib == "" {
		tpuLib = DefaultEdgeTPULibrary
	}
	tpuProblem := func() string {
		if !m.opt.EdgeTPUAvailable {
			return "no Edge TPU found (no USB device 1a6e:089a or 18d1:9302, no /dev/apex_*)"
		}
		if e := probeLibrary(tpuLib); e != "" {
			return fmt.Sprintf("the Edge TPU runtime %s does not load: %s (install libedgetpu1-std)", tpuLib, e)
		}
		return ""
	}
	if compiledForTPU {
		if p := tpuProblem(); p != "" {
			return "", "", fmt.Errorf("%w (it uses %s) and no Edge TPU can be used: %s; attach an Edge TPU or deploy the CPU build of the model", infer.ErrNeedsEdgeTPU, EdgeTPUCustomOp, p)
		}
		return infer.DelegateEdgeTPU, "", nil
	}
	switch want {
	case infer.DelegateCPU:
		return infer.DelegateCPU, "", nil
	case infer.DelegateXNNPACK:
		return infer.DelegateXNNPACK, "", nil
	case infer.DelegateEdgeTPU:
		if p := tpuProblem(); p != "" {
			return infer.DelegateCPU, "edgetpu: " + p, nil
		}
		return infer.DelegateCPU, "edgetpu: the model is not compiled for the Edge TPU (no " + EdgeTPUCustomOp + "); compile it with edgetpu_compiler", nil
	case infer.DelegateGPU:
		if !gpuBuilt() {
			_, e := newGPU("")
			return infer.DelegateCPU, "gpu: " + e.Error(), nil
		}
		if !m.opt.GPUAvailable {
			return infer.DelegateCPU, "gpu: no supported GPU found on this board", nil
		}
		return infer.DelegateGPU, "", nil
	case infer.DelegateAuto:
		if gpuBuilt() && m.opt.GPUAvailable {
			return infer.DelegateGPU, "", nil
		}
		return infer.DelegateXNNPACK, "", nil
	}
	return "", "", fmt.Errorf("unknown delegate %q (want one of %s)", want, strings.Join(infer.Delegates, ", "))
}

// unsupported lists custom ops the stock runtime does not resolve.
func (m *model) unsupported() []string {
	var out []string
	for _, c := range m.custom {
		if !slices.Contains(stockCustomOps, c) {
			out = append(out, c)
		}
	}
	return out
}

type model struct {
	name    string
	opt     infer.Options
	threads int
	custom  []string
	keep    *os.File // memfd behind a model loaded from bytes
	tm      *tfl.Model
	msgs    *messages
	handle  cgo.Handle
	kind    string
	info    infer.ModelInfo

	sem    chan struct{} // one token per interpreter in use; capacity = pool size
	done   chan struct{} // closed by Close: callers waiting for a token give up
	mu     sync.Mutex
	all    []*interp
	free_  []*interp
	closed atomic.Bool
}

type interp struct {
	ip       *tfl.Interpreter
	delegate *cDelegate
	in, out  []*tfl.Tensor
}

func (m *model) newInterp(kind string) (*interp, error) {
	opts := tfl.NewInterpreterOptions()
	if opts == nil {
		return nil, errors.New("TfLiteInterpreterOptionsCreate failed")
	}
	defer opts.Delete()
	opts.SetNumThread(m.threads)
	setReporter(opts, m.handle)
	var d *cDelegate
	var err error
	switch kind {
	case infer.DelegateXNNPACK:
		d, err = newXNNPACK(m.threads, false)
	case infer.DelegateEdgeTPU:
		lib := m.opt.EdgeTPULibrary
		if lib == "" {
			lib = DefaultEdgeTPULibrary
		}
		d, err = newExternal(lib, nil)
	case infer.DelegateGPU:
		d, err = newGPU("")
	}
	if err != nil {
		return nil, err
	}
	if d != nil {
		opts.AddDelegate(d)
	}
	m.msgs.take()
	ip := tfl.NewInterpreter(m.tm, opts)
	if ip == nil {
		if d != nil {
			d.Delete()
		}
		return nil, fmt.Errorf("the runtime could not build an interpreter: %s", said(m.msgs.take()))
	}
	if st := ip.AllocateTensors(); st != tfl.OK {
		ip.Delete()
		if d != nil {
			d.Delete()
		}
		return nil, fmt.Errorf("allocate tensors: %s", said(m.msgs.take()))
	}
	it := &interp{ip: ip, delegate: d}
	for i := range ip.GetInputTensorCount() {
		it.in = append(it.in, ip.GetInputTensor(i))
	}
	for i := range ip.GetOutputTensorCount() {
		it.out = append(it.out, ip.GetOutputTensor(i))
	}
	return it, nil
}

func said(msgs []string) string {
	if len(msgs) == 0 {
		return "no message from the runtime"
	}
	return strings.Join(msgs, "; ")
}

func (it *interp) delete() {
	it.ip.Delete()
	if it.delegate != nil {
		it.delegate.Delete()
	}
}

func tensorInfos(ts []*tfl.Tensor) []infer.TensorInfo {
	out := make([]infer.TensorInfo, len(ts))
	for i, t := range ts {
		q := t.QuantizationParams()
		out[i] = infer.TensorInfo{
			Index: i,
			Name:  t.Name(),
			DType: dtype(t.Type()),
			Shape: t.Shape(),
			Quant: infer.Quant{Scale: float32(q.Scale), ZeroPoint: int32(q.ZeroPoint)},
			Bytes: int(t.ByteSize()),
		}
	}
	return out
}

func dtype(t tfl.TensorType) infer.DType {
	switch t {
	case tfl.Float32:
		return infer.Float32
	case tfl.UInt8:
		return infer.UInt8
	case tfl.Int8:
		return infer.Int8
	case tfl.Int16:
		return infer.Int16
	case tfl.Int32:
		return infer.Int32
	case tfl.Int64:
		return infer.Int64
	case tfl.Bool:
		return infer.Bool
	case tfl.String:
		return infer.String
	case 10:
		return infer.Float16
	case 11:
		return infer.Float64
	}
	return infer.Unknown
}

func (m *model) Info() infer.ModelInfo { return m.info }

func (m *model) acquire(ctx context.Context) (*interp, error) {
	select {
	case m.sem <- struct{}{}:
	case <-m.done:
		return nil, infer.ErrClosed
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if m.closed.Load() {
		<-m.sem
		return nil, infer.ErrClosed
	}
	m.mu.Lock()
	if n := len(m.free_); n > 0 {
		it := m.free_[n-1]
		m.free_ = m.free_[:n-1]
		m.mu.Unlock()
		return it, nil
	}
	m.mu.Unlock()
	// Fewer interpreters than tokens: grow the pool lazily, up to its size.
	it, err := m.newInterp(m.kind)
	if err != nil {
		<-m.sem
		return nil, fmt.Errorf("model %s: another interpreter for the pool: %w", m.name, err)
	}
	m.mu.Lock()
	m.all = append(m.all, it)
	m.mu.Unlock()
	return it, nil
}

func (m *model) release(it *interp) {
	m.mu.Lock()
	m.free_ = append(m.free_, it)
	m.mu.Unlock()
	<-m.sem
}

// Infer copies the inputs in, invokes, and copies the outputs out.
func (m *model) Infer(ctx context.Context, inputs []infer.Tensor) ([]infer.Tensor, error) {
	if err := infer.CheckInputs(m.info.Inputs, inputs); err != nil {
		return nil, fmt.Errorf("model %s: %w", m.name, err)
	}
	it, err := m.acquire(ctx)
	if err != nil {
		return nil, err
	}
	defer m.release(it)
	for i, in := range inputs {
		if len(in.Data) == 0 {
			continue
		}
		if st := it.in[i].CopyFromBuffer(in.Data); st != tfl.OK {
			return nil, fmt.Errorf("model %s: copy input %d: %s", m.name, i, said(m.msgs.take()))
		}
	}
	if st := it.ip.Invoke(); st != tfl.OK {
		return nil, fmt.Errorf("model %s: invoke failed: %s", m.name, said(m.msgs.take()))
	}
	outs := make([]infer.Tensor, len(it.out))
	for i, t := range it.out {
		info := m.info.Outputs[i]
		data := make([]byte, t.ByteSize())
		if len(data) > 0 {
			if st := t.CopyToBuffer(data); st != tfl.OK {
				return nil, fmt.Errorf("model %s: copy output %d: %s", m.name, i, said(m.msgs.take()))
			}
		}
		outs[i] = infer.Tensor{DType: info.DType, Shape: t.Shape(), Data: data}
	}
	return outs, nil
}

// Close waits for in-flight inferences (by taking every pool token) and frees everything.
func (m *model) Close() error {
	if m.closed.Swap(true) {
		return nil
	}
	close(m.done)
	for range cap(m.sem) {
		m.sem <- struct{}{}
	}
	m.free()
	return nil
}

func (m *model) free() {
	m.mu.Lock()
	for _, it := range m.all {
		it.delete()
	}
	m.all, m.free_ = nil, nil
	m.mu.Unlock()
	if m.tm != nil {
		m.tm.Delete()
		m.tm = nil
	}
	if m.handle != 0 {
		m.handle.Delete()
		m.handle = 0
	}
	if m.keep != nil {
		m.keep.Close()
		m.keep = nil
	}
}
