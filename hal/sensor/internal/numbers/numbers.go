// Package numbers decodes the JSON readings that the command (ndjson) and mqtt kinds accept:
// an array of numbers, or an object of name → number. It imports nothing from agent/.
package numbers

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
)

// Parse decodes b. For an object, names come back sorted and values in the same order, so
// every message of a topic lines up the same way whatever order its keys were written in.
// null elements are refused: decoding them as 0 would feed a model a reading nobody took.
func Parse(b []byte) (values []float64, names []string, err error) {
	b = bytes.TrimSpace(b)
	if len(b) == 0 {
		return nil, nil, errors.New("empty message")
	}
	switch b[0] {
	case '[':
		var a []*float64
		if err := json.Unmarshal(b, &a); err != nil {
			return nil, nil, fmt.Errorf("want a JSON array of numbers: %w", err)
		}
		if len(a) == 0 {
			return nil, nil, errors.New("empty array")
		}
		values = make([]float64, len(a))
		for i, p := range a {
			if p == nil {
				return nil, nil, fmt.Errorf("element %d is null", i)
			}
			values[i] = *p
		}
		return values, nil, nil
	case '{':
		var m map[string]*float64
		if err := json.Unmarshal(b, &m); err != nil {
			return nil, nil, fmt.Errorf("want a JSON object of numbers: %w", err)
		}
		if len(m) == 0 {
			return nil, nil, errors.New("empty object")
		}
		for k := range m {
			names = append(names, k)
		}
		slices.Sort(names)
		values = make([]float64, len(names))
		for i, k := range names {
			if m[k] == nil {
				return nil, nil, fmt.Errorf("field %q is null", k)
			}
			values[i] = *m[k]
		}
		return values, names, nil
	}
	return nil, nil, fmt.Errorf("want a JSON array or object of numbers, got %q", truncate(b, 40))
}

func truncate(b []byte, n int) string {
	if len(b) > n {
		return string(b[:n]) + "…"
	}
	return string(b)
}
