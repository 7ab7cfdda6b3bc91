package status

import (
	"net/http"
	"runtime"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/edge-agent/edge-agent/agent/health"
	"github.com/edge-agent/edge-agent/agent/pipeline"
)

// metrics is the server's private Prometheus registry: a collector that reads the agent's
// own counters at scrape time (nothing is counted twice), the Go and process collectors,
// and the few counters that belong to this server (predict requests, live streams).
type metrics struct {
	reg *prometheus.Registry

	predictRequests  *prometheus.CounterVec
	predictInstances prometheus.Counter
	predictInflight  prometheus.Gauge
	predictReading   prometheus.Gauge
	streams          prometheus.Gauge
	streamsRefused   prometheus.Counter
}

func newMetrics(s *Server) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		predictRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edge_agent_predict_requests_total",
			Help: "Predict API requests by HTTP status code.",
		}, []string{"code"}),
		predictInstances: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "edge_agent_predict_instances_total",
			Help: "Instances the predict API ran through a model.",
		}),
		predictInflight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "edge_agent_predict_inflight",
			Help: "Predict API requests being served now.",
		}),
		predictReading: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "edge_agent_predict_reading",
			Help: "Predict API requests whose body is still being received.",
		}),
		streams: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "edge_agent_status_streams",
			Help: "Live status streams (open status pages) now.",
		}),
		streamsRefused: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "edge_agent_status_streams_refused_total",
			Help: "Live status streams refused because the maximum was open.",
		}),
	}
	m.reg.MustRegister(newCollector(s), m.predictRequests, m.predictInstances, m.predictInflight, m.predictReading, m.streams, m.streamsRefused,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

func (m *metrics) handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{
		ErrorHandling:       promhttp.ContinueOnError,
		MaxRequestsInFlight: 4,
		Timeout:             10 * time.Second,
	})
}

// collector turns a Snapshot into metrics at each scrape.
type collector struct {
	s *Server
	d map[string]*prometheus.Desc
}

