package command

import (
	"context"
	"image"
	"image/jpeg"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/edge-agent/edge-agent/hal/sensor"
	"github.com/edge-agent/edge-agent/hal/sensor/internal/sensortest"
	"github.com/edge-agent/edge-agent/internal/testenv"
)

func newSource(t *testing.T, spec sensor.Spec) sensor.Source {
	t.Helper()
	spec.Kind = "command"
	if spec.Name == "" {
		spec.Name = "prog"
	}
	src, err := sensor.Kinds.New(spec, sensor.Deps{})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return src
}

func jpegSize(t *testing.T, path string) image.Point {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cfg, err := jpeg.DecodeConfig(f)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return image.Pt(cfg.Width, cfg.Height)
}

func bounds(img image.Image) any {
	if img == nil {
		return nil
	}
	return img.Bounds()
}

func sh(script string) []string { return []string{"sh", "-c", script} }

// runToExit runs a program that ends by itself and returns frames, reports and the error.
func runToExit(t *testing.T, spec sensor.Spec) ([]sensor.Frame, []error, error) {
	t.Helper()
	var c sensortest.Collector
	var rep sensortest.Reports
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := newSource(t, spec).Run(rep.Context(ctx), c.Emit)
	return c.Frames(), rep.Errors(), err
}

func TestJPEGStream(t *testing.T) {
	sensortest.NoLeaks(t)
	jpg := filepath.Join(sensortest.Testdata(t), "ssd_example.jpg")
	// The size is read from the file itself: the testdata README says 640x426, but the
	// stored file is 1920x1280.
	want := jpegSize(t, jpg)
	frames, reports, err := runToExit(t, sensor.Spec{Command: sensor.CommandSpec{
		Argv: sh("cat " + jpg + " " + jpg), Format: "jpeg",
	}})
	if len(frames) != 2 || len(reports) != 0 {
		t.Fatalf("got %d frames, reports %v; want 2 frames, no reports", len(frames), reports)
	}
	for i, f := range frames {
		if f.Image == nil || f.Image.Bounds().Size() != want {
			t.Errorf("frame %d: got image %v; want size %v", i, bounds(f.Image), want)
		}
	}
	// The program ending is a failure for a stream source, so the runner restarts it.
	if err == nil || !strings.Contains(err.Error(), "exited with status 0") {
		t.Errorf("Run: got %v; want an error saying the program exited", err)
	}
}

func TestNDJSON(t *testing.T) {
	frames, reports, _ := runToExit(t, sensor.Spec{Command: sensor.CommandSpec{
		Argv:   sh(`printf '[1, 2.5, -3]\n{"b": 2, "a": 1}\n\nnot json\n[null]\n[4]\n'`),
		Format: "ndjson",
	}})
	tests := []struct {
		values []float64
		names  []string
	}{{[]float64{1, 2.5, -3}, nil}, {[]float64{1, 2}, []string{"a", "b"}}, {[]float64{4}, nil}}
	if len(frames) != len(tests) {
		t.Fatalf("frames: got %d; want %d", len(frames), len(tests))
	}
	for i, tt := range tests {
		if !slices.Equal(frames[i].Values, tt.values) || !slices.Equal(frames[i].Names, tt.names) {
			t.Errorf("frame %d: got %v %v; want %v %v", i, frames[i].Values, frames[i].Names, tt.values, tt.names)
		}
	}
	if len(reports) != 2 || !strings.Contains(reports[0].Error(), "line 4 skipped") || !strings.Contains(reports[1].Error(), "line 5 skipped: element 0 is null") {
		t.Errorf("reports: got %v; want lines 4 and 5 reported", reports)
	}
}

func TestRawFrames(t *testing.T) {
	tests := []struct {
		bytes      int
		wantFrames int
		wantErr    string
	}{
		{24, 4, "exited with status 0"},
		{25, 4, "stream ended inside a frame (6-byte frames of [2 3] uint8)"},
	}
	for _, tt := range tests {
		frames, _, err := runToExit(t, sensor.Spec{Command: sensor.CommandSpec{
			Argv: []string{"head", "-c", strconv.Itoa(tt.bytes), "/dev/urandom"}, Format: "raw", DType: "uint8", Shape: []int{2, 3},
		}})
		if len(frames) != tt.wantFrames {
			t.Errorf("%d bytes: got %d frames; want %d", tt.bytes, len(frames), tt.wantFrames)
		}
		for _, f := range frames {
			if f.Tensor == nil || f.Tensor.DType != "uint8" || !slices.Equal(f.Tensor.Shape, []int{2, 3}) || len(f.Tensor.Data) != 6 {
				t.Errorf("%d bytes: got frame %+v; want a uint8 [2 3] tensor", tt.bytes, f.Tensor)
			}
		}
		if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
			t.Errorf("%d bytes: got %v; want an error containing %q", tt.bytes, err, tt.wantErr)
		}
	}
}

