package agent

// Fleet commands: the router (agent/command) decodes, checks, de-duplicates and dispatches
// what arrives on the command topics; the handlers below act on the agent's parts. Command
// ids are remembered in the state store (agent/state) so a replayed command does nothing,
// also after a restart.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/edge-agent/edge-agent/agent/command"
	"github.com/edge-agent/edge-agent/agent/config"
	"github.com/edge-agent/edge-agent/agent/deploy"
	"github.com/edge-agent/edge-agent/agent/result"
	"github.com/edge-agent/edge-agent/agent/state"
	"github.com/edge-agent/edge-agent/models/sign"
)

// rememberIDs bounds the command ids kept against replays.
const rememberIDs = 10_000

// maxBundleBytes bounds a bundle downloaded by a deploy command.
const maxBundleBytes = 512 << 20

// noCommandKeyHint says how to give a device a command key.
const noCommandKeyHint = "add the fleet's command public key to commands.trusted_keys in the agent's config (edgectl keygen --out command prints it; docs/security.md)"

// commandVerifier checks command envelopes against keys: a signature by one of them, made
// for a command (sign.CheckCommand). No keys: nil, and the router takes no signed command.
func commandVerifier(keys []string) (func(body, sig []byte) error, error) {
	if len(keys) == 0 {
		return nil, nil
	}
	v, err := sign.VerifierFromConfig(keys)
	if err != nil {
		return nil, err
	}
	return v.VerifyCommand, nil
}

// startCommands opens the state store and builds the command router.
func (a *Agent) startCommands() error {
	f := a.fleet
	path := filepath.Join(a.cfg.StateDir, "state.db")
	st, err := state.Open(path)
	var recovered *state.Recovered
	if errors.Is(err, state.ErrDamaged) {
		// A damaged state file must not stop the agent: keep it for inspection and start a
		// new one with the command ids that can still be read from it.
		moved, merr := moveAside(a.log, "state store", path, err)
		if merr != nil {
			return merr
		}
		var rec state.Recovered
		st, rec, err = state.Salvage(path, moved)
		recovered = &rec
	}
	if err != nil {
		return fmt.Errorf("state store: %w", err)
	}
	verify, err := commandVerifier(a.cfg.Keys(config.RoleCommands))
	if err != nil {
		st.Close()
		return fmt.Errorf("commands.trusted_keys: %w", err)
	}
	clock, err := state.OpenClock(filepath.Join(a.cfg.StateDir, "command-clock.json"))
	if err != nil {
		st.Close()
		return fmt.Errorf("commands: %w", err)
	}
	if clock.Warning != "" {
		a.log.Warn(clock.Warning)
	}
	if recovered != nil {
		msg := fmt.Sprintf("the state file was damaged and moved to %s; all %d command ids it remembered were kept. Check the disk (dmesg, SMART), then delete the moved file", recovered.From, recovered.IDs)
		if !recovered.Whole {
			// Fail closed: a replay of a command whose id was lost cannot be told apart, so
			// nothing issued before now is taken.
			now := time.Now()
			if err := clock.RefuseBefore(now); err != nil {
				st.Close()
				return fmt.Errorf("commands: after a damaged state file: %w", err)
			}
			msg = fmt.Sprintf("the state file was damaged and moved to %s; %d command ids were read back, others were lost, so commands issued before %s are refused (issue them again). Check the disk (dmesg, SMART), then delete the moved file",
				recovered.From, recovered.IDs, now.UTC().Format(time.RFC3339))
		}
		f.reportDamaged("state-damaged", "commands", msg, map[string]any{"moved_to": recovered.From, "salvage": recovered})
	}
	r, err := command.New(command.Options{
		Clock:         clock,
		Device:        a.cfg.Device,
		Groups:        a.cfg.MQTT.Groups,
		AllowUnsigned: !a.cfg.SignedCommands(),
		NoKeyHint:     noCommandKeyHint,
		Handlers:      a.commandHandlers(),
		Reply: func(rep command.Reply) {
			if b, err := json.Marshal(rep); err == nil {
				f.link.Reply(b)
			}
			if rep.Status == command.StatusAccepted {
				a.log.Debug("command accepted", "id", rep.ID, "type", rep.Type)
			}
			if rep.Status == command.StatusDone || rep.Status == command.StatusFailed {
				sev := "info"
				if rep.Status == command.StatusFailed {
					sev = "warning"
				}
				a.log.Info("command "+rep.Status, "id", rep.ID, "type", rep.Type, "reason", rep.Reason)
				f.emit(result.Event{Type: "command." + rep.Status, Severity: sev, Component: "command", Message: fmt.Sprintf("%s %s %s %s", rep.Type, rep.ID, rep.Status, rep.Reason)})
			}
		},
		Remember: func(id string, until time.Time) (bool, error) { return st.Remember(id, until, time.Now(), rememberIDs) },
		Verify:   verify,
		Logger:   a.log.With("part", "command"),
	})
	if err != nil {
		st.Close()
		return fmt.Errorf("commands: %w", err)
	}
	f.state, f.router = st, r
	return nil
}

