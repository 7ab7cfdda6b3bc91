// Package tflitefmt reads the parts of a TensorFlow Lite flatbuffer the agent needs before
// (or without) the runtime: the schema version, the operator codes (builtin and custom) and
// the description. It bounds-checks every offset, so a truncated or random file is refused
// with an error instead of reaching the C runtime. Pure Go, no cgo; imports nothing of agent/.
package tflitefmt

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sort"
)

// ErrFormat is wrapped by every error about a malformed file.
var ErrFormat = errors.New("not a TensorFlow Lite flatbuffer")

// Op is one operator code of the model.
type Op struct {
	Builtin int    // builtin operator code; 32 (CUSTOM) for custom ops
	Custom  string // custom op name when Builtin is CUSTOM
	Version int
}

// Name is the op's readable name: the builtin name or the custom name.
func (o Op) Name() string {
	if o.Builtin == opCustom {
		return o.Custom
	}
	return BuiltinName(o.Builtin)
}

// Model is what the reader extracts.
type Model struct {
	SchemaVersion uint32
	Description   string
	Ops           []Op
	Subgraphs     int
	Operators     int // operator instances across subgraphs
}

// CustomOps returns the distinct custom op names, sorted.
func (m Model) CustomOps() []string {
	set := map[string]bool{}
	for _, o := range m.Ops {
		if o.Builtin == opCustom {
			set[o.Custom] = true
		}
	}
	return sortedKeys(set)
}

// OpNames returns the distinct op names, sorted.
func (m Model) OpNames() []string {
	set := map[string]bool{}
	for _, o := range m.Ops {
		set[o.Name()] = true
	}
	return sortedKeys(set)
}

