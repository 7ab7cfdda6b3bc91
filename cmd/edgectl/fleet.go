package main

// The fleet-console commands: cmd, deploy, rollback, ping, status and watch. They talk to
// the agents over MQTT (docs/mqtt.md) through internal/fleetclient.

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/edge-agent/edge-agent/agent/command"
	"github.com/edge-agent/edge-agent/internal/fleetclient"
	"github.com/edge-agent/edge-agent/models/sign"
)

// settings are the broker connection and topic prefix.
type settings struct {
	Broker     string `yaml:"broker"`
	Username   string `yaml:"username"`
	Password   string `yaml:"password"`
	CAFile     string `yaml:"ca_file"`
	CertFile   string `yaml:"cert_file"`
	KeyFile    string `yaml:"key_file"`
	ServerName string `yaml:"server_name"`
	Prefix     string `yaml:"prefix"`
	// The command key (--sign-key, EDGECTL_SIGN_KEY) and its password file
	// (--password-file, EDGECTL_SIGN_PASSWORD_FILE): the commands' own flags, not connection
	// flags, so they are resolved by commandSealer.
	SignKey          string `yaml:"sign_key"`
	SignPasswordFile string `yaml:"sign_password_file"`
}

// fields lists the settings by their flag name, env variable and value, for the precedence rules.
func (s *settings) fields() []struct {
	flag, env string
	v         *string
} {
	return []struct {
		flag, env string
		v         *string
	}{
		{"broker", "EDGECTL_BROKER", &s.Broker},
		{"username", "EDGECTL_USERNAME", &s.Username},
		{"password", "EDGECTL_PASSWORD", &s.Password},
		{"ca-file", "EDGECTL_CA_FILE", &s.CAFile},
		{"cert-file", "EDGECTL_CERT_FILE", &s.CertFile},
		{"key-file", "EDGECTL_KEY_FILE", &s.KeyFile},
		{"server-name", "EDGECTL_SERVER_NAME", &s.ServerName},
		{"prefix", "EDGECTL_PREFIX", &s.Prefix},
	}
}

// connFlags are the connection flags every fleet command takes.
type connFlags struct {
	fs     *flag.FlagSet
	config string
	vals   settings
}

func addConnFlags(fs *flag.FlagSet) *connFlags {
	c := &connFlags{fs: fs}
	fs.StringVar(&c.config, "config", "", "YAML settings file (default $HOME/.config/edgectl/config.yaml if it exists)")
	help := map[string]string{
		"broker": "MQTT broker, tcp://host:1883 or ssl://host:8883", "username": "MQTT user name", "password": "MQTT password",
		"ca-file": "PEM CA file for the broker's certificate", "cert-file": "client certificate (PEM)", "key-file": "client key (PEM)",
		"server-name": "name the broker's certificate must carry", "prefix": "topic prefix (default edge)",
	}
	for _, f := range c.vals.fields() {
		fs.StringVar(f.v, f.flag, "", help[f.flag])
	}
	return c
}

// resolve applies flag > env > file. getenv and home are injected for tests.
func (c *connFlags) resolve(getenv func(string) string) (settings, error) {
	set := map[string]bool{}
	c.fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	path, explicit := c.config, set["config"]
	if !explicit {
		if home := getenv("HOME"); home != "" {
			path = filepath.Join(home, ".config", "edgectl", "config.yaml")
		}
	}
	var s settings
	if path != "" {
		b, err := os.ReadFile(path)
		switch {
		case err == nil:
			dec := yaml.NewDecoder(bytes.NewReader(b))
			dec.KnownFields(true)
			if err := dec.Decode(&s); err != nil && !errors.Is(err, io.EOF) {
				return s, fmt.Errorf("config file %s: %w: use the keys broker, username, password, ca_file, cert_file, key_file, server_name, prefix, sign_key, sign_password_file", path, err)
			}
		case explicit || !errors.Is(err, os.ErrNotExist):
			return s, fmt.Errorf("config file: %w: check --config", err)
		}
	}
	flagVals := c.vals
	fv, sv := flagVals.fields(), s.fields()
	for i, f := range sv {
		if e := getenv(f.env); e != "" {
			*f.v = e
		}
		if set[f.flag] {
			*f.v = *fv[i].v
		}
	}
	for v, env := range map[*string]string{&s.SignKey: "EDGECTL_SIGN_KEY", &s.SignPasswordFile: "EDGECTL_SIGN_PASSWORD_FILE"} {
		if e := getenv(env); e != "" {
			*v = e
		}
	}
	if s.Prefix == "" {
		s.Prefix = "edge"
	}
	if s.Broker == "" {
		return s, errors.New("no broker: set --broker, EDGECTL_BROKER, or broker in the config file (tcp://host:1883 or ssl://host:8883)")
	}
	return s, nil
}

