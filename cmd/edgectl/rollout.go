package main

// edgectl rollout start|status|halt: the client of edgectl serve's JSON API
// (docs/fleet-server.md).

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/edge-agent/edge-agent/internal/rollout"
)

// apiClient talks to one edgectl serve.
type apiClient struct {
	server    string
	tokenFile string
	caFile    string
	json      bool
	http      *http.Client
	token     string
}

func addAPIFlags(fs *flag.FlagSet) *apiClient {
	c := &apiClient{}
	def := os.Getenv("EDGECTL_SERVER")
	if def == "" {
		def = "http://127.0.0.1:8070"
	}
	fs.StringVar(&c.server, "server", def, "edgectl serve's URL (or EDGECTL_SERVER)")
	fs.StringVar(&c.tokenFile, "token-file", "", "file holding the bearer token of serve's --token-file")
	fs.StringVar(&c.caFile, "ca-file", "", "PEM CA file for an https server's certificate")
	fs.BoolVar(&c.json, "json", false, "print the server's JSON")
	return c
}

func (c *apiClient) init() error {
	u, err := url.Parse(c.server)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return usageError{fmt.Errorf("--server %q is not an http(s) URL", c.server)}
	}
	c.server = strings.TrimRight(c.server, "/")
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if c.caFile != "" {
		pem, err := os.ReadFile(c.caFile)
		if err != nil {
			return fmt.Errorf("CA file: %w: check --ca-file", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return fmt.Errorf("CA file %s holds no PEM certificate", c.caFile)
		}
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	c.http = &http.Client{Timeout: 60 * time.Second, Transport: tr}
	if c.tokenFile != "" {
		b, err := readPassword(c.tokenFile)
		if err != nil {
			return fmt.Errorf("token file: %w: check --token-file", err)
		}
		c.token = strings.TrimSpace(string(b))
	}
	return nil
}

// do sends a request and decodes a 2xx JSON answer into out; anything else is an error
// carrying the server's reason.
func (c *apiClient) do(method, path string, body any, out any) ([]byte, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, c.server+path, rd)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%w: is edgectl serve running there? check --server", err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		var e struct {
			Error string `json:"error"`
		}
		if json.Unmarshal(raw, &e) == nil && e.Error != "" {
			return nil, fmt.Errorf("server: %s (HTTP %d)", e.Error, resp.StatusCode)
		}
		return nil, fmt.Errorf("server: HTTP %s for %s %s", resp.Status, method, path)
	}
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			return nil, fmt.Errorf("server's answer to %s %s: %w", method, path, err)
		}
	}
	return raw, nil
}

func cmdRollout(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return usageError{errors.New("rollout needs a subcommand: start, status, halt")}
	}
	switch args[0] {
	case "start":
		return cmdRolloutStart(args[1:], stdout, stderr)
	case "status":
		return cmdRolloutStatus(args[1:], stdout, stderr)
	case "halt":
		return cmdRolloutHalt(args[1:], stdout, stderr)
	}
	return usageError{fmt.Errorf("unknown rollout subcommand %q: use start, status or halt", args[0])}
}

// parseStages reads "5,25,100".
func parseStages(s string) ([]float64, error) {
	var out []float64
	for _, f := range strings.Split(s, ",") {
		v, err := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(f), "%")), 64)
		if err != nil {
			return nil, usageError{fmt.Errorf("--stages %q: write increasing percentages like 5,25,100", s)}
		}
		out = append(out, v)
	}
	return out, nil
}

func cmdRolloutStart(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("rollout start", flag.ContinueOnError)
	fs.SetOutput(stderr)
	c := addAPIFlags(fs)
	group := fs.String("group", "", "the online devices of this group")
	var devices multiFlag
	fs.Var(&devices, "device", "this device (repeat for more)")
	all := fs.Bool("all", false, "every online device")
	stages := fs.String("stages", "5,25,100", "cumulative percentages of the targets per stage")
	maxFailures := fs.Int("max-failures", 0, "devices that may fail before the rollout halts")
	maxErrorRate := fs.Float64("max-error-rate", rollout.DefaultMaxError, "highest error rate (errors/frames) of the new version during a soak; 1 = off")
	maxP95 := fs.Float64("max-p95-ms", 0, "highest p95 latency (ms) during a soak; 0 = off")
	soak := fs.Duration("soak", rollout.DefaultSoak, "how long each stage runs before the next starts")
	stageTimeout := fs.Duration("stage-timeout", rollout.DefaultTimeout, "how long a stage's devices have to reply done or failed")
	pos, err := parseMixed(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usageError{errors.New("rollout start needs BUNDLE_NAME: the file name of a bundle in serve's --dir")}
	}
	st, err := parseStages(*stages)
	if err != nil {
		return err
	}
	if err := c.init(); err != nil {
		return err
	}
	sk, to := rollout.Duration(*soak), rollout.Duration(*stageTimeout)
	spec := rollout.Spec{Bundle: pos[0], Group: *group, Devices: devices, All: *all, Stages: st,
		Gates: rollout.GateSpec{MaxFailures: maxFailures, MaxErrorRate: maxErrorRate, MaxP95LatencyMS: maxP95, Soak: &sk, StageTimeout: &to}}
	if err := spec.Check(); err != nil {
		return usageError{errors.New(strings.TrimPrefix(err.Error(), rollout.ErrInvalid.Error()+": "))}
	}
	var ro rollout.Rollout
	raw, err := c.do(http.MethodPost, "/v1/rollouts", spec, &ro)
	if err != nil {
		return err
	}
	if c.json {
		stdout.Write(raw)
		return nil
	}
	var parts []string
	for _, s := range ro.Stages {
		parts = append(parts, fmt.Sprintf("%g%% (%d)", s.Percent, s.Devices))
	}
	fmt.Fprintf(stdout, "rollout %s started: %s (%s %s) to %d devices in stages %s\n", ro.ID, ro.Bundle.Name, ro.Bundle.Model, ro.Bundle.Version, len(ro.Devices), strings.Join(parts, ", "))
	if len(ro.Skipped) > 0 {
		fmt.Fprintf(stdout, "skipped (offline): %s\n", strings.Join(ro.Skipped, ", "))
	}
	fmt.Fprintf(stdout, "follow it: edgectl rollout status --watch %s\n", ro.ID)
	return nil
}

