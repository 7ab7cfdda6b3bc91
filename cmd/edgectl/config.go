package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
)

// cmdConfig: edgectl config TARGET [--set KEY=VALUE]... [--unset KEY]...
//
// Without --set or --unset it reports the devices' fleet settings. Values are sent as text
// and read on the device as in its YAML file ("10s", "256MiB", "true").
func cmdConfig(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("config", flag.ContinueOnError)
	fs.SetOutput(stderr)
	o := addSendFlags(fs)
	var set, unset multiFlag
	fs.Var(&set, "set", "KEY=VALUE to set (repeatable), e.g. mqtt.metrics_every=10s")
	fs.Var(&unset, "unset", "KEY to go back to the config file's value (repeatable)")
	pos, err := parseMixed(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 0 {
		return usageError{errors.New("config takes no arguments: use --set KEY=VALUE and --unset KEY")}
	}
	a := struct {
		Set   map[string]string `json:"set,omitempty"`
		Unset []string          `json:"unset,omitempty"`
	}{Unset: unset}
	for _, kv := range set {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return usageError{fmt.Errorf("--set %q: write KEY=VALUE, e.g. --set mqtt.metrics_every=10s", kv)}
		}
		if a.Set == nil {
			a.Set = map[string]string{}
		}
		a.Set[k] = v
	}
	b, _ := json.Marshal(a)
	return o.send("config", b, false, stdout, stderr)
}
