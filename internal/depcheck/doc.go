// Package depcheck holds the test that enforces the import rules of docs/architecture.md
// (as tailscale's deps tests do): hal and models never import agent; stage packages never
// import one another; each heavy library has exactly one importer; everything but the engine
// builds without cgo. It also tests scripts/check-tracked.sh, the `make lint` check that no
// build output (executables, files over 1 MiB outside testdata/) is committed.
package depcheck