// metricDefs are the collector's metrics: name → help and variable labels.
func metricDefs() map[string]struct {
	help   string
	labels []string
} {
	type def = struct {
		help   string
		labels []string
	}
	return map[string]def{
		"edge_agent_build_info":                   {"The agent's version, Go version and inference engine (value 1).", []string{"version", "goversion", "engine"}},
		"edge_agent_device_info":                  {"The device's id, board and accelerators (value 1).", []string{"device", "board", "hardware"}},
		"edge_agent_start_time_seconds":           {"When the agent started, in Unix seconds.", nil},
		"edge_agent_uptime_seconds":               {"Seconds since the agent started.", nil},
		"edge_agent_ready":                        {"1 when a model serves and the outbox accepts results (/readyz), else 0.", nil},
		"edge_agent_model_info":                   {"A model's serving version and delegate (value 1).", []string{"model", "version", "delegate"}},
		"edge_agent_model_delegate_fallback":      {"1 when the model does not run on the delegate it asked for (the reason is on the status page).", []string{"model"}},
		"edge_agent_model_results_total":          {"Results a model produced from its sources.", []string{"model"}},
		"edge_agent_model_errors_total":           {"Failed frames by the stage that failed.", []string{"model", "kind"}},
		"edge_agent_model_non_finite_total":       {"Outputs that held NaN or Inf.", []string{"model"}},
		"edge_agent_model_dropped_total":          {"Frames dropped by the model's full queue.", []string{"model"}},
		"edge_agent_model_queue_depth":            {"Frames waiting for the model now.", []string{"model"}},
		"edge_agent_model_latency_seconds":        {"Latency (preprocess to postprocess) of every inference since start.", []string{"model"}},
		"edge_agent_model_latency_recent_seconds": {"Latency (preprocess to postprocess) over the model's last 256 inferences, by quantile.", []string{"model", "quantile"}},
		"edge_agent_experiment_weight":            {"A running A/B (split) or shadow experiment's candidate share (0 for shadow).", []string{"model", "mode", "candidate_version"}},
		"edge_agent_experiment_results_total":     {"Results per experiment variant (a: serving, b: candidate).", []string{"model", "variant"}},
		"edge_agent_experiment_errors_total":      {"Failed frames per experiment variant.", []string{"model", "variant"}},
		"edge_agent_experiment_top1_agreement":    {"Shadow experiment: share of frames where both variants agree on the top class.", []string{"model"}},
		"edge_agent_experiment_mean_abs_diff":     {"Shadow experiment: mean absolute difference of the two variants' outputs.", []string{"model"}},
		"edge_agent_source_frames_total":          {"Frames a source produced.", []string{"source", "kind"}},
		"edge_agent_source_errors_total":          {"A source's failed runs and skipped inputs.", []string{"source", "kind"}},
		"edge_agent_source_restarts_total":        {"Times a source was restarted after failing.", []string{"source", "kind"}},
		"edge_agent_source_dropped_total":         {"Frames dropped by a source's full queue.", []string{"source", "kind"}},
		"edge_agent_outbox_file_bytes":            {"Size of the outbox file.", nil},
		"edge_agent_outbox_commits_total":         {"Write transactions the outbox committed.", nil},
		"edge_agent_outbox_compactions_total":     {"Compactions of the outbox file.", nil},
		"edge_agent_outbox_records":               {"Records waiting in an outbox stream.", []string{"stream"}},
		"edge_agent_outbox_bytes":                 {"Payload bytes waiting in an outbox stream.", []string{"stream"}},
		"edge_agent_outbox_oldest_age_seconds":    {"Age of the oldest waiting record (0 when empty).", []string{"stream"}},
		"edge_agent_outbox_appended_total":        {"Records appended to a stream over the file's life.", []string{"stream"}},
		"edge_agent_outbox_acked_total":           {"Records the broker acknowledged, over the file's life.", []string{"stream"}},
		"edge_agent_outbox_dropped_total":         {"Records lost to the caps, by cause (oldest: evicted; newest: refused; age: expired).", []string{"stream", "cause"}},
		"edge_agent_outbox_refused_total":         {"Records the outbox could not store since start, by cause (no_space: a full disk; failed: another write error).", []string{"stream", "cause"}},
		"edge_agent_outbox_disk_full":             {"1 while the disk holding the outbox is full and new records are refused.", nil},
		"edge_agent_outbox_cap_records":           {"A stream's cap on waiting records.", []string{"stream"}},
		"edge_agent_outbox_cap_bytes":             {"A stream's cap on waiting payload bytes.", []string{"stream"}},
		"edge_agent_events_dropped_total":         {"Events the fleet's event queue could not take.", nil},
		"edge_agent_mqtt_connected":               {"1 while the link to the broker is online.", nil},
		"edge_agent_mqtt_state":                   {"The link's state (value 1 for the current one).", []string{"state"}},
		"edge_agent_mqtt_connects_total":          {"Connections to the broker that got online.", nil},
		"edge_agent_mqtt_connect_failures_total":  {"Connection attempts that failed.", nil},
		"edge_agent_mqtt_metrics_sent_total":      {"Telemetry messages sent.", nil},
		"edge_agent_mqtt_metrics_dropped_total":   {"Telemetry messages dropped (offline or behind).", nil},
		"edge_agent_mqtt_commands_total":          {"Messages received on the command topics.", nil},
		"edge_agent_mqtt_replies_sent_total":      {"Command replies sent.", nil},
		"edge_agent_mqtt_replies_dropped_total":   {"Command replies dropped because their queue was full.", nil},
		"edge_agent_commands_refused_total":       {"Commands refused before they ran: unsigned, forged, misaddressed, expired or malformed.", nil},
		"edge_agent_commands_suppressed_total":    {"Refused commands answered with nothing because refusals came faster than their rate limit.", nil},
		"edge_agent_mqtt_messages_total":          {"Messages of a stream the broker acknowledged.", []string{"stream"}},
		"edge_agent_mqtt_records_total":           {"Records of a stream sent in acknowledged messages (re-sent ones included).", []string{"stream"}},
		"edge_agent_mqtt_resent_total":            {"Records sent again after a reconnect (an upper bound of duplicates).", []string{"stream"}},
		"edge_agent_mqtt_in_flight":               {"Messages of a stream awaiting the broker's acknowledgement.", []string{"stream"}},
		"edge_agent_drift_score":                  {"A drift statistic's latest value.", []string{"model", "version", "feature", "statistic"}},
		"edge_agent_drift_threshold":              {"The value above which a drift statistic raises its alert.", []string{"model", "version", "feature", "statistic"}},
		"edge_agent_drift_alert":                  {"1 while a drift statistic's alert is raised.", []string{"model", "version", "feature", "statistic"}},
		"edge_agent_drift_windows_total":          {"Windows a drift statistic has evaluated.", []string{"model", "version", "feature", "statistic"}},
		"edge_agent_health_conditions":            {"Health conditions set now, by severity.", []string{"severity"}},
	}
}

