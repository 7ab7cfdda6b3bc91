//go:build cgo

package status_test

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"

	"github.com/edge-agent/edge-agent/agent"
	"github.com/edge-agent/edge-agent/agent/health"
	"github.com/edge-agent/edge-agent/internal/testenv"
)

// digitsDir copies the ten shared MNIST digits into a folder for a file source.
func digitsDir(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	for d := range 10 {
		name := fmt.Sprintf("mnist_digit_%d.png", d)
		b, err := os.ReadFile(testenv.Data(t, name))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// /metrics, read with the Prometheus text parser, carries the agent's own figures: ten
// pictures in a folder make exactly ten results, ten frames, ten stored results waiting
// offline; three predict requests (one refused) are counted by code and are not results.
func TestMetricsKnownCounts(t *testing.T) {
	testenv.NoGoroutineLeaks(t)
	r := startAgent(t, `
device: metrics-1
sources:
  - {name: digits, kind: file, queue: 16, file: {path: `+digitsDir(t)+`, poll: 50ms}}
models:`+strings.Replace(mnistModel, "workers: 2", "workers: 2\n    sources: [digits]\n    queue: 16", 1))
	eventually(t, "10 mnist results in /metrics", func() bool {
		v, _ := metric(r.scrape(t), "edge_agent_model_results_total", "model=mnist")
		return v == 10
	})
	zeros := "[" + strings.TrimSuffix(strings.Repeat("0,", 784), ",") + "]"
	for _, body := range []string{`{"instances": [` + zeros + `,` + zeros + `]}`, `{"instances": [` + zeros + `]}`, `{"instances": [[1]]}`} {
		r.post(t, "/v1/models/mnist:predict", body, nil)
	}
	mfs := r.scrape(t)
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"edge_agent_model_results_total", []string{"model=mnist"}, 10},
		{"edge_agent_source_frames_total", []string{"source=digits", "kind=file"}, 10},
		{"edge_agent_source_dropped_total", []string{"source=digits"}, 0},
		{"edge_agent_model_dropped_total", []string{"model=mnist"}, 0},
		{"edge_agent_model_errors_total", []string{"model=mnist", "kind=preprocess"}, 0},
		{"edge_agent_model_errors_total", []string{"model=mnist", "kind=infer"}, 0},
		{"edge_agent_model_info", []string{"model=mnist", "version=0", "delegate=xnnpack"}, 1},
		{"edge_agent_outbox_appended_total", []string{"stream=results"}, 10},
		{"edge_agent_outbox_records", []string{"stream=results"}, 10},
		{"edge_agent_outbox_acked_total", []string{"stream=results"}, 0},
		{"edge_agent_outbox_dropped_total", []string{"stream=results", "cause=oldest"}, 0},
		{"edge_agent_outbox_cap_records", []string{"stream=results"}, 1_000_000},
		{"edge_agent_mqtt_connected", nil, 0},
		{"edge_agent_mqtt_state", []string{"state=offline-mode"}, 1},
		{"edge_agent_predict_requests_total", []string{"code=200"}, 2},
		{"edge_agent_predict_requests_total", []string{"code=400"}, 1},
		{"edge_agent_predict_instances_total", nil, 3},
		{"edge_agent_ready", nil, 1},
		{"edge_agent_build_info", []string{"version=" + agent.Version, "engine=tflite 2.9.0"}, 1},
		{"edge_agent_device_info", []string{"device=metrics-1"}, 1},
	} {
		if got := mustMetric(t, mfs, c.name, c.labels...); got != c.want {
			t.Errorf("%s%v = %v; want %v", c.name, c.labels, got, c.want)
		}
	}
	bySev := map[string]float64{}
	for _, c := range r.a.Health().List() {
		bySev[c.Severity.String()]++
	}
	for _, sev := range []health.Severity{health.Info, health.Warning, health.Error} {
		if got := mustMetric(t, mfs, "edge_agent_health_conditions", "severity="+sev.String()); got != bySev[sev.String()] {
			t.Errorf("edge_agent_health_conditions{severity=%s} = %v; the agent has %v", sev, got, bySev[sev.String()])
		}
	}
	if p50 := mustMetric(t, mfs, "edge_agent_model_latency_recent_seconds", "model=mnist", "quantile=0.5"); p50 <= 0 || p50 > 1 {
		t.Errorf("mnist p50 latency %v s; want within (0, 1]", p50)
	}
	// The histogram: as many observations as results, cumulative buckets ending at the count.
	var hist *dto.Histogram
	for _, m := range mfs["edge_agent_model_latency_seconds"].GetMetric() {
		if m.GetLabel()[0].GetValue() == "mnist" {
			hist = m.GetHistogram()
		}
	}
	results := mustMetric(t, mfs, "edge_agent_model_results_total", "model=mnist")
	if hist == nil || float64(hist.GetSampleCount()) < results || hist.GetSampleSum() <= 0 || len(hist.GetBucket()) != 14 ||
		hist.GetBucket()[13].GetCumulativeCount() != hist.GetSampleCount() || hist.GetBucket()[0].GetCumulativeCount() > hist.GetBucket()[12].GetCumulativeCount() {
		t.Errorf("latency histogram %v for %v results; want a count of every inference in 13 cumulative buckets and +Inf", hist, results)
	}
	if up := mustMetric(t, mfs, "edge_agent_uptime_seconds"); up <= 0 {
		t.Errorf("uptime %v; want > 0", up)
	}
	for _, name := range []string{"go_goroutines", "process_resident_memory_bytes"} {
		if _, ok := mfs[name]; !ok {
			t.Errorf("/metrics lacks %s (Go and process collectors)", name)
		}
	}
}

