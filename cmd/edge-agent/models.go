package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/edge-agent/edge-agent/agent"
	"github.com/edge-agent/edge-agent/agent/config"
	"github.com/edge-agent/edge-agent/models/store"
)

const modelsUsage = `edge-agent models manages the versions of bundle-served models:
  edge-agent models install [--config F] [--wait D] BUNDLE   verify, install and activate a signed bundle
  edge-agent models list [--config F] [--json] [NAME]        versions, the active one, and recent history
  edge-agent models rollback [--config F] [--wait D] NAME [VERSION]   go back to VERSION (default: the previous one)
When the daemon is running (it holds the store), install and rollback go through its inbox
and wait for the outcome; otherwise they act on the store directly.
`

func cmdModels(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, modelsUsage)
		return usageError{errors.New("models needs a subcommand: install, list, rollback")}
	}
	fs := flag.NewFlagSet("models "+args[0], flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", config.DefaultPath, "configuration file")
	wait := fs.Duration("wait", 2*time.Minute, "how long to wait for a running daemon to act")
	asJSON := fs.Bool("json", false, "print JSON (list)")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	cfg, err := config.Load(*path)
	if err != nil {
		return err
	}
	switch args[0] {
	case "install":
		if fs.NArg() != 1 {
			return usageError{errors.New("give one bundle file")}
		}
		return modelsInstall(cfg, fs.Arg(0), *wait, stdout, stderr)
	case "rollback":
		if fs.NArg() < 1 || fs.NArg() > 2 {
			return usageError{errors.New("give a model name and optionally a version")}
		}
		return modelsRollback(cfg, fs.Arg(0), fs.Arg(1), *wait, stdout, stderr)
	case "list":
		return modelsList(cfg, fs.Arg(0), *asJSON, stdout)
	}
	return usageError{fmt.Errorf("unknown models subcommand %q", args[0])}
}

// offlineAgent builds the agent without sources to act on the store directly. It returns
// store.ErrLocked (wrapped) when the daemon holds the store.
func offlineAgent(cfg *config.Config, stderr io.Writer) (*agent.Agent, error) {
	cfg.Sources = nil
	for i := range cfg.Models {
		cfg.Models[i].Sources = nil
	}
	off := false
	cfg.Stdout = &off
	return agent.New(cfg, agent.Options{NoFleet: true, Logger: slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))})
}

func modelsInstall(cfg *config.Config, bundlePath string, wait time.Duration, stdout, stderr io.Writer) error {
	a, err := offlineAgent(cfg, stderr)
	if errors.Is(err, store.ErrLocked) {
		return viaInbox(cfg, bundlePath, wait, stdout)
	}
	if err != nil {
		return err
	}
	defer a.Close()
	if a.Deploy() == nil {
		return errors.New("no model in the configuration is served from bundles (a model without path)")
	}
	man, err := a.Deploy().InstallFile(context.Background(), bundlePath)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "installed and activated %s %s (sequence %d)\n", man.Name, man.Version, man.Sequence)
	return nil
}

// viaInbox hands a bundle to the running daemon and waits for its verdict.
func viaInbox(cfg *config.Config, bundlePath string, wait time.Duration, stdout io.Writer) error {
	data, err := os.ReadFile(bundlePath)
	if err != nil {
		return err
	}
	name := filepath.Base(bundlePath)
	tmp := filepath.Join(cfg.Inbox, "."+name+".tmp")
	dst := filepath.Join(cfg.Inbox, name)
	if err := os.WriteFile(tmp, data, 0o640); err != nil {
		return fmt.Errorf("inbox: %w", err)
	}
	if err := os.Rename(tmp, dst); err != nil {
		return fmt.Errorf("inbox: %w", err)
	}
	fmt.Fprintf(stdout, "the daemon is running: handed %s to its inbox %s\n", name, cfg.Inbox)
	reason := filepath.Join(cfg.Inbox, "failed", name+".reason")
	deadline := time.Now().Add(wait)
	for time.Now().Before(deadline) {
		if b, err := os.ReadFile(reason); err == nil {
			return fmt.Errorf("refused: %s", b)
		}
		if _, err := os.Stat(dst); errors.Is(err, os.ErrNotExist) {
			fmt.Fprintf(stdout, "installed and activated by the daemon (see edge-agent models list)\n")
			return nil
		}
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Errorf("the daemon did not take %s within %v; is it running with inbox %s?", name, wait, cfg.Inbox)
}

func modelsRollback(cfg *config.Config, name, version string, wait time.Duration, stdout, stderr io.Writer) error {
	a, err := offlineAgent(cfg, stderr)
	if errors.Is(err, store.ErrLocked) {
		req := filepath.Join(cfg.Inbox, name+".rollback")
		os.Remove(req + ".done")
		os.Remove(req + ".failed")
		if err := os.WriteFile(req, []byte(version), 0o640); err != nil {
			return fmt.Errorf("inbox: %w", err)
		}
		deadline := time.Now().Add(wait)
		for time.Now().Before(deadline) {
			if b, err := os.ReadFile(req + ".failed"); err == nil {
				return fmt.Errorf("rollback refused: %s", b)
			}
			if _, err := os.Stat(req + ".done"); err == nil {
				fmt.Fprintf(stdout, "rolled back %s by the daemon\n", name)
				return nil
			}
			time.Sleep(200 * time.Millisecond)
		}
		return fmt.Errorf("the daemon did not act on the rollback within %v", wait)
	}
	if err != nil {
		return err
	}
	defer a.Close()
	if a.Deploy() == nil {
		return errors.New("no model in the configuration is served from bundles (a model without path)")
	}
	if err := a.Deploy().Rollback(context.Background(), name, version); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "rolled back %s\n", name)
	return nil
}

func modelsList(cfg *config.Config, only string, asJSON bool, stdout io.Writer) error {
	st, err := store.OpenReadOnly(cfg.ModelsDir)
	if err != nil {
		return err
	}
	names, err := st.Models()
	if err != nil {
		return err
	}
	type entry struct {
		Name     string              `json:"name"`
		Active   *store.Pointer      `json:"active,omitempty"`
		Versions []store.VersionMeta `json:"versions"`
		History  []store.Event       `json:"history"`
	}
	var all []entry
	for _, n := range names {
		if only != "" && n != only {
			continue
		}
		e := entry{Name: n}
		if p, ok, err := st.Active(n); err == nil && ok {
			e.Active = &p
		}
		e.Versions, _ = st.Versions(n)
		e.History, _ = st.History(n, 10)
		all = append(all, e)
	}
	if asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(all)
	}
	if len(all) == 0 {
		fmt.Fprintf(stdout, "no models in %s\n", cfg.ModelsDir)
	}
	for _, e := range all {
		fmt.Fprintf(stdout, "%s\n", e.Name)
		for _, v := range e.Versions {
			mark := " "
			if e.Active != nil && e.Active.Version == v.Version {
				mark = "*"
			}
			fmt.Fprintf(stdout, "  %s %-12s sequence %-4d installed %s  key %s\n", mark, v.Version, v.Sequence, v.Installed.Format(time.RFC3339), v.KeyID)
		}
		for _, h := range e.History {
			fmt.Fprintf(stdout, "    %s  %-16s %-10s %s\n", h.At.Format(time.RFC3339), h.Event, h.Version, h.Reason)
		}
	}
	return nil
}
