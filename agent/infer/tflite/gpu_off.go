//go:build cgo && !tflite_gpu

package tflite

import "errors"

func gpuBuilt() bool { return false }

func newGPU(string) (*cDelegate, error) {
	return nil, errors.New("this build has no GPU delegate support: rebuild with -tags tflite_gpu on a board that has libtensorflowlite_gpu_delegate.so")
}
