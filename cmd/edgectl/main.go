// Command edgectl is the fleet console: key and bundle tools, and fleet commands over MQTT:
//
//	edgectl keygen --out PREFIX
//	edgectl bundle pack --spec bundle.yaml --key PREFIX.key -o OUT.tar.gz
//	edgectl bundle sign --key PREFIX.key BUNDLE
//	edgectl bundle verify --pub PREFIX.pub [--pub ...] BUNDLE
//	edgectl bundle inspect [--json] [--pub PREFIX.pub] BUNDLE
//	edgectl cmd|deploy|rollback|ping|status|watch ... (see usage)
//	edgectl version
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/edge-agent/edge-agent/agent"

	_ "github.com/edge-agent/edge-agent/agent/infer/tflite" // pack runs the model for golden vectors
)

const usage = `edgectl is the edge-agent fleet console.

Usage:
  edgectl keygen --out PREFIX (--password-file F | --unencrypted)   new minisign key pair: PREFIX.key
                                               (secret, encrypted with F's first line), PREFIX.pub
  edgectl bundle pack --spec bundle.yaml --key K -o OUT [--expires-in 2160h | --no-expiry]
                                               build a model bundle (reference statistics, golden vectors);
                                               it expires 90 days after packing unless the spec sets expires
  edgectl bundle sign --key K [--password-file F] BUNDLE  (re)sign a bundle's manifest in place
  edgectl bundle verify --pub P [--pub P2] BUNDLE         check signature, every file's sha256 and the manifest
  edgectl bundle inspect [--json] [--pub P] BUNDLE        show the manifest
  edgectl sign --key K [--password-file F] [--version V] [--downgrade N] FILE
                                               FILE.minisig: sign an agent binary (ELF only; the
                                               signature names its version and architecture, and
                                               with --downgrade N allows it below a device's version)
  edgectl version

Fleet commands (MQTT; docs/mqtt.md):
  edgectl cmd TARGET TYPE [ARGS-JSON]          send a raw command, print replies until every device finished
  edgectl deploy TARGET BUNDLE_FILE             push a bundle to the devices over MQTT in chunks, resumable
                                               (progress per device; give a --timeout long enough for the transfer)
  edgectl deploy TARGET --url URL --sha256 HEX  deploy a bundle the devices fetch from URL (progress per device)
  edgectl deploy TARGET --url URL BUNDLE_FILE   the same, with the sha256 computed from the local file
  edgectl selfupdate TARGET --url URL (--sha256 HEX | BINARY_FILE) [--sig-url URL]
                                               the devices install a signed new edge-agent binary and restart
                                               (the previous one comes back if the new one is not ready in time)
  edgectl config TARGET [--set KEY=VALUE]... [--unset KEY]...   change or show the fleet settings (docs/mqtt.md)
  edgectl capture TARGET [--model M] [--count N] --out DIR      upload the next N inputs and outputs as samples
  edgectl rollback TARGET MODEL [VERSION]       go back to the previous (or the given) version of MODEL
  edgectl ab TARGET MODEL VERSION --weight W | --shadow   A/B split (W of the sources) or shadow test of VERSION
  edgectl promote TARGET MODEL                  make the experiment's candidate the active version
  edgectl abort TARGET MODEL                    end the experiment; the active version serves alone
  edgectl ping --device ID                      same as: edgectl cmd --device ID ping
  edgectl status [--watch] [--settle 1s] [--json]   fleet table from the retained status messages
  edgectl watch [--device ID] [--results] [--events] [--count N] [--timeout D] [--json]
                                               live results and events, one line per record, until Ctrl-C
  edgectl serve --dir BUNDLES --state FILE [--listen 127.0.0.1:8070] [--public-url URL] [--tls-cert F --tls-key F]
        [--token-file F] [--instance NAME] [--share GROUP] [--sign-key K | --unsigned-commands]
                                               fleet server: hosts BUNDLES/*.tar.gz (Range requests) and runs
                                               staged, telemetry-gated rollouts of them (docs/fleet-server.md)
  edgectl rollout start [--server URL] [--token-file F] TARGET [--stages 5,25,100] [--max-failures N]
        [--max-error-rate R] [--max-p95-ms MS] [--soak D] [--stage-timeout D] BUNDLE_NAME
  edgectl rollout status [--server URL] [ID] [--json] [--watch]   rollouts of a serve (exit 1 when a watched one halts)
  edgectl rollout halt [--server URL] [--token-file F] [--reason TEXT] ID   stop it and roll its devices back
  edgectl simulate --devices N [--group sim] [--results-per-sec 1] [--duration D] [--deploy [--all]] [--json]
                                               N simulated devices in this process (the agent's real MQTT link and
                                               command router; results from memory; a simulated deploy downloads and
                                               installs nothing); prints devices online, results/s and deploy times

  TARGET is one of --device ID, --group G, --all.
  Command flags: --ttl 10m (expiry), --timeout 60s (wait for replies), --wait-for N (with --group/--all:
  stop once N devices finished), --json (one reply object per line, then a summary object),
  --sign-key K [--password-file F]: the fleet's command key, which signs every command (devices take only
  signed commands by default); also EDGECTL_SIGN_KEY and EDGECTL_SIGN_PASSWORD_FILE, or sign_key and
  sign_password_file in the settings file. --unsigned sends plain JSON, for devices with
  commands.require_signed: false only.
  Exit status 0 when every device that replied finished done; 1 when one failed or did not finish.

  Connection flags (every fleet command): --broker tcp://host:1883|ssl://host:8883, --username, --password,
  --ca-file, --cert-file, --key-file, --server-name, --prefix (default edge), --config FILE.
  Each may come from EDGECTL_BROKER, EDGECTL_USERNAME, EDGECTL_PASSWORD, EDGECTL_CA_FILE, EDGECTL_CERT_FILE,
  EDGECTL_KEY_FILE, EDGECTL_SERVER_NAME, EDGECTL_PREFIX, or the YAML file --config (default
  $HOME/.config/edgectl/config.yaml when it exists) with keys broker, username, password, ca_file,
  cert_file, key_file, server_name, prefix, sign_key, sign_password_file. A flag wins over the environment,
  which wins over the file.

docs/bundle-format.md describes bundles; docs/models.md the agent side.
`

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

