/*
 * edge-agent's own declarations of the experimental TensorFlow Lite C API functions that
 * libtensorflowlite_c.so (TF 2.9, from the npm package tfjs-tflite-node@0.0.2) exports.
 *
 * The npm package ships c_api.h, c_api_types.h and common.h but not this header, which
 * github.com/mattn/go-tflite includes. Written for edge-agent from the exported symbol list
 * (nm -D) and the documented C API; it declares only what the library exports.
 */
#ifndef EDGE_AGENT_TFLITE_C_API_EXPERIMENTAL_H
#define EDGE_AGENT_TFLITE_C_API_EXPERIMENTAL_H

#include <stdbool.h>
#include <stdint.h>

#include "tensorflow/lite/c/c_api.h"
#include "tensorflow/lite/c/common.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The builtin operator code of the flatbuffer schema. The library takes it as a C enum,
 * which has the size and passing convention of int on every ABI we target. */
#ifndef TENSORFLOW_LITE_BUILTIN_OPS_H_
typedef int TfLiteBuiltinOperator;
#endif

/* Sets every variable tensor of the interpreter back to zero. */
TFL_CAPI_EXPORT extern TfLiteStatus TfLiteInterpreterResetVariableTensors(
    TfLiteInterpreter* interpreter);

/* Registers a kernel for a builtin operator code, for versions min..max. The registration
 * is copied shallowly: its function pointers must stay valid while interpreters live. */
TFL_CAPI_EXPORT extern void TfLiteInterpreterOptionsAddBuiltinOp(
    TfLiteInterpreterOptions* options, TfLiteBuiltinOperator op,
    const TfLiteRegistration* registration, int32_t min_version, int32_t max_version);

/* Registers a kernel for a custom operator by name, for versions min..max. */
TFL_CAPI_EXPORT extern void TfLiteInterpreterOptionsAddCustomOp(
    TfLiteInterpreterOptions* options, const char* name,
    const TfLiteRegistration* registration, int32_t min_version, int32_t max_version);

/* Replaces the op lookup with two callbacks (builtin by code, custom by name). Not to be
 * combined with the two Add*Op functions on the same options. */
TFL_CAPI_EXPORT extern void TfLiteInterpreterOptionsSetOpResolver(
    TfLiteInterpreterOptions* options,
    const TfLiteRegistration* (*find_builtin_op)(void* user_data, TfLiteBuiltinOperator op,
                                                 int version),
    const TfLiteRegistration* (*find_custom_op)(void* user_data, const char* custom_op,
                                                int version),
    void* op_resolver_user_data);

/* Like TfLiteInterpreterCreate, but only the ops registered on the options are available. */
TFL_CAPI_EXPORT extern TfLiteInterpreter* TfLiteInterpreterCreateWithSelectedOps(
    const TfLiteModel* model, const TfLiteInterpreterOptions* options);

/* Android NNAPI on or off (a no-op on Linux builds). */
TFL_CAPI_EXPORT extern void TfLiteInterpreterOptionsSetUseNNAPI(
    TfLiteInterpreterOptions* options, bool enable);

/* When true, a delegate that fails to apply is undone and the CPU kernels are used. */
TFL_CAPI_EXPORT extern void TfLiteInterpreterOptionsSetEnableDelegateFallback(
    TfLiteInterpreterOptions* options, bool enable);

/* Allows outputs that live in delegate buffer handles instead of CPU memory. */
TFL_CAPI_EXPORT extern void TfLiteSetAllowBufferHandleOutput(
    const TfLiteInterpreter* interpreter, bool allow_buffer_handle_output);

/* Applies a delegate to an interpreter after it was built. */
TFL_CAPI_EXPORT extern TfLiteStatus TfLiteInterpreterModifyGraphWithDelegate(
    const TfLiteInterpreter* interpreter, TfLiteDelegate* delegate);

/* The tensor index (in the interpreter's tensor table) of the Nth input / output. */
TFL_CAPI_EXPORT extern int32_t TfLiteInterpreterGetInputTensorIndex(
    const TfLiteInterpreter* interpreter, int32_t input_index);
TFL_CAPI_EXPORT extern int32_t TfLiteInterpreterGetOutputTensorIndex(
    const TfLiteInterpreter* interpreter, int32_t output_index);

#ifdef __cplusplus
}
#endif

#endif /* EDGE_AGENT_TFLITE_C_API_EXPERIMENTAL_H */
