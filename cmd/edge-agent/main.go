// Command edge-agent is the daemon that runs TensorFlow Lite models on local sensor input.
//
//	edge-agent run [--config FILE]
//	edge-agent predict --model FILE --input FILE [--spec FILE] [--delegate D] [--json]
//	edge-agent inspect [--json] MODEL
//	edge-agent models install BUNDLE | list | rollback NAME [VERSION]
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
	"syscall"

	"github.com/edge-agent/edge-agent/agent"
	"github.com/edge-agent/edge-agent/agent/config"

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
	// SIGINT/SIGTERM cancel the context; a second signal kills at once.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		stop() // restore default handling so a second signal terminates
	}()
	// A fleet config command that changes settings read at start makes Run return
	// ErrReload: read the file again and start over in this process (the fleet's settings
	// are applied on top of the file by agent.New).
	for {
		cfg, err := config.Load(*path)
		if err != nil {
			return err
		}
		level := new(slog.LevelVar)
		log := newLogger(stderr, cfg.Log, level)
		a, err := agent.New(cfg, agent.Options{Logger: log, Stdout: stdout, LogLevel: level})
		if err != nil {
			return fmt.Errorf("config %s: %w", *path, err)
		}
		if err := a.Run(ctx); !errors.Is(err, agent.ErrReload) {
			return err
		}
	}
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
