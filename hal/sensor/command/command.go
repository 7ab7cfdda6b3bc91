// Package command is the "command" source kind: a program (a camera tool, ffmpeg, arecord,
// a script) writes frames to its stdout as a JPEG stream, fixed-size raw tensors, or one
// JSON reading per line. It imports nothing from agent/.
//
// The program runs in its own process group, so on cancel the whole group (a shell and its
// children) is killed. When the program exits, for any reason, Run returns an error with the
// exit status and the last lines of stderr, and the runner restarts it after a backoff.
package command

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"image/jpeg"
	"io"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/edge-agent/edge-agent/hal/sensor"
	"github.com/edge-agent/edge-agent/hal/sensor/internal/numbers"
	"github.com/edge-agent/edge-agent/hal/sensor/internal/pace"
)

func init() { sensor.Kinds.Register("command", New) }

const (
	defaultMaxFrame = 16 << 20
	stderrKeep      = 8 << 10 // bytes of stderr kept for error messages
	stderrLines     = 5
)

type source struct {
	name      string
	cfg       sensor.CommandSpec
	maxFrame  int
	frameSize int // raw format
	period    time.Duration
}

// New validates spec.Command and checks that the program can be found.
func New(spec sensor.Spec, _ sensor.Deps) (sensor.Source, error) {
	c := spec.Command
	bad := func(field, format string, args ...any) error {
		return fmt.Errorf("source %q: command.%s: %s", spec.Name, field, fmt.Sprintf(format, args...))
	}
	if len(c.Argv) == 0 || c.Argv[0] == "" {
		return nil, bad("argv", "must not be empty")
	}
	if _, err := exec.LookPath(c.Argv[0]); err != nil {
		return nil, bad("argv[0]", "%v", err)
	}
	s := &source{name: spec.Name, cfg: c, maxFrame: c.MaxFrameBytes, period: spec.Period()}
	switch {
	case c.MaxFrameBytes < 0:
		return nil, bad("max_frame_bytes", "must not be negative, got %d", c.MaxFrameBytes)
	case c.MaxFrameBytes == 0:
		s.maxFrame = defaultMaxFrame
	}
	switch c.Format {
	case "jpeg", "ndjson":
	case "raw":
		if sensor.DTypeSize(c.DType) == 0 {
			return nil, bad("dtype", "%q is not one of float32, float64, float16, uint8, int8, int16, int32, int64, bool (format raw needs it)", c.DType)
		}
		n := sensor.Elements(c.Shape)
		if len(c.Shape) == 0 || n < 0 {
			return nil, bad("shape", "%v: format raw needs a shape of positive dimensions", c.Shape)
		}
		s.frameSize = n * sensor.DTypeSize(c.DType)
		if s.frameSize > s.maxFrame {
			return nil, bad("shape", "a frame of %v %s is %d bytes, over command.max_frame_bytes (%d)", c.Shape, c.DType, s.frameSize, s.maxFrame)
		}
	case "":
		return nil, bad("format", "must be set: jpeg, raw or ndjson")
	default:
		return nil, bad("format", "%q is not one of jpeg, raw, ndjson", c.Format)
	}
	return s, nil
}

// Run starts the program and reads frames until it exits or ctx is done.
func (s *source) Run(ctx context.Context, emit sensor.Emit) error {
	cmd := exec.CommandContext(ctx, s.cfg.Argv[0], s.cfg.Argv[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return killGroup(cmd) }
	cmd.WaitDelay = 2 * time.Second // bound the wait for stderr if something odd holds it open
	stderr := &tail{max: stderrKeep}
	cmd.Stderr = stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return fmt.Errorf("source %q: command %q: %w", s.name, s.cfg.Argv[0], err)
	}
	if err := cmd.Start(); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("source %q: command %q: %w", s.name, s.cfg.Argv[0], err)
	}
	readErr := s.read(ctx, bufio.NewReaderSize(stdout, 64<<10), emit)
	if readErr != nil {
		killGroup(cmd) // the stream is broken: stop the producer before waiting for it
	}
	waitErr := cmd.Wait()
	killGroup(cmd) // children the program left behind in its group go with it
	if ctx.Err() != nil {
		return nil
	}
	argv := strings.Join(s.cfg.Argv, " ")
	if readErr != nil {
		return fmt.Errorf("source %q: command %q: %w%s", s.name, argv, readErr, stderr.suffix())
	}
	if waitErr == nil {
		return fmt.Errorf("source %q: command %q exited with status 0 (it should keep running)%s", s.name, argv, stderr.suffix())
	}
	return fmt.Errorf("source %q: command %q exited: %w%s", s.name, argv, waitErr, stderr.suffix())
}

