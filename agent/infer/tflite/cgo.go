//go:build cgo

package tflite

/*
#cgo LDFLAGS: -ltensorflowlite_c -lexternal_delegate_obj -ldl
#include <dlfcn.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <tensorflow/lite/c/c_api.h>
#include <tensorflow/lite/c/c_api_experimental.h>

// Error reporter: TFLite hands us printf-style text; format it here (vsnprintf, bounded)
// and pass the finished string to Go with the handle of the model's message log.
extern void edgeTfliteReport(uintptr_t handle, char* msg);

static void edge_reporter(void* user, const char* format, va_list args) {
	char buf[1024];
	vsnprintf(buf, sizeof buf, format, args);
	edgeTfliteReport((uintptr_t)user, buf);
}

static void edge_set_reporter(TfLiteInterpreterOptions* o, uintptr_t handle) {
	TfLiteInterpreterOptionsSetErrorReporter(o, edge_reporter, (void*)handle);
}

// XNNPACK options as libtensorflowlite_c.so 2.9 from tfjs-tflite-node@0.0.2 lays them out:
// two 32-bit fields (num_threads, flags). Verified on the shipped binary: its
// TfLiteXNNPackDelegateOptionsDefault returns the struct in one register (xor eax,eax; ret),
// i.e. 8 bytes, and TfLiteXNNPackDelegateCreate reads 8 bytes from the pointer it is given.
typedef struct {
	int32_t num_threads;
	uint32_t flags;
} EdgeXNNPackOptions;

#define EDGE_XNNPACK_FLAG_QS8 0x00000001
#define EDGE_XNNPACK_FLAG_QU8 0x00000002

extern EdgeXNNPackOptions TfLiteXNNPackDelegateOptionsDefault(void);
extern TfLiteDelegate* TfLiteXNNPackDelegateCreate(const EdgeXNNPackOptions* options);
extern void TfLiteXNNPackDelegateDelete(TfLiteDelegate* delegate);

static TfLiteDelegate* edge_xnnpack_create(int32_t threads, int quantized) {
	EdgeXNNPackOptions o = TfLiteXNNPackDelegateOptionsDefault();
	o.num_threads = threads > 1 ? threads : 0;
	if (quantized) o.flags |= EDGE_XNNPACK_FLAG_QS8 | EDGE_XNNPACK_FLAG_QU8;
	return TfLiteXNNPackDelegateCreate(&o);
}

// External delegate (libexternal_delegate_obj.so): loads a vendor plugin such as
// libedgetpu.so.1 by path. The shipped header is C++-only (a const int array bound), so the
// layout is declared here: a library path, a count, 256 keys, 256 values, an insert callback.
#define EDGE_EXT_MAX_OPTIONS 256
typedef struct EdgeExternalOptions {
	const char* lib_path;
	int count;
	const char* keys[EDGE_EXT_MAX_OPTIONS];
	const char* values[EDGE_EXT_MAX_OPTIONS];
	TfLiteStatus (*insert)(struct EdgeExternalOptions* options, const char* key, const char* value);
} EdgeExternalOptions;

extern EdgeExternalOptions TfLiteExternalDelegateOptionsDefault(const char* lib_path);
extern TfLiteDelegate* TfLiteExternalDelegateCreate(const EdgeExternalOptions* options);
extern void TfLiteExternalDelegateDelete(TfLiteDelegate* delegate);

static TfLiteDelegate* edge_external_create(const char* lib, int n, const char** keys, const char** values) {
	EdgeExternalOptions o = TfLiteExternalDelegateOptionsDefault(lib);
	for (int i = 0; i < n && i < EDGE_EXT_MAX_OPTIONS; i++) {
		o.insert(&o, keys[i], values[i]);
	}
	return TfLiteExternalDelegateCreate(&o);
}

// edge_probe_library dlopens a library to learn why it cannot load, before handing its path
// to a delegate that would only say "failed". Returns NULL when it loads, else dlerror text
// (valid until the next dl* call on this thread; copied by the caller at once).
static const char* edge_probe_library(const char* path) {
	void* h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
	if (h == NULL) {
		const char* e = dlerror();
		return e ? e : "dlopen failed";
	}
	dlclose(h);
	return NULL;
}
*/
import "C"

import (
	"errors"
	"runtime/cgo"
	"sync"
	"unsafe"

	tfl "github.com/mattn/go-tflite"
)

