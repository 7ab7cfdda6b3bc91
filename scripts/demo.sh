#!/usr/bin/env bash
# make demo: runs bin/edge-agent for a few seconds on four sensors and four real models:
#   - a synthetic phase sweep into the sin(x) model (regression),
#   - iris.csv replayed into the iris classifier (classification with labels),
#   - a folder of ten handwritten digits into the MNIST classifier (image pipeline),
#   - a street photo into the quantised SSD MobileNet detector (COCO labels).
# Every model and input comes from the repository's testdata/ (testdata/README.md); the config
# is written to .demo/ so the paths are absolute. Each part must produce results: a part that
# produced none fails the demo with the reason, never silently.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
secs=${DEMO_SECONDS:-8}
td=$here/testdata
fail() { echo "demo: $*" >&2; exit 1; }

for f in sin_model.tflite iris.tflite iris.csv mnist_model.tflite ssd_mobilenet_detect.tflite ssd_labelmap.txt ssd_example.jpg; do
  [ -f "$td/$f" ] || fail "$td/$f is missing: it is part of the repository (git checkout -- testdata)"
done
[ -x bin/edge-agent ] || fail "bin/edge-agent is missing: run make build (make demo does)"

rm -rf .demo
mkdir -p .demo/digits
digits=0
for f in "$td"/mnist_digit_?.png; do cp "$f" .demo/digits/; digits=$((digits + 1)); done
[ "$digits" -eq 10 ] || fail "found $digits digit pictures in $td; want mnist_digit_0.png .. mnist_digit_9.png"
sed -e "s#@TESTDATA@#$td#g" -e "s#@DEMO@#$here/.demo#g" examples/demo.yaml > .demo/config.yaml

echo "== edge-agent demo: ${secs}s with .demo/config.yaml (results are JSON lines on stdout) =="
set +e
timeout -s INT "$secs" ./bin/edge-agent run --config .demo/config.yaml > .demo/results.jsonl 2> .demo/agent.log
rc=$?
set -e
# 124: timeout stopped it with SIGINT, as planned; 0: it stopped by itself on SIGINT.
if [ $rc -ne 0 ] && [ $rc -ne 124 ]; then cat .demo/agent.log >&2; fail "edge-agent exited with $rc (its log is above)"; fi
echo "-- agent log (stderr), first lines --"
grep -v "XNNPACK delegate for CPU" .demo/agent.log | head -12

# results MODEL: that model's result lines.
results() { grep "\"model\":\"$1\"" .demo/results.jsonl || true; }
for m in sin iris mnist ssd; do
  if [ -z "$(results "$m")" ]; then
    echo "-- agent log --" >&2; cat .demo/agent.log >&2
    fail "model $m produced no result in ${secs}s (its errors, if any, are in the log above; DEMO_SECONDS=20 gives it longer)"
  fi
done

echo "-- sin(x) regression, first results --"
results sin | head -2
echo "-- iris classification, first results --"
results iris | head -2

echo "-- MNIST: each digit picture and the model's answer (top class, score) --"
right=0
for d in 0 1 2 3 4 5 6 7 8 9; do
  line=$(results mnist | grep -m1 "mnist_digit_$d.png\"" || true)
  [ -n "$line" ] || fail "mnist_digit_$d.png was not classified in ${secs}s (DEMO_SECONDS=20 gives it longer)"
  label=$(sed -E 's/.*"classes":\[\{"index":([0-9]+),"label":"([^"]*)","score":([^,}]*).*/\2 (class \1, score \3)/' <<<"$line")
  idx=$(sed -E 's/.*"classes":\[\{"index":([0-9]+).*/\1/' <<<"$line")
  [ "$idx" = "$d" ] && right=$((right + 1))
  printf '  mnist_digit_%d.png  ->  %s\n' "$d" "$label"
done
echo "  $right of 10 read correctly (testdata/README.md: 9 of 10 expected, the 4 reads as a 5)"
[ "$right" -ge 9 ] || fail "only $right of 10 digits read correctly; the image pipeline or the model is broken"

echo "-- SSD MobileNet on ssd_example.jpg: detections with score >= 0.5 (label, score, box ymin,xmin,ymax,xmax) --"
line=$(results ssd | head -1)
num='[-0-9.e]+'
dets=$(grep -oE "\{\"class\":[0-9]+,\"label\":\"[^\"]*\",\"score\":$num,\"box\":\{\"ymin\":$num,\"xmin\":$num,\"ymax\":$num,\"xmax\":$num\}" <<<"$line" \
  | sed -E 's/.*"label":"([^"]*)","score":([^,]*),"box":\{"ymin":([^,]*),"xmin":([^,]*),"ymax":([^,]*),"xmax":([^}]*)\}/\1 \2 \3 \4 \5 \6/' \
  | awk '{ printf "  %-10s %.2f  [%.2f %.2f %.2f %.2f]\n", $1, $2, $3, $4, $5, $6 }' || true)
[ -n "$dets" ] || fail "the SSD model found nothing on ssd_example.jpg; its result was: $line"
echo "$dets"
grep -q '"label":"person"' <<<"$line" || fail "no person detected on ssd_example.jpg; its result was: $line"

echo "-- $(wc -l < .demo/results.jsonl) results in ${secs}s; all of them in .demo/results.jsonl --"
echo "Drop another PNG into .demo/digits while the agent runs (./bin/edge-agent run --config .demo/config.yaml) and it is classified too."
