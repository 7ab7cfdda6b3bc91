#!/usr/bin/env bash
# make bench: speed and memory figures, each against a baseline measured in the same run.
#  1. Per model (mnist, SSD, text_classification): the full pipeline (preprocess + invoke +
#     postprocess) vs a bare go-tflite loop on the same decoded frame; rates and ratio, and
#     the source's decode time apart.
#  1b. Model versions: 20 swaps between two installed versions while the sin model serves at
#     1,000 frames/s (failed inferences, p99 during swaps vs steady state), and the time from a
#     verified SSD bundle on disk to serving it.
#  2. Preprocess and postprocess micro-benchmarks (time and allocations).
#  3. Peak RSS (VmHWM) of `edge-agent run` serving the SSD model on a looping camera file,
#     against the same binary with no model loaded.
#  4. Outbox: durable appends (group commit) from 64 writers vs a raw bbolt Batch baseline,
#     interleaved in the same run.
#  4b. Outbox open after a crash (meta and size checks, every page read under a fault guard)
#     vs a raw bbolt open + ForEach of the same 1,000,000-record file; and its salvage time.
#  5. A backlog of BACKLOG (1,000,000) results: RSS of the agent holding it offline, then the
#     drain to a local Mosquitto at QoS 1 vs a raw paho publish loop of the same envelopes.
#  6. Fleet simulation: `edgectl simulate --devices SIM_DEVICES (1,000) --deploy --duration 20s`
#     against a dedicated Mosquitto: time to connect all, deploy accepted/done by all, results
#     rate held, peak RSS of edgectl and Mosquitto, vs as many raw paho clients answering once.
#  7. Drift monitor: pipeline throughput with and without the monitor (mnist, sin; real
#     TFLite, XNNPACK, 1 thread; interleaved blocks, medians of the per-pair ratios, wall clock
#     and thread CPU time), and the monitor's own cost per frame (go test -bench Observe).
#  8. Predict API: 4 HTTP clients vs 4 goroutines calling pipeline.Process (mnist tensor/PNG, SSD
#     JPEG): ratio, p99, CPU per request.
#  9. Release binary sizes: stripped (-s -w, what make cross and make deb ship) vs with symbols.
# Results go to stdout and .bench/; record them in docs/benchmarks.md with machine and date.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
prefix=$(scripts/tflite-prefix.sh)
export CGO_ENABLED=1 CGO_CFLAGS="-I$prefix/include" CGO_LDFLAGS="-L$prefix/lib -Wl,-rpath,$prefix/lib"
out=.bench
mkdir -p "$out"
td=$here/testdata
[ -f "$td/ssd_mobilenet_detect.tflite" ] || { echo "bench: $td/ssd_mobilenet_detect.tflite is missing: it is part of the repository (git checkout -- testdata)" >&2; exit 1; }

echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(date -u +%Y-%m-%d) =="
echo "== 1. pipeline vs bare go-tflite invoke (same decoded frame, interleaved, XNNPACK, 2 threads) =="
go test -run '^$' -bench PipelineVsBareInvoke -benchtime "${BENCHTIME:-5s}" -count 1 ./agent/infer/tflite 2>/dev/null \
  | grep -E '^Benchmark' | tee "$out/pipeline.txt" \
  | awk '{ for (i=3;i<=NF;i+=2) v[$(i+1)]=$i;
           printf "%-40s bare %9.1f/s  pipeline %9.1f/s  ratio %.3f  decode %s µs\n", $1, v["bare/s"], v["pipeline/s"], v["ratio"], v["decode-µs"] }'

echo "== 1b. model versions: swapping under load, and bundle-to-serving time =="
go test -run '^$' -bench 'SwapUnderLoad|SSDSwapTime' -benchtime 1x -count 1 ./agent 2>/dev/null | grep -E '^Benchmark' | tee "$out/deploy.txt"
go test -run '^$' -bench 'SSDSwapTime' -benchtime 10x -count 1 ./agent 2>/dev/null | grep -E '^Benchmark' | tee -a "$out/deploy.txt"

echo "== 2. preprocess / postprocess =="
go test -run '^$' -bench . -benchmem -count 1 ./agent/preprocess ./agent/postprocess 2>/dev/null | grep -E '^Benchmark' | tee "$out/stages.txt"

