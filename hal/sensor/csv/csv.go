// Package csv is the "csv" source kind: it replays the rows of a CSV file as value frames,
// paced by the spec's interval, optionally in a loop. It imports nothing from agent/.
package csv

import (
	"bufio"
	"context"
	stdcsv "encoding/csv"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/edge-agent/edge-agent/hal/sensor"
	"github.com/edge-agent/edge-agent/hal/sensor/internal/pace"
)

func init() { sensor.Kinds.Register("csv", New) }

type source struct {
	name   string
	cfg    sensor.CSVSpec
	header bool
	pacer  pace.Pacer
}

// New validates spec.CSV. When the file already exists its header is checked against
// Columns now, so a misspelt column is a configuration error rather than a retry loop.
func New(spec sensor.Spec, _ sensor.Deps) (sensor.Source, error) {
	c := spec.CSV
	s := &source{name: spec.Name, cfg: c, header: c.Header == nil || *c.Header, pacer: pace.Pacer{Period: spec.Period()}}
	if c.Path == "" {
		return nil, fmt.Errorf("source %q: csv.path: must not be empty", spec.Name)
	}
	for i, col := range c.Columns {
		if col == "" {
			return nil, fmt.Errorf("source %q: csv.columns[%d]: must not be empty", spec.Name, i)
		}
	}
	if len(c.Columns) > 0 && !s.header {
		return nil, fmt.Errorf("source %q: csv.columns: names columns, but csv.header is false so the file has no names", spec.Name)
	}
	if len(c.Columns) > 0 {
		if f, err := os.Open(c.Path); err == nil {
			defer f.Close()
			r := newReader(f)
			if hdr, err := r.Read(); err == nil {
				if _, err := s.pick(cleanHeader(hdr)); err != nil {
					return nil, err
				}
			}
		}
	}
	return s, nil
}

func newReader(r io.Reader) *stdcsv.Reader {
	cr := stdcsv.NewReader(bufio.NewReader(r))
	cr.FieldsPerRecord = -1 // ragged rows are reported one by one, not fatal for the file
	cr.LazyQuotes = true
	cr.TrimLeadingSpace = true
	cr.ReuseRecord = true
	return cr
}

// cleanHeader copies the header row, trimming spaces and the UTF-8 byte order mark that
// spreadsheet exports put in front of the first name.
func cleanHeader(rec []string) []string {
	h := make([]string, len(rec))
	for i, s := range rec {
		h[i] = strings.TrimSpace(s)
	}
	if len(h) > 0 {
		h[0] = strings.TrimPrefix(h[0], "\ufeff")
	}
	return h
}

// pick maps Columns to indices of header.
func (s *source) pick(header []string) ([]int, error) {
	idx := make([]int, len(s.cfg.Columns))
	for i, col := range s.cfg.Columns {
		idx[i] = slices.Index(header, col)
		if idx[i] < 0 {
			return nil, fmt.Errorf("source %q: csv.columns[%d]: column %q is not in the header of %s (have %s)",
				s.name, i, col, s.cfg.Path, strings.Join(header, ", "))
		}
	}
	return idx, nil
}

// Run replays the file. Rows whose selected cells are not numbers are skipped and reported.
// At the end it returns nil, or starts again with Loop.
func (s *source) Run(ctx context.Context, emit sensor.Emit) error {
	f, err := os.Open(s.cfg.Path)
	if err != nil {
		return fmt.Errorf("source %q: csv.path: %w", s.name, err)
	}
	defer f.Close()
	pacer := s.pacer
	var (
		cols  []int    // selected column indices, fixed by the first pass
		names []string // their header names (nil without a header)
	)
	for {
		if _, err := f.Seek(0, io.SeekStart); err != nil {
			return fmt.Errorf("source %q: csv %s: %w", s.name, s.cfg.Path, err)
		}
		r := newReader(f)
		var header []string
		if s.header {
			rec, err := r.Read()
			if err == io.EOF {
				return fmt.Errorf("source %q: csv %s: empty file, expected a header row", s.name, s.cfg.Path)
			}
			if err != nil {
				return fmt.Errorf("source %q: csv %s: header: %w", s.name, s.cfg.Path, err)
			}
			header = cleanHeader(rec)
			if len(s.cfg.Columns) > 0 && cols == nil {
				if cols, err = s.pick(header); err != nil {
					return err
				}
				names = slices.Clone(s.cfg.Columns)
			}
		}
		rows := 0
		for {
			if ctx.Err() != nil {
				return nil
			}
			rec, err := r.Read()
			if err == io.EOF {
				break
			}
			if pe := (*stdcsv.ParseError)(nil); errors.As(err, &pe) {
				sensor.Report(ctx, fmt.Errorf("source %q: csv %s: row skipped: %w", s.name, s.cfg.Path, err))
				continue
			}
			if err != nil {
				return fmt.Errorf("source %q: csv %s: %w", s.name, s.cfg.Path, err)
			}
			line, _ := r.FieldPos(0)
			if cols == nil {
				// Without Columns, the numeric cells of the first data row choose the columns
				// (a label column such as "Iris-setosa" is left out).
				cols, names = numericColumns(rec, header)
				if len(cols) == 0 {
					return fmt.Errorf("source %q: csv %s line %d: no numeric cells; name the columns in csv.columns", s.name, s.cfg.Path, line)
				}
			}
			vals, err := values(rec, cols, names)
			if err != nil {
				sensor.Report(ctx, fmt.Errorf("source %q: csv %s line %d: row skipped: %w", s.name, s.cfg.Path, line, err))
				continue
			}
			if !pacer.Wait(ctx) {
				return nil
			}
			emit(sensor.Frame{Values: vals, Names: names, Ref: fmt.Sprintf("%s:%d", s.cfg.Path, line)})
			rows++
		}
		if !s.cfg.Loop {
			return nil
		}
		if rows == 0 {
			// Looping over nothing would spin; fail so the runner backs off and says why.
			return fmt.Errorf("source %q: csv %s: no usable rows to loop over", s.name, s.cfg.Path)
		}
	}
}

func numericColumns(rec, header []string) (cols []int, names []string) {
	for i, cell := range rec {
		if _, err := strconv.ParseFloat(strings.TrimSpace(cell), 64); err != nil {
			continue
		}
		cols = append(cols, i)
		if i < len(header) {
			names = append(names, header[i])
		}
	}
	if len(names) != len(cols) {
		names = nil // header shorter than the row: better no names than shifted ones
	}
	return cols, names
}

// values parses the selected cells; names (may be nil) label them in errors.
func values(rec []string, cols []int, names []string) ([]float64, error) {
	v := make([]float64, len(cols))
	for i, c := range cols {
		col := fmt.Sprintf("column %d", c+1)
		if i < len(names) {
			col = fmt.Sprintf("column %q", names[i])
		}
		if c >= len(rec) {
			return nil, fmt.Errorf("%s missing (row has %d cells)", col, len(rec))
		}
		x, err := strconv.ParseFloat(strings.TrimSpace(rec[c]), 64)
		if err != nil || math.IsNaN(x) || math.IsInf(x, 0) {
			// NaN and Inf parse, but a model fed them gives garbage: treat as missing.
			return nil, fmt.Errorf("%s: %q is not a finite number", col, rec[c])
		}
		v[i] = x
	}
	return v, nil
}
