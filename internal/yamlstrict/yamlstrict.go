// Package yamlstrict decodes YAML into Go types with errors a person can act on: every unknown
// key and every value of the wrong kind is reported by its path (log.colour, sources[1].rate,
// input.image.mean) and line, never by the Go type the decoder was filling, and all of them
// at once (up to 10). It is how the agent's config, model spec files and bundle pack specs
// are read.
package yamlstrict

import (
	"encoding"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// maxKeyErrors bounds how many key errors one message lists.
const maxKeyErrors = 10

var (
	unmarshalerType = reflect.TypeFor[yaml.Unmarshaler]()
	// Types that decode themselves from one scalar (time.Time, net addresses) are values, not
	// mappings of settings.
	textUnmarshalerType = reflect.TypeFor[encoding.TextUnmarshaler]()
	durationType        = reflect.TypeFor[time.Duration]()
)

// Decode decodes data into v (a pointer), after Check. An empty document leaves v as it is.
func Decode(data []byte, v any) error {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return err
	}
	if len(doc.Content) == 0 {
		return nil
	}
	if err := Check(&doc, reflect.TypeOf(v).Elem()); err != nil {
		return err
	}
	return doc.Decode(v)
}

// Check walks a document against type t before it is decoded, so that an unknown key or a
// value of the wrong type is reported by its path and line, not by the Go type the decoder
// was filling. A single number where a list of numbers is wanted (mean: 127.5) is taken as a
// list of one: the node is rewritten, so decode the checked node.
func Check(doc *yaml.Node, t reflect.Type) error {
	var errs []string
	walkKeys(doc, t, "", &errs)
	if len(errs) == 0 {
		return nil
	}
	if len(errs) > maxKeyErrors {
		errs = append(errs[:maxKeyErrors], fmt.Sprintf("and %d more", len(errs)-maxKeyErrors))
	}
	return errors.New(strings.Join(errs, "; "))
}

func walkKeys(n *yaml.Node, t reflect.Type, path string, errs *[]string) {
	for n.Kind == yaml.DocumentNode && len(n.Content) == 1 {
		n = n.Content[0]
	}
	if n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	at := func(format string, a ...any) {
		name := path
		if name == "" {
			name = "the config"
		}
		*errs = append(*errs, fmt.Sprintf("%s (line %d): %s", name, n.Line, fmt.Sprintf(format, a...)))
	}
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return // an empty value leaves the default
	}
	if p := reflect.PointerTo(t); p.Implements(unmarshalerType) || p.Implements(textUnmarshalerType) || t.Kind() == reflect.Interface {
		if err := n.Decode(reflect.New(t).Interface()); err != nil {
			at("%s", strings.TrimPrefix(err.Error(), fmt.Sprintf("line %d: ", n.Line)))
		}
		return
	}
	switch t.Kind() {
	case reflect.Struct:
		if n.Kind != yaml.MappingNode {
			at("want a mapping of settings (key: value), not %s", describeNode(n))
			return
		}
		fields := yamlFields(t)
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			ft, ok := fields[k.Value]
			if !ok {
				known := make([]string, 0, len(fields))
				for name := range fields {
					known = append(known, name)
				}
				slices.Sort(known)
				*errs = append(*errs, fmt.Sprintf("%s (line %d): unknown key; the keys here are %s", join(path, k.Value), k.Line, strings.Join(known, ", ")))
				continue
			}
			walkKeys(v, ft, join(path, k.Value), errs)
		}
	case reflect.Map:
		if n.Kind != yaml.MappingNode {
			at("want a mapping, not %s", describeNode(n))
			return
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			walkKeys(n.Content[i+1], t.Elem(), join(path, n.Content[i].Value), errs)
		}
	case reflect.Slice, reflect.Array:
		if n.Kind == yaml.ScalarNode && isNumber(t.Elem()) {
			// mean: 127.5 for mean: [127.5]: one value for every channel.
			one := *n
			n.Kind, n.Tag, n.Value, n.Style, n.Content = yaml.SequenceNode, "!!seq", "", yaml.FlowStyle, []*yaml.Node{&one}
		}
		if n.Kind != yaml.SequenceNode {
			at("want a list, not %s", describeNode(n))
			return
		}
		for i, e := range n.Content {
			walkKeys(e, t.Elem(), fmt.Sprintf("%s[%d]", path, i), errs)
		}
	default:
		if n.Kind != yaml.ScalarNode {
			at("want %s, not %s", describeType(t), describeNode(n))
			return
		}
		if err := n.Decode(reflect.New(t).Interface()); err != nil {
			at("%q is not %s", n.Value, describeType(t))
		}
	}
}

// yamlFields maps the YAML keys of struct t (inline structs included) to their types.
func yamlFields(t reflect.Type) map[string]reflect.Type {
	fields := map[string]reflect.Type{}
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		name, opts, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if name == "-" {
			continue
		}
		if strings.Contains(","+opts+",", ",inline,") {
			for k, v := range yamlFields(f.Type) {
				fields[k] = v
			}
			continue
		}
		if name == "" {
			name = strings.ToLower(f.Name) // yaml.v3's default
		}
		fields[name] = f.Type
	}
	return fields
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func isNumber(t reflect.Type) bool {
	switch t.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64,
		reflect.Float32, reflect.Float64:
		return true
	}
	return false
}

func describeNode(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	}
	return fmt.Sprintf("%q", n.Value)
}

func describeType(t reflect.Type) string {
	if t == durationType {
		return "a duration (such as 500ms, 30s, 5m)"
	}
	switch t.Kind() {
	case reflect.Bool:
		return "true or false"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "a whole number"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.String:
		return "text"
	}
	return "a value"
}
