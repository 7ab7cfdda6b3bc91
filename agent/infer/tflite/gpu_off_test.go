//go:build cgo && !tflite_gpu

package tflite_test

import (
	"strings"
	"testing"

	"github.com/edge-agent/edge-agent/agent/infer"
	"github.com/edge-agent/edge-agent/internal/testenv"
)

// Built without the GPU delegate: asking for it says how to get it.
func TestDelegateGPUNotBuiltSaysHow(t *testing.T) {
	m := load(t, testenv.Data(t, "mnist_model.tflite"), infer.Options{Delegate: "gpu", GPUAvailable: true})
	if info := m.Info(); info.Delegate != "cpu" || !strings.Contains(info.Fallback, "-tags tflite_gpu") {
		t.Fatalf("delegate %q fallback %q; want cpu, saying to build with -tags tflite_gpu", info.Delegate, info.Fallback)
	}
}