type usageError struct{ error }

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	var err error
	switch args[0] {
	case "keygen":
		err = cmdKeygen(args[1:], stdout, stderr)
	case "bundle":
		err = cmdBundle(args[1:], stdout, stderr)
	case "cmd":
		err = cmdCmd(args[1:], stdout, stderr)
	case "ping":
		err = cmdPing(args[1:], stdout, stderr)
	case "deploy":
		err = cmdDeploy(args[1:], stdout, stderr)
	case "rollback":
		err = cmdRollback(args[1:], stdout, stderr)
	case "ab":
		err = cmdAB(args[1:], stdout, stderr)
	case "promote", "abort":
		err = cmdEndExperiment(args[0], args[1:], stdout, stderr)
	case "status":
		err = cmdStatus(args[1:], stdout, stderr)
	case "watch":
		err = cmdWatch(args[1:], stdout, stderr)
	case "sign":
		err = cmdSignFile(args[1:], stdout, stderr)
	case "selfupdate":
		err = cmdSelfupdate(args[1:], stdout, stderr)
	case "capture":
		err = cmdCapture(args[1:], stdout, stderr)
	case "config":
		err = cmdConfig(args[1:], stdout, stderr)
	case "serve":
		err = cmdServe(args[1:], stdout, stderr)
	case "rollout":
		err = cmdRollout(args[1:], stdout, stderr)
	case "simulate":
		err = cmdSimulate(args[1:], stdout, stderr)
	case "version":
		fmt.Fprintln(stdout, "edgectl", agent.Version)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
	default:
		err = usageError{fmt.Errorf("unknown command %q", args[0])}
	}
	var ue usageError
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "edgectl %s: %v\n\n%s", args[0], err, usage)
		return 2
	default:
		fmt.Fprintf(stderr, "edgectl %s: %v\n", args[0], err)
		return 1
	}
}

func cmdBundle(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return usageError{errors.New("bundle needs a subcommand: pack, sign, verify, inspect")}
	}
	switch args[0] {
	case "pack":
		return cmdPack(args[1:], stdout, stderr)
	case "sign":
		return cmdSign(args[1:], stdout, stderr)
	case "verify":
		return cmdVerify(args[1:], stdout, stderr)
	case "inspect":
		return cmdInspect(args[1:], stdout, stderr)
	}
	return usageError{fmt.Errorf("unknown bundle subcommand %q", args[0])}
}

// parseFlags parses a subcommand's flags; a bad flag is a usage error (exit 2), -h is not.
func parseFlags(fs *flag.FlagSet, args []string) error {
	err := fs.Parse(args)
	if err != nil && !errors.Is(err, flag.ErrHelp) {
		return usageError{err}
	}
	return err
}

// readPassword reads a password file (first line), or none.
func readPassword(path string) ([]byte, error) {
	if path == "" {
		return nil, nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	for i, c := range b {
		if c == '\n' || c == '\r' {
			return b[:i], nil
		}
	}
	return b, nil
}

// multiFlag collects repeated flags.
type multiFlag []string

func (m *multiFlag) String() string     { return fmt.Sprint(*m) }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }
