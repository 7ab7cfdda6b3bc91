#!/usr/bin/env bash
# Prints the prefix holding the TensorFlow Lite C library and headers the build should use:
# $TFLITE_PREFIX when set; else a system install (/usr/local, /usr) that has both the
# library and the headers go-tflite needs; else the project's .deps/, installed on demand.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
has() { [ -e "$1/lib/libtensorflowlite_c.so" ] && [ -e "$1/include/tensorflow/lite/c/c_api_experimental.h" ] && [ -e "$1/lib/libexternal_delegate_obj.so" ]; }
if [ -n "${TFLITE_PREFIX:-}" ]; then
  has "$TFLITE_PREFIX" || "$here/scripts/install-tflite.sh" >&2
  echo "$TFLITE_PREFIX"; exit 0
fi
for p in /usr/local /usr; do
  if has "$p"; then echo "$p"; exit 0; fi
done
"$here/scripts/install-tflite.sh" >&2
echo "$here/.deps"
