package file_test

import (
	"context"
	"encoding/binary"
	"fmt"
	"image"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/edge-agent/edge-agent/hal/sensor"
	"github.com/edge-agent/edge-agent/hal/sensor/file"
	"github.com/edge-agent/edge-agent/hal/sensor/internal/sensortest"
	"github.com/edge-agent/edge-agent/internal/testenv"
)

// npy builds a .npy file the way NumPy writes one: magic, version, header length, the
// header dict padded with spaces to a multiple of 64 bytes and ended by \n, then the data.
func npy(major byte, header string, data []byte) []byte {
	pre := 10
	if major > 1 {
		pre = 12
	}
	pad := (64 - (pre+len(header)+1)%64) % 64
	h := header + strings.Repeat(" ", pad) + "\n"
	b := append([]byte("\x93NUMPY"), major, 0)
	if major == 1 {
		b = binary.LittleEndian.AppendUint16(b, uint16(len(h)))
	} else {
		b = binary.LittleEndian.AppendUint32(b, uint32(len(h)))
	}
	return append(append(b, h...), data...)
}

func float32s(v ...float32) []byte {
	var b []byte
	for _, x := range v {
		b = binary.LittleEndian.AppendUint32(b, math.Float32bits(x))
	}
	return b
}

func TestParseNPY(t *testing.T) {
	f32 := float32s(1, 2, 3, 4, 5, 6)
	tests := []struct {
		name      string
		file      []byte
		wantDType string
		wantShape []int
		wantData  []byte
		wantErr   string
	}{
		{"v1 float32 2x3", npy(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", f32), "float32", []int{2, 3}, f32, ""},
		{"v2 uint8 vector", npy(2, "{'descr': '|u1', 'fortran_order': False, 'shape': (4,), }", []byte{1, 2, 3, 4}), "uint8", []int{4}, []byte{1, 2, 3, 4}, ""},
		{"v3 bool scalar", npy(3, "{'descr': '|b1', 'fortran_order': False, 'shape': (), }", []byte{1}), "bool", []int{}, []byte{1}, ""},
		{"int8", npy(1, "{'descr': '|i1', 'fortran_order': False, 'shape': (2,), }", []byte{0xff, 1}), "int8", []int{2}, []byte{0xff, 1}, ""},
		{"int16", npy(1, "{'descr': '<i2', 'fortran_order': False, 'shape': (1,), }", []byte{1, 0}), "int16", []int{1}, []byte{1, 0}, ""},
		{"int32", npy(1, "{'descr': '<i4', 'fortran_order': False, 'shape': (1,), }", []byte{1, 0, 0, 0}), "int32", []int{1}, []byte{1, 0, 0, 0}, ""},
		{"int64, keys reordered, double quotes", npy(1, `{"shape": (1, 1), "fortran_order": False, "descr": "<i8"}`, make([]byte, 8)), "int64", []int{1, 1}, make([]byte, 8), ""},
		{"float64", npy(1, "{'descr': '<f8', 'fortran_order': False, 'shape': (1,), }", make([]byte, 8)), "float64", []int{1}, make([]byte, 8), ""},
		{"empty array", npy(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (0, 3), }", nil), "float32", []int{0, 3}, []byte{}, ""},
		{"fortran order", npy(1, "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }", f32), "", nil, nil, "Fortran order"},
		{"big-endian", npy(1, "{'descr': '>f4', 'fortran_order': False, 'shape': (6,), }", f32), "", nil, nil, "big-endian"},
		{"complex", npy(1, "{'descr': '<c8', 'fortran_order': False, 'shape': (1,), }", make([]byte, 8)), "", nil, nil, `dtype "<c8" is not supported`},
		{"structured", npy(1, "{'descr': [('x', '<f4')], 'fortran_order': False, 'shape': (1,), }", make([]byte, 4)), "", nil, nil, "structured"},
		{"short data", npy(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", f32[:20]), "", nil, nil, "data is 20 bytes; shape [2 3] of float32 needs 24"},
		{"version 4", append([]byte("\x93NUMPY\x04\x00"), 0, 0), "", nil, nil, "version 4.0"},
		{"not npy", []byte("hello world"), "", nil, nil, "not a .npy file"},
		{"header past end", append([]byte("\x93NUMPY\x01\x00"), 0xff, 0x00), "", nil, nil, "runs past the end"},
	}
	for _, tt := range tests {
		raw, err := file.ParseNPY(tt.file)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("%s: got error %v; want one containing %q", tt.name, err, tt.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: got error %v; want none", tt.name, err)
			continue
		}
		if raw.DType != tt.wantDType || !slices.Equal(raw.Shape, tt.wantShape) || !slices.Equal(raw.Data, tt.wantData) {
			t.Errorf("%s: got %s %v % x; want %s %v % x", tt.name, raw.DType, raw.Shape, raw.Data, tt.wantDType, tt.wantShape, tt.wantData)
		}
	}
}

func newSource(t *testing.T, c sensor.FileSpec) sensor.Source {
	t.Helper()
	src, err := sensor.Kinds.New(sensor.Spec{Name: "files", Kind: "file", File: c}, sensor.Deps{})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return src
}

func write(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	data, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	write(t, to, data)
}

func TestSingleFiles(t *testing.T) {
	dir := t.TempDir()
	td := sensortest.Testdata(t)
	npyPath := filepath.Join(dir, "x.npy")
	write(t, npyPath, npy(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 2), }", float32s(0.5, -1)))
	binPath := filepath.Join(dir, "x.bin")
	write(t, binPath, []byte{1, 2, 3, 4, 5, 6})
	pngPath := filepath.Join(td, "mnist_digit_7.png")

	tests := []struct {
		spec  sensor.FileSpec
		check func(f sensor.Frame) bool
	}{
		{sensor.FileSpec{Path: npyPath}, func(f sensor.Frame) bool {
			return f.Tensor.DType == "float32" && slices.Equal(f.Tensor.Shape, []int{1, 2}) && slices.Equal(f.Tensor.Data, float32s(0.5, -1))
		}},
		{sensor.FileSpec{Path: binPath, DType: "uint8", Shape: []int{2, 3}}, func(f sensor.Frame) bool {
			return f.Tensor.DType == "uint8" && slices.Equal(f.Tensor.Shape, []int{2, 3}) && len(f.Tensor.Data) == 6
		}},
		{sensor.FileSpec{Path: pngPath}, func(f sensor.Frame) bool {
			return f.Image != nil && f.Image.Bounds() == image.Rect(0, 0, 100, 100)
		}},
	}
	for _, tt := range tests {
		var c sensortest.Collector
		if err := newSource(t, tt.spec).Run(context.Background(), c.Emit); err != nil {
			t.Errorf("%s: Run: got %v; want nil after one frame", tt.spec.Path, err)
			continue
		}
		frames := c.Frames()
		if len(frames) != 1 || !tt.check(frames[0]) || frames[0].Ref != tt.spec.Path {
			t.Errorf("%s: got %d frames %+v; want one matching frame with Ref set", tt.spec.Path, len(frames), frames)
		}
	}

	// A raw file whose size does not match its shape, and an oversized file, are errors.
	bad := newSource(t, sensor.FileSpec{Path: binPath, DType: "float32", Shape: []int{2, 3}})
	if err := bad.Run(context.Background(), func(sensor.Frame) {}); err == nil || !strings.Contains(err.Error(), "raw tensor is 6 bytes; shape [2 3] of float32 needs 24") {
		t.Errorf("raw size mismatch: got %v; want a size error", err)
	}
	big := filepath.Join(dir, "big.npy")
	f, err := os.Create(big)
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(file.MaxFileBytes + 1) // sparse: costs no disk
	f.Close()
	if err := newSource(t, sensor.FileSpec{Path: big}).Run(context.Background(), func(sensor.Frame) {}); err == nil || !strings.Contains(err.Error(), "over the 64 MiB limit") {
		t.Errorf("oversized file: got %v; want the 64 MiB limit error", err)
	}
}

func TestSingleFileLoop(t *testing.T) {
	sensortest.NoLeaks(t)
	td := sensortest.Testdata(t)
	src, err := file.New(sensor.Spec{Name: "again", Rate: 200, File: sensor.FileSpec{Path: filepath.Join(td, "mnist_digit_1.png"), Loop: true}}, sensor.Deps{})
	if err != nil {
		t.Fatal(err)
	}
	var c sensortest.Collector
	r := sensortest.Start(t, src, nil, c.Emit)
	c.WaitN(t, 3, 2*time.Second)
	if err := r.Stop(); err != nil {
		t.Errorf("Run after cancel: got %v; want nil", err)
	}
}

func TestWatchDirectory(t *testing.T) {
	sensortest.NoLeaks(t)
	td := sensortest.Testdata(t)
	dir := t.TempDir()
	for _, n := range []string{"2", "0", "1"} {
		copyFile(t, filepath.Join(td, "mnist_digit_"+n+".png"), filepath.Join(dir, "a"+n+".png"))
	}
	write(t, filepath.Join(dir, "notes.txt"), []byte("not an input"))
	write(t, filepath.Join(dir, ".a9.png.partial"), []byte("hidden temp file"))

	var c sensortest.Collector
	var rep sensortest.Reports
	r := sensortest.Start(t, newSource(t, sensor.FileSpec{Path: dir, Poll: 10 * time.Millisecond}), &rep, c.Emit)

	frames := c.WaitN(t, 3, 2*time.Second)
	for i, n := range []string{"0", "1", "2"} { // name order
		if want := filepath.Join(dir, "a"+n+".png"); frames[i].Ref != want || frames[i].Image == nil {
			t.Errorf("existing file %d: got %q (image %v); want %q", i, frames[i].Ref, frames[i].Image != nil, want)
		}
	}

	// A file dropped in after start is picked up.
	copyFile(t, filepath.Join(td, "mnist_digit_3.png"), filepath.Join(dir, "b3.png"))
	frames = c.WaitN(t, 4, 2*time.Second)
	if want := filepath.Join(dir, "b3.png"); frames[3].Ref != want {
		t.Errorf("new file: got %q; want %q", frames[3].Ref, want)
	}

	// A corrupt picture is reported and skipped; the next good one still arrives.
	png4, _ := os.ReadFile(filepath.Join(td, "mnist_digit_4.png"))
	write(t, filepath.Join(dir, "c_bad.png"), png4[:len(png4)/2])
	copyFile(t, filepath.Join(td, "mnist_digit_5.png"), filepath.Join(dir, "d5.png"))
	frames = c.WaitN(t, 5, 2*time.Second)
	if want := filepath.Join(dir, "d5.png"); frames[4].Ref != want {
		t.Errorf("after the corrupt file: got %q; want %q", frames[4].Ref, want)
	}
	rep.WaitContains(t, "c_bad.png: decode PNG", time.Second)

	// An .npy dropped in arrives as a tensor.
	write(t, filepath.Join(dir, "e.npy"), npy(1, "{'descr': '|u1', 'fortran_order': False, 'shape': (3,), }", []byte{7, 8, 9}))
	frames = c.WaitN(t, 6, 2*time.Second)
	if tn := frames[5].Tensor; tn == nil || !slices.Equal(tn.Data, []byte{7, 8, 9}) {
		t.Errorf("npy in folder: got %+v; want uint8 [7 8 9]", frames[5])
	}

	if err := r.Stop(); err != nil {
		t.Errorf("Run after cancel: got %v; want nil", err)
	}
	if got := len(c.Frames()); got != 6 {
		t.Errorf("frames: got %d; want 6 (nothing read twice, nothing after stop)", got)
	}
	if got := len(rep.Errors()); got != 1 {
		t.Errorf("reports: got %v; want exactly the corrupt file", rep.Errors())
	}
}

func TestWatchSkipExisting(t *testing.T) {
	sensortest.NoLeaks(t)
	td := sensortest.Testdata(t)
	dir := t.TempDir()
	copyFile(t, filepath.Join(td, "mnist_digit_0.png"), filepath.Join(dir, "old.png"))
	var c sensortest.Collector
	r := sensortest.Start(t, newSource(t, sensor.FileSpec{Path: dir, SkipExisting: true, Poll: 10 * time.Millisecond}), nil, c.Emit)
	// Nothing tells when the source's first scan is over, and a file added before it counts as
	// existing. So new files keep arriving until one is read. They sort after old.png, so an
	// old.png that was not skipped would be read before any of them.
	deadline := time.Now().Add(testenv.Patience(10 * time.Second))
	for i := 0; len(c.Frames()) == 0; i++ {
		if time.Now().After(deadline) {
			t.Fatalf("no file added after the start was read within 10s (%d added)", i)
		}
		copyFile(t, filepath.Join(td, "mnist_digit_1.png"), filepath.Join(dir, fmt.Sprintf("p-new-%03d.png", i)))
		time.Sleep(20 * time.Millisecond) // pace the additions; the loop's condition is the wait
	}
	r.Stop()
	frames := c.Frames()
	for _, f := range frames {
		if !strings.HasPrefix(filepath.Base(f.Ref), "p-new-") {
			t.Errorf("read %q; want only files added after the start (old.png is skipped)", f.Ref)
		}
	}
}

func TestValidation(t *testing.T) {
	tests := []struct {
		spec sensor.FileSpec
		want string
	}{
		{sensor.FileSpec{}, `source "files": file.path: must not be empty`},
		{sensor.FileSpec{Path: "x", Pattern: "[x"}, "file.pattern"},
		{sensor.FileSpec{Path: "x", DType: "complex64", Shape: []int{1}}, `file.dtype: "complex64" is not one of`},
		{sensor.FileSpec{Path: "x", DType: "uint8", Shape: []int{2, 0}}, "file.shape: [2 0]: every dimension must be positive"},
		{sensor.FileSpec{Path: "x", DType: "uint8"}, "file.dtype: file.dtype and file.shape go together"},
		{sensor.FileSpec{Path: "frame.raw"}, "file.dtype: frame.raw is a raw tensor: set file.dtype and file.shape"},
		{sensor.FileSpec{Path: "x", Poll: -time.Second}, "file.poll"},
	}
	for _, tt := range tests {
		_, err := file.New(sensor.Spec{Name: "files", File: tt.spec}, sensor.Deps{})
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%+v: got %v; want an error containing %q", tt.spec, err, tt.want)
		}
	}
	src := newSource(t, sensor.FileSpec{Path: filepath.Join(t.TempDir(), "missing")})
	if err := src.Run(context.Background(), func(sensor.Frame) {}); err == nil || !strings.Contains(err.Error(), "file.path") {
		t.Errorf("missing path: got %v; want an error naming file.path", err)
	}
}

func TestWatchLoop(t *testing.T) {
	sensortest.NoLeaks(t)
	td := sensortest.Testdata(t)
	dir := t.TempDir()
	copyFile(t, filepath.Join(td, "mnist_digit_0.png"), filepath.Join(dir, "a.png"))
	copyFile(t, filepath.Join(td, "mnist_digit_1.png"), filepath.Join(dir, "b.png"))
	var c sensortest.Collector
	r := sensortest.Start(t, newSource(t, sensor.FileSpec{Path: dir, Loop: true, Poll: 5 * time.Millisecond}), nil, c.Emit)
	frames := c.WaitN(t, 5, 3*time.Second)
	r.Stop()
	for i, want := range []string{"a.png", "b.png", "a.png", "b.png", "a.png"} {
		if got := filepath.Base(frames[i].Ref); got != want {
			t.Errorf("frame %d: got %s; want %s", i, got, want)
		}
	}
}
