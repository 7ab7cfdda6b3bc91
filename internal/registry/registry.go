// Package registry is the name → factory table that plug-in kinds (inference engines, sensor
// kinds) fill from their init functions. It is written only during package initialisation
// and read-only afterwards, so it needs no lock.
package registry

import (
	"fmt"
	"sort"
)

// Registry maps names to values of type F.
type Registry[F any] struct {
	what string // "engine", "source kind": for the duplicate panic
	m    map[string]F
}

// New returns an empty registry of the named thing.
func New[F any](what string) *Registry[F] {
	return &Registry[F]{what: what, m: map[string]F{}}
}

// Register adds a name; a duplicate is a programming error found at init.
func (r *Registry[F]) Register(name string, f F) {
	if _, dup := r.m[name]; dup {
		panic(fmt.Sprintf("registry: %s %q registered twice", r.what, name))
	}
	r.m[name] = f
}

// Names lists the registered names, sorted.
func (r *Registry[F]) Names() []string {
	n := make([]string, 0, len(r.m))
	for k := range r.m {
		n = append(n, k)
	}
	sort.Strings(n)
	return n
}

// Lookup returns the value registered under name.
func (r *Registry[F]) Lookup(name string) (F, bool) {
	f, ok := r.m[name]
	return f, ok
}