func connect(ctx context.Context, s settings) (*fleetclient.Client, error) {
	return fleetclient.Connect(ctx, fleetclient.Config{Broker: s.Broker, Username: s.Username, Password: s.Password,
		CAFile: s.CAFile, CertFile: s.CertFile, KeyFile: s.KeyFile, ServerName: s.ServerName})
}

// parseMixed parses flags that may come before, between or after the positional arguments.
func parseMixed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := parseFlags(fs, args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		if args[0] == "--" {
			return append(pos, args[1:]...), nil
		}
		pos, args = append(pos, args[0]), args[1:]
	}
}

// interruptContext ends on SIGINT.
func interruptContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), os.Interrupt)
}

// target is where a command goes.
type target struct {
	device, group string
	all           bool
}

func addTargetFlags(fs *flag.FlagSet) *target {
	t := &target{}
	fs.StringVar(&t.device, "device", "", "send to this device")
	fs.StringVar(&t.group, "group", "", "send to this group's devices")
	fs.BoolVar(&t.all, "all", false, "send to every device")
	return t
}

func (t *target) topic(prefix string) (string, error) {
	n := 0
	for _, b := range []bool{t.device != "", t.group != "", t.all} {
		if b {
			n++
		}
	}
	if n != 1 {
		return "", usageError{errors.New("give exactly one of --device ID, --group G, --all")}
	}
	for _, v := range []string{t.device, t.group} {
		if strings.ContainsAny(v, "+#/") {
			return "", usageError{fmt.Errorf("%q holds '+', '#' or '/': device and group names cannot", v)}
		}
	}
	switch {
	case t.device != "":
		return prefix + "/" + t.device + "/cmd", nil
	case t.group != "":
		return prefix + "/group/" + t.group + "/cmd", nil
	}
	return prefix + "/all/cmd", nil
}

// name is the target as a signed command names it (command.Command.Target).
func (t *target) name() string {
	switch {
	case t.device != "":
		return command.ForDevice(t.device)
	case t.group != "":
		return command.ForGroup(t.group)
	}
	return command.TargetAll
}

// sendOpts are the flags of every command-sending subcommand.
type sendOpts struct {
	conn     *connFlags
	target   *target
	ttl      time.Duration
	timeout  time.Duration
	waitFor  int
	json     bool
	signKey  string // minisign secret key: send the command as a signed envelope
	signPw   string // file holding that key's password
	unsigned bool   // send plain JSON (devices with commands.require_signed: false only)
	id       string // command id (default: a new random one)
	seal     func(body []byte) ([]byte, error)
}

func addSendFlags(fs *flag.FlagSet) *sendOpts {
	o := &sendOpts{conn: addConnFlags(fs), target: addTargetFlags(fs)}
	fs.DurationVar(&o.ttl, "ttl", 10*time.Minute, "the command expires this long after it is issued")
	fs.DurationVar(&o.timeout, "timeout", 60*time.Second, "stop waiting for replies after this long")
	fs.IntVar(&o.waitFor, "wait-for", 0, "with --group/--all: stop once this many devices finished")
	fs.BoolVar(&o.json, "json", false, "print one JSON object per reply line")
	fs.StringVar(&o.signKey, "sign-key", "", "the fleet's command key (minisign secret key) that signs the command (default EDGECTL_SIGN_KEY, or sign_key in the config file)")
	fs.StringVar(&o.signPw, "password-file", "", "password of --sign-key (default EDGECTL_SIGN_PASSWORD_FILE, or sign_password_file)")
	fs.BoolVar(&o.unsigned, "unsigned", false, "send the command unsigned: only devices with commands.require_signed: false take it")
	return o
}

