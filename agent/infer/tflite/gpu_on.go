//go:build cgo && tflite_gpu

package tflite

/*
#include <dlfcn.h>
#include <stdlib.h>
#include <tensorflow/lite/c/c_api.h>

// The GPU delegate (OpenCL/OpenGL ES) is a separate library that is not in the npm package.
// It is opened at run time so the same binary starts on boards without it. Create is called
// with NULL options, which the delegate documents as "use defaults", so no options struct
// layout is assumed here. Each delegate holds its own dlopen reference.
typedef TfLiteDelegate* (*edge_gpu_create_fn)(const void*);
typedef void (*edge_gpu_delete_fn)(TfLiteDelegate*);

static void* edge_gpu_open(const char* path, const char** err) {
	void* h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
	if (!h) { const char* e = dlerror(); *err = e ? e : "dlopen failed"; return NULL; }
	if (!dlsym(h, "TfLiteGpuDelegateV2Create") || !dlsym(h, "TfLiteGpuDelegateV2Delete")) {
		dlclose(h);
		*err = "library has no TfLiteGpuDelegateV2Create/Delete";
		return NULL;
	}
	return h;
}

static TfLiteDelegate* edge_gpu_create(void* h) {
	return ((edge_gpu_create_fn)dlsym(h, "TfLiteGpuDelegateV2Create"))(NULL);
}

static void edge_gpu_delete(void* h, TfLiteDelegate* d) {
	if (d) ((edge_gpu_delete_fn)dlsym(h, "TfLiteGpuDelegateV2Delete"))(d);
	dlclose(h);
}
*/
import "C"

import (
	"fmt"
	"unsafe"
)

// gpuLibrary is the default name of the TensorFlow Lite GPU delegate library.
const gpuLibrary = "libtensorflowlite_gpu_delegate.so"

func gpuBuilt() bool { return true }

func newGPU(lib string) (*cDelegate, error) {
	if lib == "" {
		lib = gpuLibrary
	}
	cs := C.CString(lib)
	defer C.free(unsafe.Pointer(cs))
	var e *C.char
	h := C.edge_gpu_open(cs, &e)
	if h == nil {
		return nil, fmt.Errorf("cannot load the GPU delegate %s: %s", lib, C.GoString(e))
	}
	p := C.edge_gpu_create(h)
	if p == nil {
		C.edge_gpu_delete(h, nil)
		return nil, fmt.Errorf("GPU delegate %s created no delegate (no OpenCL/OpenGL ES device?)", lib)
	}
	return &cDelegate{p: p, del: func(p *C.TfLiteDelegate) { C.edge_gpu_delete(h, p) }}, nil
}