// commandHandlers are the command types this agent carries out.
func (a *Agent) commandHandlers() map[string]command.Handler {
	h := map[string]command.Handler{
		"ping": func(context.Context, command.Command, command.Progress) (any, error) {
			return map[string]any{"pong": time.Now().UTC(), "agent_version": Version}, nil
		},
		"status": func(context.Context, command.Command, command.Progress) (any, error) {
			s := a.statusFields()
			s["fleet"] = a.FleetStats()
			s["health_conditions"] = a.health.List()
			s["model_stats"] = a.pipe.Stats()
			return s, nil
		},
	}
	h["rollback"] = func(ctx context.Context, c command.Command, _ command.Progress) (any, error) {
		var args struct{ Model, Version string }
		if err := json.Unmarshal(c.Args, &args); err != nil || args.Model == "" {
			return nil, errors.New(`rollback needs args {"model": NAME, "version": optional}`)
		}
		if a.deploy == nil {
			return nil, errors.New("no model on this device is served from bundles")
		}
		if err := a.deploy.Rollback(ctx, args.Model, args.Version); err != nil {
			return nil, err
		}
		return map[string]string{"model": args.Model, "active": a.activeVersion(args.Model)}, nil
	}
	h["ab"] = func(ctx context.Context, c command.Command, _ command.Progress) (any, error) {
		var args struct {
			Model   string   `json:"model"`
			Version string   `json:"version"`
			Weight  *float64 `json:"weight"`
			Mode    string   `json:"mode"`
		}
		if err := json.Unmarshal(c.Args, &args); err != nil || args.Model == "" || args.Version == "" ||
			(args.Mode != "shadow" && (args.Mode != "" && args.Mode != "split" || args.Weight == nil)) {
			return nil, errors.New(`ab needs args {"model": NAME, "version": INSTALLED_VERSION, "mode": "split", "weight": 0..1} or {"model", "version", "mode": "shadow"}`)
		}
		if a.deploy == nil {
			return nil, errors.New("no model on this device is served from bundles")
		}
		w := 0.0
		if args.Weight != nil {
			w = *args.Weight
		}
		if err := a.deploy.StartExperiment(ctx, args.Model, args.Version, w, args.Mode == "shadow"); err != nil {
			return nil, err
		}
		return a.experimentStats(args.Model), nil
	}
	for _, verb := range []string{"promote", "abort"} {
		h[verb] = func(ctx context.Context, c command.Command, _ command.Progress) (any, error) {
			var args struct{ Model string }
			if err := json.Unmarshal(c.Args, &args); err != nil || args.Model == "" {
				return nil, fmt.Errorf(`%s needs args {"model": NAME}`, verb)
			}
			if a.deploy == nil {
				return nil, errors.New("no model on this device is served from bundles")
			}
			final := a.experimentStats(args.Model)
			var err error
			if verb == "promote" {
				err = a.deploy.Promote(ctx, args.Model)
			} else {
				err = a.deploy.Abort(args.Model)
			}
			if err != nil {
				return nil, err
			}
			return map[string]any{"model": args.Model, "active": a.activeVersion(args.Model), "experiment": final}, nil
		}
	}
	h["deploy"] = func(ctx context.Context, c command.Command, progress command.Progress) (any, error) {
		var args struct {
			URL    string           `json:"url"`
			SHA256 string           `json:"sha256"`
			Push   *deploy.PushSpec `json:"push"` // a bundle pushed over MQTT in chunks (push.go)
		}
		err := json.Unmarshal(c.Args, &args)
		byURL, pushed := args.Push == nil && args.URL != "" && args.SHA256 != "", args.Push != nil && args.URL == ""
		if err != nil || !byURL && !pushed {
			return nil, errors.New(`deploy needs args {"url": BUNDLE_URL, "sha256": HEX}, or {"push": {"sha256", "size", "chunk_size", "chunks"}} as edgectl deploy sends them`)
		}
		if a.deploy == nil {
			return nil, errors.New("no model on this device is served from bundles (a model without path in the config)")
		}
		var path string
		if pushed {
			var release func()
			if path, release, err = a.receivePush(ctx, c.ID, *args.Push, progress); err == nil {
				defer release() // after the install: the files go, whatever its outcome
			}
		} else if path, err = a.downloadBundle(ctx, args.URL, args.SHA256, progress); err == nil {
			defer os.Remove(path) // installed or refused, the download has served
		}
		if err != nil {
			return nil, err
		}
		progress(1, "downloaded; verifying, canary check, activating")
		man, err := a.deploy.InstallFile(ctx, path)
		if err != nil {
			return nil, err
		}
		return map[string]any{"model": man.Name, "version": man.Version, "sequence": man.Sequence}, nil
	}
	a.configHandler(h)
	a.captureHandler(h)
	a.selfupdateHandler(h)
	return h
}

// downloadBundle fetches a bundle for a deploy command (one download at a time: two deploys
// of the same bundle, as a fleet server that resent one, would otherwise write the same
// partial file at once).
func (a *Agent) downloadBundle(ctx context.Context, url, sum string, progress command.Progress) (string, error) {
	return a.downloadFile(ctx, url, sum, maxBundleBytes, progress)
}

// experimentStats are a model's experiment figures (nil when none runs).
func (a *Agent) experimentStats(model string) any {
	for _, st := range a.pipe.Stats() {
		if st.Name == model && st.Experiment != nil {
			return st.Experiment
		}
	}
	return nil
}

// activeVersion is the version a model serves now ("" when none).
func (a *Agent) activeVersion(model string) string {
	for _, st := range a.pipe.Stats() {
		if st.Name == model {
			return st.Version
		}
	}
	return ""
}
