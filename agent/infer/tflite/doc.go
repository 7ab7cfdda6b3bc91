// Package tflite is the TensorFlow Lite engine: the only importer of github.com/mattn/go-tflite
// and the only cgo in the agent. It loads models from files or bytes, reports their tensors and
// ops, keeps a small pool of interpreters per model so concurrent callers never share one,
// picks a delegate (XNNPACK, Edge TPU and other plugins through the external delegate, GPU
// behind the tflite_gpu build tag) and falls back to the CPU kernels with the reason recorded
// when a delegate cannot be used. Outputs are copied out of C memory before an interpreter
// goes back to the pool.
//
// It registers itself as engine "tflite" in agent/infer from init; without cgo the package
// is empty and agent/infer reports that no engine is available. It must not import any other
// agent package than agent/infer and agent/infer/tflitefmt.
package tflite
