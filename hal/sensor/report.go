package sensor

import (
	"context"
	"log/slog"
)

type reportKey struct{}

// WithReport returns a context whose Report calls go to fn. The Runner installs one around
// each Source.Run; tests install their own to see what a source reported.
func WithReport(ctx context.Context, fn func(error)) context.Context {
	return context.WithValue(ctx, reportKey{}, fn)
}

// Report tells whoever runs the source about a problem it recovered from (a corrupt file in
// a watched folder, a non-numeric CSV cell, a malformed payload): the input is skipped and the
// source keeps going, yet the problem must be visible, so the Runner logs it and counts it
// in RunnerStats.Errors. ctx is the one given to Source.Run. Without a reporter in ctx the
// error goes to slog.Default.
func Report(ctx context.Context, err error) {
	if fn, ok := ctx.Value(reportKey{}).(func(error)); ok && fn != nil {
		fn(err)
		return
	}
	slog.Default().Warn("sensor: input skipped", "err", err)
}