func cmdRolloutStatus(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("rollout status", flag.ContinueOnError)
	fs.SetOutput(stderr)
	c := addAPIFlags(fs)
	watch := fs.Bool("watch", false, "print again on every change: with ID until it finishes (exit 1 if it halted), else until interrupted")
	every := fs.Duration("every", time.Second, "with --watch: how often to ask")
	pos, err := parseMixed(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 1 {
		return usageError{errors.New("rollout status takes at most one rollout ID")}
	}
	if err := c.init(); err != nil {
		return err
	}
	ctx, stop := interruptContext()
	defer stop()
	var last []byte
	for {
		var raw []byte
		var ro rollout.Rollout
		var list struct {
			Rollouts []rollout.Summary `json:"rollouts"`
		}
		if len(pos) == 1 {
			raw, err = c.do(http.MethodGet, "/v1/rollouts/"+url.PathEscape(pos[0]), nil, &ro)
		} else {
			raw, err = c.do(http.MethodGet, "/v1/rollouts", nil, &list)
		}
		if err != nil {
			return err
		}
		if !bytes.Equal(raw, last) {
			last = raw
			switch {
			case c.json:
				var b bytes.Buffer
				json.Compact(&b, raw)
				fmt.Fprintf(stdout, "%s\n", b.Bytes())
			case len(pos) == 1:
				printRollout(stdout, ro)
			default:
				printRollouts(stdout, list.Rollouts)
			}
		}
		if len(pos) == 1 && ro.State != rollout.StateRunning && *watch {
			if ro.State == rollout.StateHalted {
				return fmt.Errorf("%w: rollout %s halted: %s", errFailed, ro.ID, ro.Reason)
			}
			return nil
		}
		if !*watch {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(*every):
		}
	}
}

func printRollouts(w io.Writer, rs []rollout.Summary) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tOWNER\tSTATE\tSTAGE\tDONE\tFAILED\tTARGETS\tMODEL\tREASON")
	for _, r := range rs {
		state := r.State
		if r.Phase != "" {
			state += "/" + r.Phase
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d/%d\t%d\t%d\t%d\t%s@%s\t%s\n", r.ID, r.Owner, state, r.Stage, r.Stages, r.Done, r.Failed, r.Targets, r.Model, r.Version, r.Reason)
	}
	tw.Flush()
}

func printRollout(w io.Writer, r rollout.Rollout) {
	state := r.State
	if r.Phase != "" {
		state += " (" + r.Phase + ")"
	}
	fmt.Fprintf(w, "rollout %s: %s, stage %d of %d, owner %s\n", r.ID, state, r.Stage+1, len(r.Stages), r.Owner)
	fmt.Fprintf(w, "bundle %s: %s %s (sequence %d), sha256 %s\n", r.Bundle.Name, r.Bundle.Model, r.Bundle.Version, r.Bundle.Sequence, r.Bundle.SHA256)
	if r.Reason != "" {
		fmt.Fprintf(w, "reason: %s\n", r.Reason)
	}
	for _, e := range r.Evidence {
		fmt.Fprintf(w, "  evidence: %s\n", e)
	}
	for i, s := range r.Stages {
		when := "waiting"
		switch {
		case s.FinishedAt != nil:
			when = "finished " + s.FinishedAt.Format(time.RFC3339)
		case s.SoakUntil != nil:
			when = "soaking until " + s.SoakUntil.Format(time.RFC3339)
		case s.StartedAt != nil:
			when = "started " + s.StartedAt.Format(time.RFC3339)
		}
		fmt.Fprintf(w, "stage %d: %g%% = %d devices, %s\n", i+1, s.Percent, s.Devices, when)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "DEVICE\tSTAGE\tFROM\tOUTCOME\tFAILURE\tROLLBACK")
	for _, d := range r.Devices {
		out := d.Outcome
		if out == "" {
			out = d.Status
		}
		rb := ""
		if d.Rollback != nil {
			rb = strings.TrimSpace(d.Rollback.Version + " " + d.Rollback.Outcome)
			if d.Rollback.Outcome == "" {
				rb += " sent"
			}
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\n", d.ID, d.Stage+1, d.From, out, d.Failure, rb)
	}
	tw.Flush()
}

func cmdRolloutHalt(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("rollout halt", flag.ContinueOnError)
	fs.SetOutput(stderr)
	c := addAPIFlags(fs)
	reason := fs.String("reason", "", "why, kept with the rollout")
	pos, err := parseMixed(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usageError{errors.New("rollout halt needs the rollout ID")}
	}
	if err := c.init(); err != nil {
		return err
	}
	var ro rollout.Rollout
	raw, err := c.do(http.MethodPost, "/v1/rollouts/"+url.PathEscape(pos[0])+"/halt", map[string]string{"reason": *reason}, &ro)
	if err != nil {
		return err
	}
	if c.json {
		stdout.Write(raw)
		return nil
	}
	n := 0
	for _, d := range ro.Devices {
		if d.Rollback != nil {
			n++
		}
	}
	fmt.Fprintf(stdout, "rollout %s halted: %s; rolling back %d devices\n", ro.ID, ro.Reason, n)
	return nil
}