echo "== 3. peak RSS of edge-agent run =="
cat > "$out/ssd.yaml" <<YAML
device: bench
state_dir: $PWD/$out/state
stdout: false
log: {level: warn}
sources:
  - {name: cam, kind: file, rate: 10, file: {path: $td/ssd_example.jpg, loop: true}}
models:
  - name: ssd
    path: $td/ssd_mobilenet_detect.tflite
    sources: [cam]
    input: {image: {mean: [127.5], std: [127.5]}}
    output: {kind: detection, labels_file: $td/ssd_labelmap.txt, label_offset: 1}
YAML
cat > "$out/idle.yaml" <<YAML
device: bench
state_dir: $PWD/$out/state
stdout: false
log: {level: warn}
sources:
  - {name: cam, kind: file, rate: 10, file: {path: $td/ssd_example.jpg, loop: true}}
YAML
peak() { # config seconds → peak RSS in kB
  ./bin/edge-agent run --config "$1" >/dev/null 2>"$out/$(basename "$1" .yaml).log" &
  local pid=$!
  sleep "$2"
  local hwm; hwm=$(awk '/VmHWM/ {print $2}' /proc/$pid/status)
  kill -TERM $pid; wait $pid || true
  echo "$hwm"
}
secs=${RSS_SECONDS:-15}
idle=$(peak "$out/idle.yaml" "$secs")
ssd=$(peak "$out/ssd.yaml" "$secs")
awk -v i="$idle" -v s="$ssd" -v secs="$secs" 'BEGIN {
  printf "idle agent (camera source, no model)  peak RSS %6.1f MB\n", i/1024
  printf "agent serving SSD (%s s, 10 frames/s)  peak RSS %6.1f MB  (goal <= 60 MB; %.2fx idle)\n", secs, s/1024, s/i
}' | tee "$out/rss.txt"

echo "== 4. outbox: durable append with group commit vs raw bbolt Batch (64 writers, 200-byte records) =="
go test -run '^$' -bench DurableAppend -benchtime 200000x -count 1 ./agent/outbox 2>/dev/null | grep -E '^Benchmark' | tee "$out/outbox.txt" \
  | awk '{ for (i=3;i<=NF;i+=2) v[$(i+1)]=$i;
           printf "baseline %9.0f/s  outbox %9.0f/s  ratio %.3f  (records per commit: baseline %.1f, outbox %.1f; goal >= 50000/s and >= 0.8)\n", v["baseline/s"], v["outbox/s"], v["ratio"], v["baseline_recs/commit"], v["outbox_recs/commit"] }'

echo "== 4b. outbox: open after a crash with the page walk, and salvage, vs a raw bbolt open + read (1,000,000 records) =="
go test -run '^$' -bench OpenMillion -benchtime 3x -count 1 ./agent/outbox 2>/dev/null | grep -E '^Benchmark' | tee "$out/open.txt" \
  | awk '{ for (i=3;i<=NF;i+=2) v[$(i+1)]=$i;
           printf "bbolt open+read %7.1f ms  outbox open %7.1f ms  ratio %.3f  salvage %7.0f ms (%.0f MB allocated in all)\n", v["ms/bbolt-read"], v["ms/open"], v["ratio"], v["ms/salvage"], v["MB-allocated/salvage"] }'

echo "== 5. backlog of ${BACKLOG:-1000000} results: RSS while buffered, drain to Mosquitto vs raw paho =="
BACKLOG=${BACKLOG:-1000000} go test -run '^$' -bench BacklogDrain -benchtime 1x -timeout 30m ./cmd/edge-agent 2>/dev/null | grep -E '^Benchmark' | tee "$out/backlog.txt" \
  | awk '{ for (i=3;i<=NF;i+=2) v[$(i+1)]=$i;
           printf "fill %8.0f/s  drain: agent %8.0f/s  raw paho %8.0f/s  ratio %.3f (goal >= 100000/s)\nRSS with the backlog buffered %.1f MB (goal <= 60 MB), peak during the drain %.1f MB, file %.0f MB\n", v["fill/s"], v["agent/s"], v["raw-paho/s"], v["ratio"], v["rss-buffered-MB"], v["peak-rss-MB"], v["file-MB"] }'

echo "== 6. fleet simulation: ${SIM_DEVICES:-1000} simulated devices (real link + command router) vs raw paho clients =="
sim_devices=${SIM_DEVICES:-1000}
# One socket per device in edgectl and in Mosquitto (which inherits this shell's limit).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt $((sim_devices + 100)) ]; then
  echo "bench: ulimit -n is $(ulimit -n); $sim_devices devices need at least $((sim_devices + 100)): raise it" >&2; exit 1
