// Command edge-agent is the daemon that runs TensorFlow Lite models on local sensor input.
//
//	edge-agent run [--config FILE]
//	edge-agent predict --model FILE --input FILE [--spec FILE] [--delegate D] [--json]
//	edge-agent inspect [--json] MODEL
//	edge-agent models install BUNDLE | list | rollback NAME [VERSION]
//	edge-agent update --from URL|FILE [--sig URL|FILE] [--sha256 HEX]
//	edge-agent guard [--exe FILE]
//	edge-agent version
//
// It builds the agent from the config and leaves all wiring to package agent.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"

	"github.com/edge-agent/edge-agent/agent"
	"github.com/edge-agent/edge-agent/agent/config"
	"github.com/edge-agent/edge-agent/agent/update"

	_ "github.com/edge-agent/edge-agent/agent/infer/tflite" // the engine (cgo builds)
	_ "github.com/edge-agent/edge-agent/hal/sensor/all"     // every source kind
)

const usage = `edge-agent runs TensorFlow Lite models on local sensor input.

Usage:
  edge-agent run [--config FILE]        serve the models and sources of a config (default ` + config.DefaultPath + `)
  edge-agent predict --model FILE --input FILE [--spec FILE] [--delegate D] [--json]
                                        run one input through a model, as the daemon would
  edge-agent inspect [--json] MODEL     show a model's tensors, quantisation, ops and delegate
  edge-agent models install BUNDLE | list [NAME] | rollback NAME [VERSION]
                                        manage bundle-served model versions
  edge-agent update --from URL|FILE [--sig URL|FILE] [--sha256 HEX] [--config FILE]
                                        install a signed new agent binary (docs/operations.md)
  edge-agent guard [--exe FILE]         count a start of an updated binary, restore the previous
                                        one after repeated failures (the unit's ExecStartPre)
  edge-agent version                    print version, runtime and hardware

Run "edge-agent COMMAND -h" for a command's flags.
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	var err error
	switch args[0] {
	case "run":
		err = cmdRun(args[1:], stdout, stderr)
	case "predict":
		err = cmdPredict(args[1:], stdout, stderr)
	case "inspect":
		err = cmdInspect(args[1:], stdout, stderr)
	case "models":
		err = cmdModels(args[1:], stdout, stderr)
	case "update":
		err = cmdUpdate(args[1:], stdout, stderr)
	case "guard":
		err = cmdGuard(args[1:], stdout, stderr)
	case "version", "--version", "-v":
		err = cmdVersion(args[1:], stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "edge-agent: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if errors.Is(err, errRestart) {
		fmt.Fprintf(stderr, "edge-agent: %v\n", err)
		return restartExitCode
	}
	var ue usageError
	if errors.As(err, &ue) {
		fmt.Fprintf(stderr, "edge-agent %s: %v\n", args[0], err)
		return 2
	}
	if err != nil {
		fmt.Fprintf(stderr, "edge-agent %s: %v\n", args[0], err)
		return 1
	}
	return 0
}

type usageError struct{ error }

func cmdRun(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", config.DefaultPath, "configuration file")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Errorf("unexpected arguments %v", fs.Args())}
	}
	switch testFault {
	case "exit":
		return errors.New("edge-agent built with testFault=exit (self-update tests only)")
	case "wedge":
		time.Sleep(1 << 62) // stuck before anything, as a deadlock in start-up would be
	}
	exe, exeErr := update.Executable()
	trial, err := beginTrial(exe, exeErr, stderr)
	if errors.Is(err, update.ErrReverted) {
		return execSelf(exe)
	}
	// SIGINT/SIGTERM cancel the context; a second signal kills at once.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		daemon.SdNotify(false, "STOPPING=1") // no-op when not started by systemd
		stop()                               // restore default handling so a second signal terminates
	}()
	// A fleet config command that changes settings read at start makes Run return
	// ErrReload: read the file again and start over in this process (the fleet's settings
	// are applied on top of the file by agent.New). A selfupdate command makes it return
	// ErrExec: execute the new binary in place.
	for {
		err := runOnce(ctx, *path, exe, trial, stdout, stderr)
		trial = nil // confirmed, or reverted (and execSelf did not return)
		switch {
		case errors.Is(err, agent.ErrReload):
			continue
		case errors.Is(err, agent.ErrExec):
			if underServiceManager() {
				return errRestart
			}
			return execSelf(exe)
		}
		return err
	}
}

// runOnce builds the agent from the file and runs it. During an update's trial it confirms
// the update once the agent is ready, or restores the previous binary and executes it when
// the new one fails to start or is not ready within the deadline.
func runOnce(ctx context.Context, path, exe string, trial *update.Trial, stdout, stderr io.Writer) error {
	fail := func(err error) error {
		if trial == nil {
			return err
		}
		fmt.Fprintf(stderr, "edge-agent: the new binary (update to %s) failed: %v\n", trial.Pending.Version, err)
		if rerr := trial.Revert(err.Error()); !errors.Is(rerr, update.ErrReverted) {
			return errors.Join(err, rerr)
		}
		return execSelf(exe)
	}
	cfg, err := config.Load(path)
	if err != nil {
		return fail(err)
	}
	level := new(slog.LevelVar)
	log := newLogger(stderr, cfg.Log, level)
	a, err := agent.New(cfg, agent.Options{Logger: log, Stdout: stdout, LogLevel: level, Executable: exe})
	if err != nil {
		return fail(fmt.Errorf("config %s: %w", path, err))
	}
	if trial == nil {
		reportUpdate(a, exe, log)
	} else {
		log.Info("new binary on trial: it must be ready before the deadline or the previous one comes back",
			"version", trial.Pending.Version, "from", trial.Pending.FromVersion, "start", trial.Pending.Starts, "deadline", trial.Deadline)
	}
	runCtx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var confirmed atomic.Bool
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		waiting := false
		watch(runCtx, a, log, func() bool {
			if trial == nil {
				return true
			}
			if configured, connected := a.FleetConnected(); configured && !connected {
				if !waiting {
					waiting = true
					log.Info("new binary ready; it confirms the update once it has reached the broker", "deadline", trial.Deadline)
				}
				return false
			}
			if err := trial.Confirm(); err != nil {
				log.Error("confirm the update", "err", err)
			}
			confirmed.Store(true)
			reportUpdate(a, exe, log)
			return true
		}, func(now time.Time) bool {
			if trial != nil && !confirmed.Load() && now.After(trial.Deadline) {
				reason := fmt.Sprintf("not ready within %v (update.confirm_within)", trial.Pending.ConfirmWithin)
				if waiting {
					reason = fmt.Sprintf("ready but not connected to the broker within %v (update.confirm_within)", trial.Pending.ConfirmWithin)
				}
				cancel(errors.New(reason))
				return true
			}
			return false
		})
	}()
	if testFault == "crash" {
		panic("edge-agent built with testFault=crash (self-update tests only)")
	}
	err = a.Run(runCtx)
	cancel(nil)
	wg.Wait()
	if trial == nil || confirmed.Load() || ctx.Err() != nil {
		return err // a stop by signal during the trial leaves it pending: the next start counts
	}
	if cause := context.Cause(runCtx); cause != nil && !errors.Is(cause, context.Canceled) {
		err = cause
	}
	if err == nil || errors.Is(err, agent.ErrReload) || errors.Is(err, agent.ErrExec) {
		err = errors.New("it stopped before it was ready")
	}
	return fail(err)
}

func newLogger(w io.Writer, c config.Log, level *slog.LevelVar) *slog.Logger {
	var lvl slog.Level
	_ = lvl.UnmarshalText([]byte(c.Level))
	level.Set(lvl)
	opts := &slog.HandlerOptions{Level: level}
	if c.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}