// commandSealer returns how commands are sent: signed with the command key (flagKey, or the
// settings' sign_key), or plain when unsigned is set. Without either it refuses, because
// devices take signed commands only by default.
func commandSealer(flagKey, flagPw string, s settings, unsigned bool) (func(body []byte) ([]byte, error), error) {
	switch {
	case unsigned && flagKey != "":
		return nil, usageError{errors.New("give --unsigned or --sign-key, not both")}
	case unsigned: // wins over a key from the environment or the settings file
		return func(body []byte) ([]byte, error) { return body, nil }, nil
	}
	key, pw := flagKey, flagPw
	if key == "" {
		key = s.SignKey
	}
	if pw == "" {
		pw = s.SignPasswordFile
	}
	if key == "" {
		return nil, errors.New("no command key: devices take only signed commands: give --sign-key KEY (or EDGECTL_SIGN_KEY, or sign_key in the settings file) with the fleet's command key; --unsigned only for devices with commands.require_signed: false")
	}
	priv, err := readSecretKey(key, pw)
	if err != nil {
		return nil, fmt.Errorf("command key: %w", err)
	}
	return func(body []byte) ([]byte, error) { return sealCommand(priv, body) }, nil
}

// sealCommand signs a command body for its purpose (sign.CommandComment) and wraps it in the
// envelope agents take: {"body": base64(body), "sig": minisign signature of body}.
func sealCommand(priv sign.PrivateKey, body []byte) ([]byte, error) {
	sig, err := sign.Sign(priv, body, sign.CommandComment)
	if err != nil {
		return nil, fmt.Errorf("sign command: %w", err)
	}
	return json.Marshal(map[string]string{"body": base64.StdEncoding.EncodeToString(body), "sig": string(sig)})
}

// readSecretKey reads a minisign secret key, decrypted with the password in pwFile (none when
// pwFile is empty).
func readSecretKey(keyPath, pwFile string) (sign.PrivateKey, error) {
	pw, err := readPassword(pwFile)
	if err != nil {
		return sign.PrivateKey{}, err
	}
	return sign.ReadPrivateKey(keyPath, pw)
}