func newCollector(s *Server) *collector {
	c := &collector{s: s, d: map[string]*prometheus.Desc{}}
	for name, def := range metricDefs() {
		c.d[name] = prometheus.NewDesc(name, def.help, def.labels, nil)
	}
	return c
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.d {
		ch <- d
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	snap := c.s.agent.Snapshot()
	now := c.s.now()
	emit := func(name string, t prometheus.ValueType, v float64, labels ...string) {
		m, err := prometheus.NewConstMetric(c.d[name], t, v, labels...)
		if err != nil {
			m = prometheus.NewInvalidMetric(c.d[name], err)
		}
		ch <- m
	}
	gauge := func(name string, v float64, labels ...string) { emit(name, prometheus.GaugeValue, v, labels...) }
	counter := func(name string, v float64, labels ...string) { emit(name, prometheus.CounterValue, v, labels...) }

	gauge("edge_agent_build_info", 1, snap.Version, runtime.Version(), snap.Engine)
	gauge("edge_agent_device_info", 1, snap.Device, snap.Board, snap.Hardware)
	if !snap.Started.IsZero() {
		gauge("edge_agent_start_time_seconds", float64(snap.Started.UnixMilli())/1000)
		gauge("edge_agent_uptime_seconds", now.Sub(snap.Started).Seconds())
	}
	gauge("edge_agent_ready", b2f(c.s.agent.Ready() == nil))

	for _, m := range snap.Models {
		if m.Version != "" {
			gauge("edge_agent_model_info", 1, m.Name, m.Version, m.Delegate)
		}
		gauge("edge_agent_model_delegate_fallback", b2f(m.Fallback != ""), m.Name)
		counter("edge_agent_model_results_total", float64(m.Results), m.Name)
		for kind, n := range map[string]uint64{"preprocess": m.PreErrors, "infer": m.InferErrors, "postprocess": m.PostErrors, "sink": m.SinkErrors, "no_version": m.NoVersion} {
			counter("edge_agent_model_errors_total", float64(n), m.Name, kind)
		}
		counter("edge_agent_model_non_finite_total", float64(m.NonFinite), m.Name)
		counter("edge_agent_model_dropped_total", float64(m.Dropped), m.Name)
		gauge("edge_agent_model_queue_depth", float64(m.QueueDepth), m.Name)
		for q, ms := range map[string]float64{"0.5": m.LatencyP50, "0.95": m.LatencyP95, "0.99": m.LatencyP99} {
			gauge("edge_agent_model_latency_recent_seconds", ms/1000, m.Name, q)
		}
		buckets, cum := make(map[float64]uint64, len(pipeline.LatencyBounds)), uint64(0)
		for i, b := range pipeline.LatencyBounds {
			cum += m.Latency.Buckets[i]
			buckets[b] = cum
		}
		if h, err := prometheus.NewConstHistogram(c.d["edge_agent_model_latency_seconds"], m.Latency.Count, m.Latency.SumSeconds, buckets, m.Name); err == nil {
			ch <- h
		} else {
			ch <- prometheus.NewInvalidMetric(c.d["edge_agent_model_latency_seconds"], err)
		}
		if x := m.Experiment; x != nil {
			gauge("edge_agent_experiment_weight", x.Weight, m.Name, x.Mode, x.CandidateVersion)
			counter("edge_agent_experiment_results_total", float64(x.A.Results), m.Name, "a")
			counter("edge_agent_experiment_results_total", float64(x.B.Results), m.Name, "b")
			counter("edge_agent_experiment_errors_total", float64(x.A.Errors), m.Name, "a")
			counter("edge_agent_experiment_errors_total", float64(x.B.Errors), m.Name, "b")
			if x.Mode == "shadow" {
				gauge("edge_agent_experiment_top1_agreement", x.Agreement, m.Name)
				gauge("edge_agent_experiment_mean_abs_diff", x.MeanAbsDiff, m.Name)
			}
		}
	}
	for _, src := range snap.Sources {
		counter("edge_agent_source_frames_total", float64(src.Frames), src.Name, src.Kind)
		counter("edge_agent_source_errors_total", float64(src.Errors), src.Name, src.Kind)
		counter("edge_agent_source_restarts_total", float64(src.Restarts), src.Name, src.Kind)
		counter("edge_agent_source_dropped_total", float64(src.Dropped), src.Name, src.Kind)
	}
	if o := snap.Outbox; o != nil {
		gauge("edge_agent_outbox_file_bytes", float64(o.FileBytes))
		counter("edge_agent_outbox_commits_total", float64(o.Commits))
		counter("edge_agent_outbox_compactions_total", float64(o.Compactions))
		gauge("edge_agent_outbox_disk_full", b2f(o.DiskFull))
		for _, st := range o.Streams {
			gauge("edge_agent_outbox_records", float64(st.Count), st.Name)
			gauge("edge_agent_outbox_bytes", float64(st.Bytes), st.Name)
			age := 0.0
			if !st.OldestTS.IsZero() {
				age = max(0, now.Sub(st.OldestTS).Seconds())
			}
			gauge("edge_agent_outbox_oldest_age_seconds", age, st.Name)
			counter("edge_agent_outbox_appended_total", float64(st.Appended), st.Name)
			counter("edge_agent_outbox_acked_total", float64(st.Acked), st.Name)
			counter("edge_agent_outbox_dropped_total", float64(st.DroppedOldest), st.Name, "oldest")
			counter("edge_agent_outbox_dropped_total", float64(st.DroppedNewest), st.Name, "newest")
			counter("edge_agent_outbox_dropped_total", float64(st.DroppedAge), st.Name, "age")
			counter("edge_agent_outbox_refused_total", float64(st.RefusedNoSpace), st.Name, "no_space")
			counter("edge_agent_outbox_refused_total", float64(st.RefusedFailed), st.Name, "failed")
			gauge("edge_agent_outbox_cap_records", float64(st.MaxCount), st.Name)
			gauge("edge_agent_outbox_cap_bytes", float64(st.MaxBytes), st.Name)
		}
		counter("edge_agent_events_dropped_total", float64(snap.EventsDropped))
	}
	if q := snap.MQTT; q != nil {
		gauge("edge_agent_mqtt_connected", b2f(q.State == "online"))
		gauge("edge_agent_mqtt_state", 1, q.State)
		counter("edge_agent_mqtt_connects_total", float64(q.Connects))
		counter("edge_agent_mqtt_connect_failures_total", float64(q.ConnectFailures))
		counter("edge_agent_mqtt_metrics_sent_total", float64(q.MetricsSent))
		counter("edge_agent_mqtt_metrics_dropped_total", float64(q.MetricsDropped))
		counter("edge_agent_mqtt_commands_total", float64(q.Commands))
		counter("edge_agent_mqtt_replies_sent_total", float64(q.RepliesSent))
		counter("edge_agent_mqtt_replies_dropped_total", float64(q.RepliesDropped))
		counter("edge_agent_commands_refused_total", float64(q.CommandsRefused))
		counter("edge_agent_commands_suppressed_total", float64(q.CommandsSuppressed))
		for _, st := range q.Streams {
			counter("edge_agent_mqtt_messages_total", float64(st.Messages), st.Name)
			counter("edge_agent_mqtt_records_total", float64(st.Records), st.Name)
			counter("edge_agent_mqtt_resent_total", float64(st.Resent), st.Name)
			gauge("edge_agent_mqtt_in_flight", float64(st.InFlight), st.Name)
		}
	}
	seen := map[[4]string]bool{} // one series per label set, or the scrape fails
	for _, d := range snap.Drift {
		k := [4]string{d.Model, d.Version, d.Feature, d.Statistic}
		if seen[k] {
			continue
		}
		seen[k] = true
		gauge("edge_agent_drift_score", d.Value, k[:]...)
		gauge("edge_agent_drift_threshold", d.Threshold, k[:]...)
		gauge("edge_agent_drift_alert", b2f(d.Alert), k[:]...)
		counter("edge_agent_drift_windows_total", float64(d.Windows), k[:]...)
	}
	bySev := map[health.Severity]int{}
	for _, h := range snap.Health {
		bySev[h.Severity]++
	}
	for _, sev := range []health.Severity{health.Info, health.Warning, health.Error} {
		gauge("edge_agent_health_conditions", float64(bySev[sev]), sev.String())
	}
}

func (m *metrics) predictDone(code int) {
	m.predictRequests.WithLabelValues(strconv.Itoa(code)).Inc()
}
