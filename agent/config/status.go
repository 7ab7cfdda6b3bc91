package config

// Status configures the local HTTP server (status page, /metrics, health, predict API).
type Status struct{}

func (s *Status) applyDefaults(c *Config) {}

func (s *Status) validate(bad func(field, format string, a ...any)) {}