func sortedKeys(set map[string]bool) []string {
	out := make([]string, 0, len(set))
	for k := range set {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

const (
	opCustom   = 32
	maxVector  = 1 << 20 // no real model has a million operator codes; bounds the work on garbage
	identifier = "TFL3"
)

// Parse reads a model from its bytes.
func Parse(b []byte) (Model, error) {
	var m Model
	if len(b) < 8 {
		return m, fmt.Errorf("%w: %d bytes is too short", ErrFormat, len(b))
	}
	if string(b[4:8]) != identifier {
		return m, fmt.Errorf("%w: file identifier is %q, want %q", ErrFormat, b[4:8], identifier)
	}
	r := reader{b: b}
	root, err := r.uoffset(0)
	if err != nil {
		return m, err
	}
	t, err := r.table(root)
	if err != nil {
		return m, fmt.Errorf("model table: %w", err)
	}
	if p, ok := t.field(0); ok {
		v, err := r.u32(p)
		if err != nil {
			return m, err
		}
		m.SchemaVersion = v
	}
	if m.SchemaVersion != 3 {
		return m, fmt.Errorf("%w: schema version %d, this runtime reads version 3", ErrFormat, m.SchemaVersion)
	}
	if p, ok := t.field(3); ok {
		if m.Description, err = r.str(p); err != nil {
			return m, fmt.Errorf("description: %w", err)
		}
	}
	if p, ok := t.field(1); ok {
		elems, err := r.vector(p, 4)
		if err != nil {
			return m, fmt.Errorf("operator_codes: %w", err)
		}
		for i, e := range elems {
			op, err := r.opCode(e)
			if err != nil {
				return m, fmt.Errorf("operator_codes[%d]: %w", i, err)
			}
			m.Ops = append(m.Ops, op)
		}
	}
	if p, ok := t.field(2); ok {
		subs, err := r.vector(p, 4)
		if err != nil {
			return m, fmt.Errorf("subgraphs: %w", err)
		}
		m.Subgraphs = len(subs)
		for i, e := range subs {
			sp, err := r.uoffset(e)
			if err != nil {
				return m, fmt.Errorf("subgraphs[%d]: %w", i, err)
			}
			st, err := r.table(sp)
			if err != nil {
				return m, fmt.Errorf("subgraphs[%d]: %w", i, err)
			}
			if p, ok := st.field(3); ok {
				ops, err := r.vector(p, 4)
				if err != nil {
					return m, fmt.Errorf("subgraphs[%d].operators: %w", i, err)
				}
				m.Operators += len(ops)
			}
		}
	}
	if m.Subgraphs == 0 {
		return m, fmt.Errorf("%w: no subgraphs", ErrFormat)
	}
	return m, nil
}

func (r reader) opCode(elemPos int) (Op, error) {
	p, err := r.uoffset(elemPos)
	if err != nil {
		return Op{}, err
	}
	t, err := r.table(p)
	if err != nil {
		return Op{}, err
	}
	op := Op{Version: 1}
	deprecated := 0
	if f, ok := t.field(0); ok {
		if f >= len(r.b) {
			return op, fmt.Errorf("%w: field out of range", ErrFormat)
		}
		deprecated = int(int8(r.b[f]))
	}
	if f, ok := t.field(1); ok {
		if op.Custom, err = r.str(f); err != nil {
			return op, err
		}
	}
	if f, ok := t.field(2); ok {
		v, err := r.u32(f)
		if err != nil {
			return op, err
		}
		op.Version = int(int32(v))
	}
	builtin := 0
	if f, ok := t.field(3); ok {
		v, err := r.u32(f)
		if err != nil {
			return op, err
		}
		builtin = int(int32(v))
	}
	// Old files carry the code only in the byte field, new ones in both (the byte saturates
	// at 127 for codes past it): the larger of the two is the real code.
	op.Builtin = max(builtin, deprecated)
	return op, nil
}

type reader struct{ b []byte }

func (r reader) u32(p int) (uint32, error) {
	if p < 0 || p+4 > len(r.b) {
		return 0, fmt.Errorf("%w: offset %d out of range (file is %d bytes; truncated?)", ErrFormat, p, len(r.b))
	}
	return binary.LittleEndian.Uint32(r.b[p:]), nil
}

func (r reader) u16(p int) (uint16, error) {
	if p < 0 || p+2 > len(r.b) {
		return 0, fmt.Errorf("%w: offset %d out of range (file is %d bytes; truncated?)", ErrFormat, p, len(r.b))
	}
	return binary.LittleEndian.Uint16(r.b[p:]), nil
}

// uoffset follows the unsigned offset stored at p.
func (r reader) uoffset(p int) (int, error) {
	v, err := r.u32(p)
	if err != nil {
		return 0, err
	}
	q := p + int(v)
	if v == 0 || q >= len(r.b) {
		return 0, fmt.Errorf("%w: offset at %d points outside the file", ErrFormat, p)
	}
	return q, nil
}

type table struct {
	pos    int
	fields []uint16
}

func (r reader) table(p int) (table, error) {
	so, err := r.u32(p)
	if err != nil {
		return table{}, err
	}
	vt := p - int(int32(so))
	vsize, err := r.u16(vt)
	if err != nil {
		return table{}, err
	}
	if vsize < 4 || vsize%2 != 0 || vt+int(vsize) > len(r.b) {
		return table{}, fmt.Errorf("%w: bad vtable at %d", ErrFormat, vt)
	}
	n := int(vsize-4) / 2
	t := table{pos: p, fields: make([]uint16, n)}
	for i := range n {
		t.fields[i], _ = r.u16(vt + 4 + 2*i)
	}
	return t, nil
}

// field returns the absolute position of field i, if present.
func (t table) field(i int) (int, bool) {
	if i >= len(t.fields) || t.fields[i] == 0 {
		return 0, false
	}
	return t.pos + int(t.fields[i]), true
}

// vector returns the positions of a vector's elements (each elemSize bytes).
func (r reader) vector(fieldPos, elemSize int) ([]int, error) {
	p, err := r.uoffset(fieldPos)
	if err != nil {
		return nil, err
	}
	n, err := r.u32(p)
	if err != nil {
		return nil, err
	}
	if n > maxVector || p+4+int(n)*elemSize > len(r.b) {
		return nil, fmt.Errorf("%w: vector of %d elements at %d runs past the end of the file", ErrFormat, n, p)
	}
	out := make([]int, n)
	for i := range out {
		out[i] = p + 4 + i*elemSize
	}
	return out, nil
}

func (r reader) str(fieldPos int) (string, error) {
	p, err := r.uoffset(fieldPos)
	if err != nil {
		return "", err
	}
	n, err := r.u32(p)
	if err != nil {
		return "", err
	}
	if p+4+int(n) > len(r.b) {
		return "", fmt.Errorf("%w: string at %d runs past the end of the file", ErrFormat, p)
	}
	return string(r.b[p+4 : p+4+int(n)]), nil
}
