package agent

// The config command: the fleet changes a whitelisted set of settings (config.Settable),
// validated as a whole, kept in <state_dir>/config-overrides.json and applied on top of the
// config file at every start. Live settings change at once; the others make the agent reload
// (a clean stop and start in the same process, see ErrReload) a moment after the reply.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"time"

	"github.com/edge-agent/edge-agent/agent/command"
	"github.com/edge-agent/edge-agent/agent/config"
)

// reloadDelay leaves the link time to send the config command's done reply before the
// agent stops for a reload.
const reloadDelay = time.Second

// applyOverrides applies the persisted fleet settings to the file's config. Overrides that
// no longer validate (a config file edited since, say) are reported and ignored: the device
// runs on its file rather than not at all.
func applyOverrides(cfg *config.Config, log *slog.Logger) (*config.Config, error) {
	path := config.OverridesFile(cfg.StateDir)
	ov, err := config.ReadOverrides(path)
	if err == nil && len(ov.Set) > 0 {
		var eff *config.Config
		if eff, err = cfg.WithOverrides(ov.Set); err == nil {
			if err = validLink(eff); err == nil {
				log.Info("fleet settings applied", "file", path, "settings", ov.Set)
				return eff, nil
			}
		}
		err = fmt.Errorf("fleet settings in %s ignored: %w (send a config command to fix them, or delete the file)", path, err)
	}
	if err != nil {
		log.Error("config overrides", "err", err)
	}
	return cfg, err
}

// validLink checks the mqtt settings the way the link will when it starts.
func validLink(cfg *config.Config) error {
	if cfg.MQTT.Broker == "" {
		return nil
	}
	lc, err := linkConfig(cfg)
	if err == nil {
		err = lc.Validate()
	}
	return err
}

// configArgs: {"set": {KEY: VALUE, ...}, "unset": [KEY, ...]}; both optional (neither: report
// the settings).
type configArgs struct {
	Set   map[string]any `json:"set"`
	Unset []string       `json:"unset"`
}

// configHandler adds the config command.
func (a *Agent) configHandler(h map[string]command.Handler) {
	h["config"] = func(ctx context.Context, c command.Command, _ command.Progress) (any, error) {
		var args configArgs
		if len(c.Args) > 0 {
			if err := json.Unmarshal(c.Args, &args); err != nil {
				return nil, fmt.Errorf(`config needs args {"set": {"mqtt.metrics_every": "10s", ...}, "unset": ["outbox.max_age"]}: %v`, err)
			}
		}
		path := config.OverridesFile(a.base.StateDir)
		ov, err := config.ReadOverrides(path)
		if err != nil {
			ov = config.Overrides{Set: map[string]string{}} // a damaged file is replaced by this command
		}
		next := maps.Clone(ov.Set)
		for _, k := range args.Unset {
			if _, ok := config.SettingNamed(k); !ok {
				return nil, fmt.Errorf("unset %s: not a fleet setting; settable are %v", k, config.SettableKeys())
			}
			delete(next, k)
		}
		for k, v := range args.Set {
			text, err := scalarText(v)
			if err != nil {
				return nil, fmt.Errorf("set %s: %w", k, err)
			}
			next[k] = text
		}
		eff, err := a.base.WithOverrides(next)
		if err == nil {
			err = validLink(eff)
		}
		if err != nil {
			return nil, fmt.Errorf("refused, nothing changed: %w", err)
		}
		prev := a.cfg
		if p, err := a.base.WithOverrides(ov.Set); err == nil {
			prev = p // what the settings are now, including earlier live changes
		}
		var changed, live, atReload []string
		for _, s := range config.Settable() {
			was, _ := prev.Get(s.Key)
			now, _ := eff.Get(s.Key)
			if was == now {
				continue
			}
			changed = append(changed, s.Key)
			if s.Live {
				live = append(live, s.Key)
			} else {
				atReload = append(atReload, s.Key)
			}
		}
		if len(args.Set)+len(args.Unset) > 0 {
			if err := config.WriteOverrides(path, config.Overrides{Set: next, Updated: time.Now().UTC(), By: c.ID}); err != nil {
				return nil, fmt.Errorf("keep the settings: %w", err)
			}
		}
		if slices.Contains(live, "log.level") && a.logLevel != nil {
			var lvl slog.Level
			if lvl.UnmarshalText([]byte(eff.Log.Level)) == nil {
				a.logLevel.Set(lvl)
			}
		}
		if len(atReload) > 0 {
			select { // Run waits reloadDelay, so the done reply goes out first
			case a.reload <- ErrReload:
			default:
			}
		}
		effective := map[string]string{}
		for _, k := range config.SettableKeys() {
			effective[k], _ = eff.Get(k)
		}
		return map[string]any{"overrides": next, "effective": effective, "changed": nonNilStrings(changed),
			"applied_now": nonNilStrings(live), "reload": len(atReload) > 0}, nil
	}
}

// scalarText is a JSON scalar as YAML text: "10s" → 10s, 5 → 5, true → true.
func scalarText(v any) (string, error) {
	switch x := v.(type) {
	case string:
		return x, nil
	case bool:
		return strconv.FormatBool(x), nil
	case float64:
		return strconv.FormatFloat(x, 'f', -1, 64), nil
	}
	return "", errors.New("the value must be a string, number or boolean")
}

func nonNilStrings(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}
