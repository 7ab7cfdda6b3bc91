//go:build cgo

package status_test

// Benchmark for `make bench` (section 8): the predict API with concurrent clients against
// direct pipeline.Process calls from as many goroutines, on the same input, interleaved in
// blocks within one run so machine noise hits both arms alike. Each reports both rates,
// their ratio and both p99 latencies.

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/edge-agent/edge-agent/agent/infer"
	"github.com/edge-agent/edge-agent/hal/sensor"
	"github.com/edge-agent/edge-agent/hal/sensor/file"
)

const benchClients = 4

// arm is one side of the comparison: its requests' latencies and the time its blocks took.
type arm struct {
	lat  []time.Duration
	wall time.Duration
	cpu  time.Duration // process CPU time (user + system) during the arm's blocks
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// block runs n calls of do from benchClients goroutines and records them.
func (a *arm) block(b *testing.B, n int, do func() error) {
	var next atomic.Int64
	lat := make([]time.Duration, n)
	var wg sync.WaitGroup
	start, cpu0 := time.Now(), cpuTime()
	for range benchClients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				t0 := time.Now()
				if err := do(); err != nil {
					b.Error(err)
					return
				}
				lat[i] = time.Since(t0)
			}
		}()
	}
	wg.Wait()
	a.wall += time.Since(start)
	a.cpu += cpuTime() - cpu0
	a.lat = append(a.lat, lat...)
}

func (a *arm) rate() float64 { return float64(len(a.lat)) / a.wall.Seconds() }

func (a *arm) p99() float64 {
	s := slices.Clone(a.lat)
	slices.Sort(s)
	return float64(s[(len(s)*99+99)/100-1].Microseconds()) / 1000
}

func BenchmarkPredictAPI(b *testing.B) {
	r := startAgent(b, "models:"+strings.Replace(mnistModel, "workers: 2", "workers: 1\n    threads: 1", 1)+ssdModel)
	p := r.a.Pipeline()
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: benchClients}}
	defer client.CloseIdleConnections()
	png, pngData := decoded(b, "mnist_digit_3.png")
	_, jpgData := decoded(b, "ssd_example.jpg")
	_, mnistIn := direct(b, p, "mnist", png)
	tensorFrame := sensor.Frame{Source: "bench", Tensor: &sensor.Raw{DType: infer.Float32.String(), Shape: mnistIn.Shape, Data: mnistIn.Data}}

	for _, c := range []struct {
		name   string
		model  string
		block  int
		body   string
		direct func() (sensor.Frame, error) // the frame as the caller has it, decoded if it must be
	}{
		{"mnist/tensor", "mnist", 100, `{"instances": [` + nested(mnistIn, []int{784}) + `]}`,
			func() (sensor.Frame, error) { return tensorFrame, nil }},
		{"mnist/png", "mnist", 100, `{"instances": [{"b64": "` + b64(pngData) + `"}]}`,
			func() (sensor.Frame, error) { return file.Decode("digit.png", pngData, sensor.FileSpec{}) }},
		{"ssd/jpeg", "ssd", 4, `{"instances": [{"b64": "` + b64(jpgData) + `"}]}`,
			func() (sensor.Frame, error) { return file.Decode("cam.jpg", jpgData, sensor.FileSpec{}) }},
	} {
		b.Run(c.name, func(b *testing.B) {
			url := r.url + "/v1/models/" + c.model + ":predict"
			api := func() error {
				resp, err := client.Post(url, "application/json", bytes.NewReader([]byte(c.body)))
				if err != nil {
					return err
				}
				defer resp.Body.Close()
				body, err := io.ReadAll(resp.Body)
				if err == nil && resp.StatusCode != http.StatusOK {
					b.Fatalf("predict: %d %s", resp.StatusCode, body)
				}
				return err
			}
			call := func() error {
				f, err := c.direct()
				if err != nil {
					return err
				}
				_, err = p.Process(context.Background(), c.model, f)
				return err
			}
			var d, a arm
			for range 2 { // warm both (XNNPACK packs weights on first use; connections open)
				d.block(b, benchClients, call)
				a.block(b, benchClients, api)
			}
			d, a = arm{}, arm{}
			b.ResetTimer()
			for done := 0; done < b.N; done += c.block {
				n := min(c.block, b.N-done)
				d.block(b, n, call)
				a.block(b, n, api)
			}
			b.StopTimer()
			b.ReportMetric(d.rate(), "direct/s")
			b.ReportMetric(a.rate(), "api/s")
			b.ReportMetric(a.rate()/d.rate(), "ratio")
			b.ReportMetric(d.p99(), "direct-p99-ms")
			b.ReportMetric(a.p99(), "api-p99-ms")
			b.ReportMetric(float64(d.cpu.Microseconds())/float64(len(d.lat)), "direct-cpu-µs")
			b.ReportMetric(float64(a.cpu.Microseconds())/float64(len(a.lat)), "api-cpu-µs")
		})
	}
}