// killGroup kills the program's process group (its pid, since Setpgid made it the leader).
func killGroup(cmd *exec.Cmd) error {
	if cmd.Process == nil {
		return nil
	}
	if err := syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return err
	}
	return nil
}

// read decodes the stream until EOF (nil) or a broken stream (error). Frames arriving less
// than the interval after the previous one are skipped before decoding, to save the CPU.
func (s *source) read(ctx context.Context, r *bufio.Reader, emit sensor.Emit) error {
	gate := pace.Gate{Period: s.period}
	switch s.cfg.Format {
	case "jpeg":
		var buf []byte
		for {
			var err error
			buf, err = nextJPEG(r, s.maxFrame, buf[:0])
			if err == io.EOF {
				return nil
			}
			if err != nil {
				return err
			}
			if !gate.Allow(time.Now()) {
				continue
			}
			img, err := jpeg.Decode(bytes.NewReader(buf))
			if err != nil {
				sensor.Report(ctx, fmt.Errorf("source %q: command: JPEG frame of %d bytes skipped: %w", s.name, len(buf), err))
				continue
			}
			emit(sensor.Frame{Image: img})
		}
	case "raw":
		for {
			data := make([]byte, s.frameSize)
			if _, err := io.ReadFull(r, data); err != nil {
				if err == io.ErrUnexpectedEOF {
					return fmt.Errorf("stream ended inside a frame (%d-byte frames of %v %s)", s.frameSize, s.cfg.Shape, s.cfg.DType)
				}
				if err == io.EOF {
					return nil
				}
				return err
			}
			if gate.Allow(time.Now()) {
				emit(sensor.Frame{Tensor: &sensor.Raw{DType: s.cfg.DType, Shape: append([]int(nil), s.cfg.Shape...), Data: data}})
			}
		}
	case "ndjson":
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 0, min(64<<10, s.maxFrame)), s.maxFrame)
		line := 0
		for sc.Scan() {
			line++
			if len(bytes.TrimSpace(sc.Bytes())) == 0 || !gate.Allow(time.Now()) {
				continue
			}
			vals, names, err := numbers.Parse(sc.Bytes())
			if err != nil {
				sensor.Report(ctx, fmt.Errorf("source %q: command: line %d skipped: %w", s.name, line, err))
				continue
			}
			emit(sensor.Frame{Values: vals, Names: names})
		}
		if errors.Is(sc.Err(), bufio.ErrTooLong) {
			return fmt.Errorf("line %d is longer than command.max_frame_bytes (%d)", line+1, s.maxFrame)
		}
		return sc.Err()
	}
	return fmt.Errorf("format %q not handled", s.cfg.Format) // New refuses it; kept for safety
}

// tail keeps the last bytes written to it (the program's stderr).
type tail struct {
	mu  sync.Mutex
	max int
	buf []byte
}

func (t *tail) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if over := len(t.buf) - t.max; over > 0 {
		t.buf = append(t.buf[:0], t.buf[over:]...)
	}
	return len(p), nil
}

// suffix is "; stderr: <last lines>" or "" when the program wrote nothing.
func (t *tail) suffix() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := strings.TrimSpace(string(bytes.ToValidUTF8(t.buf, []byte("?"))))
	if s == "" {
		return ""
	}
	lines := strings.Split(s, "\n")
	if len(lines) > stderrLines {
		lines = lines[len(lines)-stderrLines:]
	}
	return "; stderr: " + strings.Join(lines, " | ")
}
