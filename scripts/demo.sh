#!/usr/bin/env bash
# make demo: runs bin/edge-agent for a few seconds on three sensors and three real models:
#   - a synthetic phase sweep into the sin(x) model (regression),
#   - iris.csv replayed into the iris classifier (classification with labels),
#   - a folder of handwritten digits into the MNIST classifier (image pipeline).
# The models come with the pinned go-tflite module (downloaded through the Go module proxy)
# and ../shared/testdata; the config is written to .demo/ so the paths are absolute.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
secs=${DEMO_SECONDS:-6}
gotflite=$(go mod download -json github.com/mattn/go-tflite@v1.0.5 | sed -n 's/.*"Dir": "\(.*\)",*/\1/p')
shared=$(cd "$here/.." && pwd)/shared/testdata
mkdir -p .demo/digits
if [ -d "$shared" ]; then cp "$shared"/mnist_digit_*.png .demo/digits/; fi
sed -e "s#@GOTFLITE@#$gotflite#g" -e "s#@SHARED@#$shared#g" -e "s#@DEMO@#$here/.demo#g" \
  examples/demo.yaml > .demo/config.yaml
if [ ! -d "$shared" ]; then
  # Without the shared test data, keep the two models that ship with go-tflite.
  sed -i '/# mnist-begin/,/# mnist-end/d' .demo/config.yaml
fi
echo "== edge-agent demo: ${secs}s with .demo/config.yaml (results are JSON lines on stdout) =="
set +e
timeout -s INT "$secs" ./bin/edge-agent run --config .demo/config.yaml > .demo/results.jsonl 2> .demo/agent.log
rc=$?
set -e
if [ $rc -ne 0 ] && [ $rc -ne 124 ]; then cat .demo/agent.log; echo "demo: edge-agent exited with $rc" >&2; exit $rc; fi
echo "-- agent log (stderr) --"
grep -v "XNNPACK delegate for CPU" .demo/agent.log | head -20
echo "-- first results per model --"
for m in sin iris mnist; do grep -m 3 "\"model\":\"$m\"" .demo/results.jsonl || true; done
echo "-- $(wc -l < .demo/results.jsonl) results in ${secs}s; all of them in .demo/results.jsonl --"