// newID is a random 16-hex-digit command id.
func newID() string {
	var b [8]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// progressBar draws fraction as a 20-character bar.
func progressBar(f float64) string {
	n := int(f*20 + 0.5)
	n = min(max(n, 0), 20)
	return "[" + strings.Repeat("#", n) + strings.Repeat(".", 20-n) + "]"
}

// errFailed makes exit status 1 after the output said why.
var errFailed = errors.New("not every device finished the command")

// dial resolves the connection settings, checks the target and connects until ctx ends.
// The caller closes the client.
func (o *sendOpts) dial(ctx context.Context) (settings, string, *fleetclient.Client, error) {
	s, err := o.conn.resolve(os.Getenv)
	if err != nil {
		return s, "", nil, err
	}
	topic, err := o.target.topic(s.Prefix)
	if err != nil {
		return s, "", nil, err
	}
	if o.seal, err = commandSealer(o.signKey, o.signPw, s, o.unsigned); err != nil {
		return s, "", nil, err
	}
	cl, err := connect(ctx, s)
	return s, topic, cl, err
}

// send publishes a command and prints the replies until every expected device finished or
// the timeout. bars draws text progress replies as bars.
func (o *sendOpts) send(typ string, args json.RawMessage, bars bool, stdout, stderr io.Writer) error {
	ctx, stop := interruptContext()
	defer stop()
	s, topic, cl, err := o.dial(ctx)
	if err != nil {
		return err
	}
	defer cl.Close()

	now := time.Now().UTC()
	id := o.id
	if id == "" {
		id = newID()
	}
	c := command.Command{ID: id, Type: typ, Args: args, IssuedAt: now, Expires: now.Add(o.ttl), Target: o.target.name()}
	body, err := json.Marshal(c)
	if err != nil {
		return fmt.Errorf("encode command: %w", err)
	}
	type msg struct {
		rep command.Reply
		raw []byte
	}
	replies := make(chan msg, 64)
	done := make(chan struct{})
	defer close(done)
	err = cl.Subscribe(s.Prefix+"/+/cmd/reply", func(_ string, p []byte) {
		var r command.Reply
		if json.Unmarshal(p, &r) != nil || r.ID != c.ID {
			return
		}
		select { // blocks the client's delivery while we print: replies are not dropped
		case replies <- msg{r, bytes.Clone(p)}:
		case <-done:
		}
	})
	if err != nil {
		return err
	}
	payload, err := o.seal(body)
	if err != nil {
		return err
	}
	if err := cl.Publish(topic, 1, false, payload); err != nil {
		return err
	}
	if !o.json {
		fmt.Fprintf(stderr, "sent %s %s to %s (timeout %v)\n", typ, c.ID, topic, o.timeout)
	}

	final := map[string]command.Reply{} // device → done or failed reply
	seen := map[string]bool{}
	finished := func() bool {
		if o.target.device != "" {
			_, ok := final[o.target.device]
			return ok
		}
		return o.waitFor > 0 && len(final) >= o.waitFor
	}
	timer := time.NewTimer(o.timeout)
	defer timer.Stop()
	timedOut := false
wait:
	for !finished() {
		select {
		case m := <-replies:
			r := m.rep
			seen[r.Device] = true
			if r.Status == command.StatusDone || r.Status == command.StatusFailed {
				final[r.Device] = r
			}
			printReply(stdout, m.raw, r, o.json, bars)
		case <-timer.C:
			timedOut = true
			break wait
		case <-ctx.Done():
			fmt.Fprintln(stderr, "interrupted")
			timedOut = true
			break wait
		}
	}

	var okDevs, failedDevs, unfinished []string
	for d := range seen {
		switch r, ok := final[d]; {
		case !ok:
			unfinished = append(unfinished, d)
		case r.Status == command.StatusDone:
			okDevs = append(okDevs, d)
		default:
			failedDevs = append(failedDevs, d)
		}
	}
	if o.target.device != "" && !seen[o.target.device] {
		unfinished = append(unfinished, o.target.device)
	}
	slices.Sort(okDevs)
	slices.Sort(failedDevs)
	slices.Sort(unfinished)
	fail := len(failedDevs) > 0 || len(unfinished) > 0 || len(seen) == 0 ||
		(o.waitFor > 0 && len(final) < o.waitFor)
	if o.target.device == "" || fail {
		if o.json {
			b, _ := json.Marshal(map[string]any{"summary": map[string]any{
				"id": c.ID, "done": nonNil(okDevs), "failed": nonNil(failedDevs), "unfinished": nonNil(unfinished), "timed_out": timedOut}})
			fmt.Fprintf(stdout, "%s\n", b)
		} else {
			fmt.Fprintf(stdout, "%s %s: %d done, %d failed, %d unfinished", typ, c.ID, len(okDevs), len(failedDevs), len(unfinished))
			if len(failedDevs) > 0 {
				fmt.Fprintf(stdout, "; failed: %s", strings.Join(failedDevs, ", "))
			}
			if len(unfinished) > 0 {
				fmt.Fprintf(stdout, "; unfinished: %s", strings.Join(unfinished, ", "))
			}
			fmt.Fprintln(stdout)
		}
	}
	if fail {
		switch {
		case len(seen) == 0:
			return fmt.Errorf("%w: no device replied within %v: check the device names, that the agents are online (edgectl status) and the topic prefix", errFailed, o.timeout)
		case o.waitFor > 0 && len(final) < o.waitFor:
			return fmt.Errorf("%w: %d of the %d devices waited for finished within %v", errFailed, len(final), o.waitFor, o.timeout)
		}
		return errFailed
	}
	return nil
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

func printReply(w io.Writer, raw []byte, r command.Reply, asJSON, bars bool) {
	if asJSON {
		fmt.Fprintf(w, "%s\n", bytes.TrimSpace(raw))
		return
	}
	switch r.Status {
	case command.StatusProgress:
		if bars {
			fmt.Fprintf(w, "%-20s %s %3.0f%% %s\n", r.Device, progressBar(r.Progress), r.Progress*100, r.Message)
		} else {
			fmt.Fprintf(w, "%-20s progress %3.0f%% %s\n", r.Device, r.Progress*100, r.Message)
		}
	case command.StatusFailed:
		fmt.Fprintf(w, "%-20s failed: %s\n", r.Device, r.Reason)
	case command.StatusDone:
		if len(r.Result) > 0 {
			fmt.Fprintf(w, "%-20s done %s\n", r.Device, r.Result)
		} else {
			fmt.Fprintf(w, "%-20s done\n", r.Device)
		}
	default:
		fmt.Fprintf(w, "%-20s %s\n", r.Device, r.Status)
	}
}

// cmdCmd: edgectl cmd --device ID | --group G | --all TYPE [ARGS-JSON]
func cmdCmd(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("cmd", flag.ContinueOnError)
	fs.SetOutput(stderr)
	o := addSendFlags(fs)
	pos, err := parseMixed(fs, args)
	if err != nil {
		return err
	}
	if len(pos) < 1 || len(pos) > 2 {
		return usageError{errors.New("cmd needs TYPE and optional ARGS-JSON")}
	}
	var a json.RawMessage
	if len(pos) == 2 {
		if !json.Valid([]byte(pos[1])) {
			return usageError{fmt.Errorf("ARGS-JSON %q is not valid JSON: quote it, e.g. '{\"model\":\"sin\"}'", pos[1])}
		}
		a = json.RawMessage(pos[1])
	}
	return o.send(pos[0], a, false, stdout, stderr)
}

// cmdPing: edgectl ping --device ID
func cmdPing(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("ping", flag.ContinueOnError)
	fs.SetOutput(stderr)
	o := addSendFlags(fs)
	pos, err := parseMixed(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 0 {
		return usageError{errors.New("ping takes no arguments")}
	}
	return o.send("ping", nil, false, stdout, stderr)
}

// cmdDeploy: edgectl deploy TARGET BUNDLE_FILE (pushed over MQTT), or
// edgectl deploy TARGET --url URL (--sha256 HEX | BUNDLE_FILE) (fetched by the devices).
func cmdDeploy(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("deploy", flag.ContinueOnError)
	fs.SetOutput(stderr)
	o := addSendFlags(fs)
	url := fs.String("url", "", "where the devices download the bundle (default: push BUNDLE_FILE over MQTT)")
	sum := fs.String("sha256", "", "the bundle's sha256 (hex); computed from BUNDLE_FILE when given")
	pos, err := parseMixed(fs, args)
	if err != nil {
		return err
	}
	if *url == "" {
		// Pushed over MQTT in chunks (docs/mqtt.md): a pusher answers the devices' need
		// requests from the file while send follows the replies; it stops when send returns.
		if len(pos) != 1 {
			return usageError{errors.New("deploy needs a BUNDLE_FILE to push over MQTT, or --url URL (with --sha256 HEX or the file) for the devices to fetch")}
		}
		f, err := os.Open(pos[0])
		if err != nil {
			return fmt.Errorf("read bundle: %w", err)
		}
		defer f.Close()
		fi, err := f.Stat()
		if err != nil {
			return fmt.Errorf("read bundle: %w", err)
		}
		maxChunks := fleetclient.MaxPushChunks
		if !o.unsigned {
			maxChunks = fleetclient.MaxSignedPushChunks
		}
		plan, err := fleetclient.PlanPush(f, fi.Size(), maxChunks)
		if err != nil {
			return fmt.Errorf("bundle %s: %w", pos[0], err)
		}
		if *sum != "" && !strings.EqualFold(*sum, plan.SHA256) {
			return fmt.Errorf("--sha256 %s does not match %s (sha256 %s): drop --sha256 or give the right file", *sum, pos[0], plan.SHA256)
		}
		ctx, stop := interruptContext()
		defer stop()
		s, _, cl, err := o.dial(ctx)
		if err != nil {
			return err
		}
		defer cl.Close()
		if o.id == "" {
			o.id = newID()
		}
		p, err := cl.Push(ctx, fleetclient.PushOptions{Prefix: s.Prefix, Device: o.target.device, ID: o.id, Bundle: f, Plan: plan})
		if err != nil {
			return err
		}
		a, _ := json.Marshal(map[string]any{"push": plan})
		err = o.send("deploy", a, true, stdout, stderr)
		p.Stop()
		if st := p.Stats(); !o.json {
			fmt.Fprintf(stderr, "pushed %d chunks (%d bytes) of %s to %d devices\n", st.Chunks, st.Bytes, pos[0], st.Devices)
		}
		return err
	}
	switch len(pos) {
	case 0:
		if *sum == "" {
			return usageError{errors.New("deploy needs --sha256 HEX or a BUNDLE_FILE to compute it from")}
		}
	case 1:
		b, err := os.ReadFile(pos[0])
		if err != nil {
			return fmt.Errorf("read bundle: %w", err)
		}
		h := sha256.Sum256(b)
		got := hex.EncodeToString(h[:])
		if *sum != "" && !strings.EqualFold(*sum, got) {
			return fmt.Errorf("--sha256 %s does not match %s (sha256 %s): drop --sha256 or give the right file", *sum, pos[0], got)
		}
		*sum = got
	default:
		return usageError{errors.New("deploy takes at most one BUNDLE_FILE")}
	}
	if b, err := hex.DecodeString(*sum); err != nil || len(b) != sha256.Size {
		return usageError{fmt.Errorf("--sha256 %q is not 64 hex digits", *sum)}
	}
	a, _ := json.Marshal(map[string]string{"url": *url, "sha256": strings.ToLower(*sum)})
	return o.send("deploy", a, true, stdout, stderr)
}

// cmdRollback: edgectl rollback TARGET MODEL [VERSION]
func cmdRollback(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("rollback", flag.ContinueOnError)
	fs.SetOutput(stderr)
	o := addSendFlags(fs)
	pos, err := parseMixed(fs, args)
	if err != nil {
		return err
	}
	if len(pos) < 1 || len(pos) > 2 {
		return usageError{errors.New("rollback needs MODEL and optional VERSION")}
	}
	m := map[string]string{"model": pos[0]}
	if len(pos) == 2 {
		m["version"] = pos[1]
	}
	a, _ := json.Marshal(m)
	return o.send("rollback", a, false, stdout, stderr)
}

// deviceStatus is the part of edge-agent/status/v1 the fleet table shows.
type deviceStatus struct {
	Device       string `json:"device"`
	State        string `json:"state"`
	AgentVersion string `json:"agent_version"`
	Models       []struct {
		Name    string `json:"name"`
		Version string `json:"version"`
	} `json:"models"`
	Health string    `json:"health"`
	TS     time.Time `json:"ts"`
}

// cmdStatus: edgectl status [--watch] [--settle D] [--json]
func cmdStatus(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	fs.SetOutput(stderr)
	conn := addConnFlags(fs)
	settle := fs.Duration("settle", time.Second, "collect retained statuses this long before printing")
	watch := fs.Bool("watch", false, "keep printing the table on every change until interrupted")
	asJSON := fs.Bool("json", false, "print a JSON array of the devices' status messages")
	pos, err := parseMixed(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 0 {
		return usageError{errors.New("status takes no arguments")}
	}
	s, err := conn.resolve(os.Getenv)
	if err != nil {
		return err
	}
	ctx, stop := interruptContext()
	defer stop()
	cl, err := connect(ctx, s)
	if err != nil {
		return err
	}
	defer cl.Close()
	type update struct {
		dev string
		raw json.RawMessage
	}
	updates := make(chan update, 64)
	done := make(chan struct{})
	defer close(done)
	err = cl.Subscribe(s.Prefix+"/+/status", func(topic string, p []byte) {
		dev := strings.TrimSuffix(strings.TrimPrefix(topic, s.Prefix+"/"), "/status")
		if len(p) == 0 || !json.Valid(p) { // a cleared retained message, or junk
			return
		}
		select {
		case updates <- update{dev, bytes.Clone(p)}:
		case <-done:
		}
	})
	if err != nil {
		return err
	}
	fleet := map[string]json.RawMessage{}
	timer := time.NewTimer(*settle)
	defer timer.Stop()
	settled := false
	for {
		select {
		case u := <-updates:
			fleet[u.dev] = u.raw
			if settled {
				printFleet(stdout, fleet, *asJSON)
			}
		case <-timer.C:
			settled = true
			printFleet(stdout, fleet, *asJSON)
			if !*watch {
				return nil
			}
		case <-ctx.Done():
			return nil
		}
	}
}

func printFleet(w io.Writer, fleet map[string]json.RawMessage, asJSON bool) {
	devs := slices.Sorted(func(yield func(string) bool) {
		for d := range fleet {
			if !yield(d) {
				return
			}
		}
	})
	if asJSON {
		out := make([]json.RawMessage, 0, len(devs))
		for _, d := range devs {
			out = append(out, fleet[d])
		}
		b, _ := json.Marshal(out)
		fmt.Fprintf(w, "%s\n", b)
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "DEVICE\tSTATE\tAGENT\tMODELS\tHEALTH\tLAST SEEN")
	for _, d := range devs {
		var st deviceStatus
		json.Unmarshal(fleet[d], &st)
		var models []string
		for _, m := range st.Models {
			models = append(models, m.Name+"@"+m.Version)
		}
		seen := "-"
		if !st.TS.IsZero() {
			seen = st.TS.UTC().Format(time.RFC3339)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", d, st.State, st.AgentVersion, strings.Join(models, ","), st.Health, seen)
	}
	tw.Flush()
	fmt.Fprintf(w, "%d devices\n", len(devs))
}

// cmdWatch: edgectl watch [--device ID] [--results] [--events] [--count N] [--json]
func cmdWatch(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("watch", flag.ContinueOnError)
	fs.SetOutput(stderr)
	conn := addConnFlags(fs)
	device := fs.String("device", "", "only this device (default every device)")
	results := fs.Bool("results", false, "show results (default: results and events)")
	events := fs.Bool("events", false, "show events (default: results and events)")
	count := fs.Int("count", 0, "stop after this many records (default: until interrupted)")
	timeout := fs.Duration("timeout", 0, "stop after this long (default: until interrupted)")
	asJSON := fs.Bool("json", false, "print each record as one JSON line")
	pos, err := parseMixed(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 0 {
		return usageError{errors.New("watch takes no arguments")}
	}
	if strings.ContainsAny(*device, "+#/") {
		return usageError{fmt.Errorf("--device %q holds '+', '#' or '/'", *device)}
	}
	if !*results && !*events {
		*results, *events = true, true
	}
	s, err := conn.resolve(os.Getenv)
	if err != nil {
		return err
	}
	ctx, stop := interruptContext()
	defer stop()
	if *timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *timeout)
		defer cancel()
	}
	cl, err := connect(ctx, s)
	if err != nil {
		return err
	}
	defer cl.Close()
	dev := *device
	if dev == "" {
		dev = "+"
	}
	type batch struct {
		stream string
		raw    []byte
	}
	batches := make(chan batch, 64)
	done := make(chan struct{})
	defer close(done)
	var streams []string
	if *results {
		streams = append(streams, "results")
	}
	if *events {
		streams = append(streams, "events")
	}
	for _, stream := range streams {
		err := cl.Subscribe(s.Prefix+"/"+dev+"/"+stream, func(_ string, p []byte) {
			select {
			case batches <- batch{stream, bytes.Clone(p)}:
			case <-done:
			}
		})
		if err != nil {
			return err
		}
	}
	last := map[string]uint64{} // stream/device/epoch → highest seq printed: resent records are skipped
	n := 0
	for {
		select {
		case <-ctx.Done():
			return nil
		case b := <-batches:
			recs, dev, err := decodeBatch(b.stream, b.raw)
			if err != nil {
				fmt.Fprintf(stderr, "skipped a %s message: %v\n", b.stream, err)
				continue
			}
			for _, rec := range recs {
				var head struct {
					Seq   uint64 `json:"seq"`
					Epoch uint64 `json:"epoch"` // a new epoch numbers from 1 again
				}
				json.Unmarshal(rec, &head)
				key := fmt.Sprintf("%s/%s/%d", b.stream, dev, head.Epoch)
				if l, ok := last[key]; ok && head.Seq <= l {
					continue
				}
				last[key] = head.Seq
				printRecord(stdout, b.stream, dev, rec, *asJSON)
				if n++; *count > 0 && n >= *count {
					return nil
				}
			}
		}
	}
}

// decodeBatch reads a results or events batch, gzipped or not, and returns its records.
func decodeBatch(stream string, p []byte) ([]json.RawMessage, string, error) {
	if bytes.HasPrefix(p, []byte{0x1f, 0x8b}) {
		zr, err := gzip.NewReader(bytes.NewReader(p))
		if err != nil {
			return nil, "", fmt.Errorf("gzip: %w", err)
		}
		p, err = io.ReadAll(io.LimitReader(zr, 64<<20))
		if err != nil {
			return nil, "", fmt.Errorf("gzip: %w", err)
		}
	}
	var env struct {
		Device  string            `json:"device"`
		Results []json.RawMessage `json:"results"`
		Events  []json.RawMessage `json:"events"`
		Samples []json.RawMessage `json:"samples"`
	}
	if err := json.Unmarshal(p, &env); err != nil {
		return nil, "", fmt.Errorf("not a %s batch: %w", stream, err)
	}
	switch stream {
	case "events":
		return env.Events, env.Device, nil
	case "samples":
		return env.Samples, env.Device, nil
	}
	return env.Results, env.Device, nil
}

func printRecord(w io.Writer, stream, dev string, rec json.RawMessage, asJSON bool) {
	if asJSON {
		var c bytes.Buffer
		if json.Compact(&c, rec) == nil {
			rec = c.Bytes()
		}
		fmt.Fprintf(w, "%s\n", rec)
		return
	}
	var r struct {
		Seq        uint64          `json:"seq"`
		TS         time.Time       `json:"ts"`
		Model      string          `json:"model"`
		Version    string          `json:"version"`
		LatencyUS  int64           `json:"latency_us"`
		Type       string          `json:"type"`
		Severity   string          `json:"severity"`
		Message    string          `json:"message"`
		Outputs    json.RawMessage `json:"outputs"`
		Classes    json.RawMessage `json:"classes"`
		Detections json.RawMessage `json:"detections"`
		Values     json.RawMessage `json:"values"`
	}
	json.Unmarshal(rec, &r)
	ts := r.TS.UTC().Format("15:04:05.000")
	if stream == "events" {
		fmt.Fprintf(w, "%s %s event #%d %s %s: %s\n", ts, dev, r.Seq, r.Severity, r.Type, r.Message)
		return
	}
	out := r.Outputs
	for _, o := range []json.RawMessage{r.Classes, r.Detections, r.Values} {
		if len(o) > 0 {
			out = o
		}
	}
	if len(out) > 200 {
		out = append(out[:200:200], "…"...)
	}
	fmt.Fprintf(w, "%s %s result #%d %s@%s %dµs %s\n", ts, dev, r.Seq, r.Model, r.Version, r.LatencyUS, out)
}

// cmdAB starts an A/B split or a shadow test of an installed version on the targets.
func cmdAB(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("ab", flag.ContinueOnError)
	fs.SetOutput(stderr)
	o := addSendFlags(fs)
	weight := fs.Float64("weight", -1, "split: share of each device's sources served by VERSION, 0..1")
	shadow := fs.Bool("shadow", false, "shadow test: run VERSION on every input, compare, publish only the active version's results")
	pos, err := parseMixed(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 2 || (*shadow == (*weight >= 0)) {
		return usageError{errors.New("ab needs MODEL VERSION and exactly one of --weight W (split) or --shadow")}
	}
	m := map[string]any{"model": pos[0], "version": pos[1], "mode": "shadow"}
	if !*shadow {
		m["mode"], m["weight"] = "split", *weight
	}
	a, _ := json.Marshal(m)
	return o.send("ab", a, false, stdout, stderr)
}

// cmdEndExperiment sends promote or abort for MODEL.
func cmdEndExperiment(verb string, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet(verb, flag.ContinueOnError)
	fs.SetOutput(stderr)
	o := addSendFlags(fs)
	pos, err := parseMixed(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usageError{fmt.Errorf("%s needs MODEL", verb)}
	}
	a, _ := json.Marshal(map[string]string{"model": pos[0]})
	return o.send(verb, a, false, stdout, stderr)
}
