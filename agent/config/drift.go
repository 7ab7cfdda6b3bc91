package config

// Drift configures the drift monitor (docs/drift.md).
type Drift struct{}

func (d *Drift) applyDefaults() {}

func (d *Drift) validate(bad func(field, format string, a ...any)) {}