func TestIntervalSkipsFastFrames(t *testing.T) {
	frames, _, _ := runToExit(t, sensor.Spec{Interval: time.Hour, Command: sensor.CommandSpec{
		Argv: sh(`printf '[1]\n[2]\n[3]\n'`), Format: "ndjson",
	}})
	if len(frames) != 1 || frames[0].Values[0] != 1 {
		t.Errorf("got %d frames; want only the first", len(frames))
	}
}

func TestFailingProgramIsRestartedWithStderr(t *testing.T) {
	sensortest.NoLeaks(t)
	spec := sensor.Spec{Name: "cam", Kind: "command", Command: sensor.CommandSpec{
		Argv: sh("echo starting >&2; echo 'camera /dev/video0 not found' >&2; exit 1"), Format: "jpeg",
	}}
	_, _, err := runToExit(t, spec)
	if err == nil || !strings.Contains(err.Error(), "exit status 1") || !strings.Contains(err.Error(), "stderr: starting | camera /dev/video0 not found") {
		t.Fatalf("Run: got %v; want the exit status and stderr lines", err)
	}

	r := sensor.NewRunner(spec, newSource(t, spec), sensor.RunnerOptions{
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), MinBackoff: 10 * time.Millisecond, MaxBackoff: 40 * time.Millisecond,
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.Run(ctx); close(done) }()
	deadline := time.Now().Add(testenv.Patience(5 * time.Second))
	for r.Stats().Restarts < 3 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	<-done
	st := r.Stats()
	if st.Restarts < 3 || st.Errors < 3 || !strings.Contains(st.LastError, "camera /dev/video0 not found") {
		t.Errorf("Stats: got %+v; want at least 3 restarts and the stderr in LastError", st)
	}
}

func TestCancelKillsProcessGroup(t *testing.T) {
	sensortest.NoLeaks(t)
	pidFile := filepath.Join(t.TempDir(), "pid")
	src := newSource(t, sensor.Spec{Command: sensor.CommandSpec{
		// The shell's child holds stdout too: only killing the group ends the stream.
		Argv: sh("sleep 30 & echo $! > " + pidFile + "; wait"), Format: "jpeg",
	}})
	r := sensortest.Start(t, src, nil, func(sensor.Frame) {})
	var pid int
	for deadline := time.Now().Add(testenv.Patience(3 * time.Second)); pid == 0 && time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		b, _ := os.ReadFile(pidFile)
		pid, _ = strconv.Atoi(strings.TrimSpace(string(b)))
	}
	if pid == 0 {
		t.Fatalf("the program did not start")
	}
	start := time.Now()
	if err := r.Stop(); err != nil {
		t.Errorf("Run after cancel: got %v; want nil", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("Run returned %v after cancel; want promptly", d)
	}
	// The child is gone (or a zombie waiting for init to reap it).
	for deadline := time.Now().Add(testenv.Patience(2 * time.Second)); ; time.Sleep(10 * time.Millisecond) {
		stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		if err != nil || strings.Contains(string(stat), ") Z ") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("child sleep %d still alive after cancel: %s", pid, stat)
		}
	}
}

func TestValidation(t *testing.T) {
	tests := []struct {
		spec sensor.CommandSpec
		want string
	}{
		{sensor.CommandSpec{Format: "jpeg"}, `source "prog": command.argv: must not be empty`},
		{sensor.CommandSpec{Argv: []string{"no-such-program-xyz"}, Format: "jpeg"}, "command.argv[0]:"},
		{sensor.CommandSpec{Argv: []string{"true"}}, "command.format: must be set: jpeg, raw or ndjson"},
		{sensor.CommandSpec{Argv: []string{"true"}, Format: "h264"}, `command.format: "h264" is not one of`},
		{sensor.CommandSpec{Argv: []string{"true"}, Format: "raw", Shape: []int{2}}, "command.dtype"},
		{sensor.CommandSpec{Argv: []string{"true"}, Format: "raw", DType: "uint8"}, "command.shape"},
		{sensor.CommandSpec{Argv: []string{"true"}, Format: "raw", DType: "float32", Shape: []int{1000, 1000}, MaxFrameBytes: 1000}, "over command.max_frame_bytes (1000)"},
		{sensor.CommandSpec{Argv: []string{"true"}, Format: "jpeg", MaxFrameBytes: -1}, "command.max_frame_bytes"},
	}
	for _, tt := range tests {
		_, err := New(sensor.Spec{Name: "prog", Command: tt.spec}, sensor.Deps{})
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%+v: got %v; want an error containing %q", tt.spec, err, tt.want)
		}
	}
}