// messages keeps the last runtime messages of one model (bounded), so a failed load can say
// what the runtime said.
type messages struct {
	mu   sync.Mutex
	buf  []string
	logf func(string, ...any)
}

const maxMessages = 16

func (m *messages) add(s string) {
	m.mu.Lock()
	if len(m.buf) == maxMessages {
		copy(m.buf, m.buf[1:])
		m.buf = m.buf[:maxMessages-1]
	}
	m.buf = append(m.buf, s)
	logf := m.logf
	m.mu.Unlock()
	if logf != nil {
		logf("tflite: %s", s)
	}
}

// take returns and clears the collected messages.
func (m *messages) take() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := m.buf
	m.buf = nil
	return out
}

//export edgeTfliteReport
func edgeTfliteReport(handle C.uintptr_t, msg *C.char) {
	h := cgo.Handle(handle)
	if m, ok := h.Value().(*messages); ok {
		m.add(C.GoString(msg))
	}
}

// optionsPtr digs the C options pointer out of go-tflite's InterpreterOptions, whose only
// field is that pointer (go-tflite v1.0.5, pinned). We need it to install a correct error
// reporter: go-tflite's own passes a va_list to asprintf, which garbles or crashes on any
// message with arguments. TestErrorReporterReachesUs guards the layout.
func optionsPtr(o *tfl.InterpreterOptions) *C.TfLiteInterpreterOptions {
	return (*C.TfLiteInterpreterOptions)(*(*unsafe.Pointer)(unsafe.Pointer(o)))
}

func setReporter(o *tfl.InterpreterOptions, h cgo.Handle) {
	C.edge_set_reporter(optionsPtr(o), C.uintptr_t(h))
}

func setDelegateFallback(o *tfl.InterpreterOptions, on bool) {
	C.TfLiteInterpreterOptionsSetEnableDelegateFallback(optionsPtr(o), C.bool(on))
}

func runtimeVersion() string { return C.GoString(C.TfLiteVersion()) }

// cDelegate adapts a C delegate to go-tflite's delegates.Delegater.
type cDelegate struct {
	p   *C.TfLiteDelegate
	del func(*C.TfLiteDelegate)
}

func (d *cDelegate) Ptr() unsafe.Pointer { return unsafe.Pointer(d.p) }
func (d *cDelegate) Delete() {
	if d.p != nil {
		d.del(d.p)
		d.p = nil
	}
}

func newXNNPACK(threads int, quantized bool) (*cDelegate, error) {
	q := C.int(0)
	if quantized {
		q = 1
	}
	p := C.edge_xnnpack_create(C.int32_t(threads), q)
	if p == nil {
		return nil, errors.New("TfLiteXNNPackDelegateCreate returned no delegate")
	}
	return &cDelegate{p: p, del: func(p *C.TfLiteDelegate) { C.TfLiteXNNPackDelegateDelete(p) }}, nil
}

// probeLibrary returns "" when the shared library loads, else the loader's reason.
func probeLibrary(path string) string {
	cs := C.CString(path)
	defer C.free(unsafe.Pointer(cs))
	if e := C.edge_probe_library(cs); e != nil {
		return C.GoString(e)
	}
	return ""
}

func newExternal(lib string, opts map[string]string) (*cDelegate, error) {
	var toFree []unsafe.Pointer
	cstr := func(s string) *C.char {
		p := C.CString(s)
		toFree = append(toFree, unsafe.Pointer(p))
		return p
	}
	defer func() {
		for _, p := range toFree {
			C.free(p)
		}
	}()
	n := len(opts)
	keys := C.malloc(C.size_t(max(n, 1)) * C.size_t(unsafe.Sizeof(uintptr(0))))
	vals := C.malloc(C.size_t(max(n, 1)) * C.size_t(unsafe.Sizeof(uintptr(0))))
	toFree = append(toFree, keys, vals)
	ks := unsafe.Slice((**C.char)(keys), max(n, 1))
	vs := unsafe.Slice((**C.char)(vals), max(n, 1))
	i := 0
	for k, v := range opts {
		ks[i], vs[i] = cstr(k), cstr(v)
		i++
	}
	p := C.edge_external_create(cstr(lib), C.int(n), (**C.char)(keys), (**C.char)(vals))
	if p == nil {
		return nil, errors.New("TfLiteExternalDelegateCreate returned no delegate for " + lib)
	}
	return &cDelegate{p: p, del: func(p *C.TfLiteDelegate) { C.TfLiteExternalDelegateDelete(p) }}, nil
}
