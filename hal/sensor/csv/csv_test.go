package csv_test

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/edge-agent/edge-agent/hal/sensor"
	"github.com/edge-agent/edge-agent/hal/sensor/csv"
	"github.com/edge-agent/edge-agent/hal/sensor/internal/sensortest"
	"github.com/edge-agent/edge-agent/internal/testenv"
)

// irisCSV is the iris data set from the repository's testdata folder.
func irisCSV(t *testing.T) string { return testenv.Data(t, "iris.csv") }

func newSource(t *testing.T, c sensor.CSVSpec) sensor.Source {
	t.Helper()
	src, err := sensor.Kinds.New(sensor.Spec{Name: "rows", Kind: "csv", CSV: c}, sensor.Deps{})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return src
}

func runToEnd(t *testing.T, src sensor.Source) ([]sensor.Frame, []error) {
	t.Helper()
	var c sensortest.Collector
	var rep sensortest.Reports
	if err := src.Run(rep.Context(context.Background()), c.Emit); err != nil {
		t.Fatalf("Run: got %v; want nil at the end of the file", err)
	}
	return c.Frames(), rep.Errors()
}

func TestIrisReplay(t *testing.T) {
	path := irisCSV(t)
	tests := []struct {
		columns     []string
		wantNames   []string
		first, last []float64
	}{
		// Default: the numeric columns; the species label is left out.
		{nil, []string{"SepalLength", "SepalWidth", "PetalLength", "PetalWidth"}, []float64{5.1, 3.5, 1.4, 0.2}, []float64{5.9, 3.0, 5.1, 1.8}},
		{[]string{"PetalWidth", "SepalLength"}, []string{"PetalWidth", "SepalLength"}, []float64{0.2, 5.1}, []float64{1.8, 5.9}},
	}
	for _, tt := range tests {
		frames, reports := runToEnd(t, newSource(t, sensor.CSVSpec{Path: path, Columns: tt.columns}))
		if len(frames) != 150 || len(reports) != 0 {
			t.Fatalf("columns %v: got %d frames, reports %v; want 150 frames, no reports", tt.columns, len(frames), reports)
		}
		if !slices.Equal(frames[0].Names, tt.wantNames) {
			t.Errorf("columns %v: Names: got %v; want %v", tt.columns, frames[0].Names, tt.wantNames)
		}
		if !slices.Equal(frames[0].Values, tt.first) || !slices.Equal(frames[149].Values, tt.last) {
			t.Errorf("columns %v: first, last: got %v, %v; want %v, %v", tt.columns, frames[0].Values, frames[149].Values, tt.first, tt.last)
		}
		if want := path + ":2"; frames[0].Ref != want {
			t.Errorf("Ref: got %q; want %q", frames[0].Ref, want)
		}
	}
}

func TestBadCellsAreSkippedAndReported(t *testing.T) {
	path := filepath.Join(t.TempDir(), "temps.csv")
	data := "\ufefftime,temp,hum\n" + // spreadsheet byte order mark
		"1,20.5,40\n" +
		"2,n/a,41\n" + // bad selected cell
		"3\n" + // short row
		"4,21.5,oops\n" + // bad cell in a column not selected
		"5,NaN,43\n" +
		"6,22.0,44\n"
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	frames, reports := runToEnd(t, newSource(t, sensor.CSVSpec{Path: path, Columns: []string{"temp", "time"}}))
	var got [][]float64
	for _, f := range frames {
		got = append(got, f.Values)
	}
	want := [][]float64{{20.5, 1}, {21.5, 4}, {22.0, 6}}
	if !slices.EqualFunc(got, want, slices.Equal) {
		t.Errorf("values: got %v; want %v", got, want)
	}
	if len(reports) != 3 {
		t.Fatalf("reports: got %v; want 3 (lines 3, 4, 6)", reports)
	}
	for i, want := range []string{`line 3: row skipped: column "temp": "n/a" is not a finite number`, `line 4: row skipped: column "temp" missing`, "line 6"} {
		if !strings.Contains(reports[i].Error(), want) {
			t.Errorf("report %d: got %q; want it to contain %q", i, reports[i], want)
		}
	}
}

func TestNoHeaderLoopAndCancel(t *testing.T) {
	sensortest.NoLeaks(t)
	path := filepath.Join(t.TempDir(), "plain.csv")
	if err := os.WriteFile(path, []byte("1,2\n3,4\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	no := false
	frames, _ := runToEnd(t, newSource(t, sensor.CSVSpec{Path: path, Header: &no}))
	if len(frames) != 2 || !slices.Equal(frames[1].Values, []float64{3, 4}) || frames[0].Names != nil {
		t.Fatalf("no header: got %d frames, last %v, names %v; want 2, [3 4], none", len(frames), frames[len(frames)-1].Values, frames[0].Names)
	}

	src, err := csv.New(sensor.Spec{Name: "loop", Rate: 500, CSV: sensor.CSVSpec{Path: path, Header: &no, Loop: true}}, sensor.Deps{})
	if err != nil {
		t.Fatal(err)
	}
	var c sensortest.Collector
	r := sensortest.Start(t, src, nil, c.Emit)
	got := c.WaitN(t, 5, 2*time.Second)
	if err := r.Stop(); err != nil {
		t.Errorf("Run after cancel: got %v; want nil", err)
	}
	for i, want := range []float64{1, 3, 1, 3, 1} {
		if got[i].Values[0] != want {
			t.Errorf("loop frame %d: got %v; want first value %v", i, got[i].Values, want)
		}
	}
}

func TestValidation(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "h.csv")
	if err := os.WriteFile(path, []byte("a,b\n1,2\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	no := false
	tests := []struct {
		spec sensor.CSVSpec
		want string
	}{
		{sensor.CSVSpec{}, `source "rows": csv.path: must not be empty`},
		{sensor.CSVSpec{Path: path, Columns: []string{"a", "c"}}, `source "rows": csv.columns[1]: column "c" is not in the header of ` + path + ` (have a, b)`},
		{sensor.CSVSpec{Path: path, Columns: []string{""}}, "csv.columns[0]: must not be empty"},
		{sensor.CSVSpec{Path: path, Columns: []string{"a"}, Header: &no}, "csv.columns: names columns, but csv.header is false"},
	}
	for _, tt := range tests {
		_, err := csv.New(sensor.Spec{Name: "rows", CSV: tt.spec}, sensor.Deps{})
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%+v: got %v; want an error containing %q", tt.spec, err, tt.want)
		}
	}

	// A file that does not exist yet is accepted; Run reports it (and the runner retries).
	src, err := csv.New(sensor.Spec{Name: "later", CSV: sensor.CSVSpec{Path: filepath.Join(dir, "later.csv")}}, sensor.Deps{})
	if err != nil {
		t.Fatalf("New with a missing file: got %v; want nil", err)
	}
	if err := src.Run(context.Background(), func(sensor.Frame) {}); err == nil || !strings.Contains(err.Error(), "csv.path") {
		t.Errorf("Run with a missing file: got %v; want an error naming csv.path", err)
	}
	empty := filepath.Join(dir, "empty.csv")
	os.WriteFile(empty, []byte("a,b\n"), 0o644)
	src, _ = csv.New(sensor.Spec{Name: "e", CSV: sensor.CSVSpec{Path: empty, Loop: true}}, sensor.Deps{})
	if err := src.Run(context.Background(), func(sensor.Frame) {}); err == nil || !strings.Contains(err.Error(), "no usable rows") {
		t.Errorf("Loop over a header-only file: got %v; want an error, not a busy loop", err)
	}
}