fi
SIM_DEVICES=$sim_devices go test -run '^$' -bench 'Simulate$' -benchtime 1x -count 1 -timeout 15m ./cmd/edgectl 2>/dev/null | grep -E '^Benchmark' | tee "$out/simulate.txt" \
  | awk '{ for (i=3;i<=NF;i+=2) v[$(i+1)]=$i;
           printf "%d devices online after %.2f s   raw paho connect+subscribe %.2f s   ratio %.1f\n", v["devices"], v["connect-s"], v["raw-connect-s"], v["connect-ratio"]
           printf "group deploy accepted by all after %.2f s (goal <= 10 s)   raw paho answer %.2f s   ratio %.1f   done by all after %.2f s\n", v["ack-s"], v["raw-answer-s"], v["ack-ratio"], v["done-s"]
           printf "telemetry received %.0f results/s of %.0f offered (held %.3f)\n", v["received/s"], v["offered/s"], v["held"]
           printf "peak RSS: edgectl simulate %.1f MB, Mosquitto %.1f MB (raw clients process %.1f MB)\n", v["sim-rss-MB"], v["mosquitto-rss-MB"], v["raw-rss-MB"] }'

echo "== 7. drift monitor: pipeline with vs without it (same run, interleaved), and its cost per frame =="
go test -run '^$' -bench DriftOverhead -benchtime "${BENCHTIME:-5s}" -count 1 ./agent 2>/dev/null \
  | grep -E '^Benchmark' | tee "$out/drift.txt" \
  | awk '{ for (i=3;i<=NF;i+=2) v[$(i+1)]=$i;
           printf "%-34s plain %9.0f/s  monitored %9.0f/s  ratio %.3f  cpu-ratio %.3f (goal >= 0.97)  monitor %5.0f ns/frame  allocs/frame %d vs %d\n",
             $1, v["plain/s"], v["monitored/s"], v["ratio"], v["cpu-ratio"], v["drift-cpu-ns/frame"], v["allocs/plain-frame"], v["allocs/monitored-frame"] }'
go test -run '^$' -bench Observe -benchmem -count 1 ./agent/drift 2>/dev/null | grep -E '^Benchmark' | tee -a "$out/drift.txt"

echo "== 8. predict API: 4 concurrent HTTP clients vs as many goroutines calling pipeline.Process (same input, interleaved) =="
go test -run '^$' -bench 'PredictAPI' -benchtime "${BENCHTIME:-5s}" -count 1 ./agent/status 2>/dev/null | grep -E '^Benchmark' | tee "$out/predict.txt" \
  | awk '{ for (i=3;i<=NF;i+=2) v[$(i+1)]=$i;
           printf "%-34s direct %8.1f/s  api %8.1f/s  ratio %.3f (goal >= 0.8 for mnist)  p99 direct %7.2f ms  api %7.2f ms  cpu/request direct %6.0f µs  api %6.0f µs\n", $1, v["direct/s"], v["api/s"], v["ratio"], v["direct-p99-ms"], v["api-p99-ms"], v["direct-cpu-µs"], v["api-cpu-µs"] }'
go test -run '^$' -bench 'DecodeMnistInstance' -benchmem -count 1 ./agent/status 2>/dev/null | grep -E '^Benchmark' | tee -a "$out/predict.txt"

echo "== 9. release binary sizes: stripped (make cross: -trimpath -s -w) vs with symbols (STRIP=0), same sources, same run =="
for s in 0 1; do
  STRIP=$s GO_LDFLAGS="-X github.com/edge-agent/edge-agent/agent.Version=bench" cross/build.sh -o "$out/size-$s" amd64 arm64 >/dev/null
done
for arch in amd64 arm64; do
  for cmd in edge-agent edgectl; do
    a=$(stat -c %s "$out/size-0/linux-$arch/$cmd"); b=$(stat -c %s "$out/size-1/linux-$arch/$cmd")
    awk -v n="$arch/$cmd" -v a="$a" -v b="$b" 'BEGIN { printf "%-20s with symbols %6.1f MB  stripped %6.1f MB  ratio %.3f\n", n, a/1e6, b/1e6, b/a }'
  done
done | tee "$out/sizes.txt"
