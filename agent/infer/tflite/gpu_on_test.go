//go:build cgo && tflite_gpu

package tflite_test

import (
	"strings"
	"testing"

	"github.com/edge-agent/edge-agent/agent/infer"
	"github.com/edge-agent/edge-agent/internal/testenv"
)

// Built with the GPU delegate: on this machine (no GPU delegate library, no GPU) the load
// falls back to the CPU with the loader's own reason.
func TestDelegateGPUBuildFallsBackWithLoaderReason(t *testing.T) {
	m := load(t, testenv.Data(t, "mnist_model.tflite"), infer.Options{Delegate: "gpu", GPUAvailable: true})
	if info := m.Info(); info.Delegate != "cpu" || !strings.Contains(info.Fallback, "libtensorflowlite_gpu_delegate.so") {
		t.Fatalf("delegate %q fallback %q; want cpu, naming the GPU delegate library", info.Delegate, info.Fallback)
	}
}