// With a real broker, /metrics follows the link: online, every result acknowledged and
// none waiting; when the broker stops, the link's state and the waiting results show it.
func TestMetricsFollowTheBroker(t *testing.T) {
	testenv.NoGoroutineLeaks(t)
	broker := testenv.Mosquitto(t)
	r := startAgent(t, `
device: metrics-2
mqtt: {broker: `+broker.URL+`}
sources:
  - {name: digits, kind: file, queue: 16, file: {path: `+digitsDir(t)+`, poll: 50ms}}
models:`+strings.Replace(mnistModel, "workers: 2", "workers: 2\n    sources: [digits]\n    queue: 16", 1))
	eventually(t, "10 results acknowledged by the broker", func() bool {
		mfs := r.scrape(t)
		acked, _ := metric(mfs, "edge_agent_outbox_acked_total", "stream=results")
		waiting, _ := metric(mfs, "edge_agent_outbox_records", "stream=results")
		return acked == 10 && waiting == 0
	})
	mfs := r.scrape(t)
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"edge_agent_mqtt_connected", nil, 1},
		{"edge_agent_mqtt_state", []string{"state=online"}, 1},
		{"edge_agent_mqtt_connects_total", nil, 1},
		{"edge_agent_mqtt_records_total", []string{"stream=results"}, 10},
		{"edge_agent_mqtt_resent_total", []string{"stream=results"}, 0},
		{"edge_agent_outbox_oldest_age_seconds", []string{"stream=results"}, 0},
	} {
		if got := mustMetric(t, mfs, c.name, c.labels...); got != c.want {
			t.Errorf("%s%v = %v; want %v", c.name, c.labels, got, c.want)
		}
	}
	broker.Stop()
	eventually(t, "the link to be reported down", func() bool {
		v, _ := metric(r.scrape(t), "edge_agent_mqtt_connected")
		return v == 0
	})
	code, body := r.call(t, http.MethodGet, "/v1/status", nil)
	if code != http.StatusOK || !strings.Contains(string(body), `"mqtt":{"state":"`) || strings.Contains(string(body), `"state":"online"`) {
		t.Errorf("/v1/status after the broker stopped: %d %s", code, body)
	}
}
