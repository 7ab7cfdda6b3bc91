package agent

// Trust: what this device takes from whom, told at every start (log), on the status page,
// in /v1/status and in the retained MQTT status, so that an opt-out or a missing key is
// never silent (docs/security.md).

import (
	"strings"

	"github.com/edge-agent/edge-agent/agent/config"
	"github.com/edge-agent/edge-agent/agent/health"
	"github.com/edge-agent/edge-agent/agent/status"
	"github.com/edge-agent/edge-agent/models/sign"
)

// Commands modes, as status.Security.Commands shows them.
const (
	commandsSigned   = "signed"   // only commands signed by a command key, addressed to this device
	commandsNoKey    = "no key"   // signed commands required, but no key: no command is taken
	commandsUnsigned = "UNSIGNED" // the opt-out: anyone who can publish on the topics commands the device
)

// trust works out the device's security summary and the health conditions that go with it.
// Key errors are left to the parts that load the keys (they refuse to start with them).
func trust(cfg *config.Config) (status.Security, []health.Condition) {
	sec := status.Security{Keys: map[string][]string{}, SharedKeyRoles: cfg.SharedKeyRoles()}
	for _, role := range []string{config.RoleCommands, config.RoleBundles, config.RoleUpdate} {
		ids := []string{}
		if keys, err := sign.KeysFromConfig(cfg.Keys(role)); err == nil {
			for _, k := range keys {
				ids = append(ids, k.ID())
			}
		}
		sec.Keys[role] = ids
	}
	var conds []health.Condition
	switch {
	case !cfg.SignedCommands():
		sec.Commands = commandsUnsigned
		sec.Detail = "commands.require_signed is false: anyone who can publish on this device's command topics can command it; set it to true with commands.trusted_keys"
		conds = append(conds, health.Condition{Code: "security/unsigned-commands", Severity: health.Warning, Component: "security", Message: sec.Detail})
	case len(sec.Keys[config.RoleCommands]) == 0:
		sec.Commands = commandsNoKey
		sec.Detail = "this device takes no fleet command: " + noCommandKeyHint
		if cfg.MQTT.Broker != "" {
			conds = append(conds, health.Condition{Code: "security/no-command-key", Severity: health.Warning, Component: "security", Message: sec.Detail})
		}
	default:
		sec.Commands = commandsSigned
		sec.Detail = "only commands signed by key " + strings.Join(sec.Keys[config.RoleCommands], ", ") + " and addressed to this device or its groups"
	}
	if q := cfg.MQTT; (q.Password != "" || q.PasswordFile != "") && (strings.HasPrefix(q.Broker, "tcp://") || strings.HasPrefix(q.Broker, "mqtt://") || strings.HasPrefix(q.Broker, "ws://")) {
		conds = append(conds, health.Condition{Code: "security/cleartext-password", Severity: health.Warning, Component: "security",
			Message: "mqtt.broker " + q.Broker + " is not TLS, so the MQTT password crosses the network in clear: use ssl://host:8883 with mqtt.ca_file (docs/security.md#broker-access-control)"})
	}
	if len(sec.SharedKeyRoles) > 1 {
		conds = append(conds, health.Condition{Code: "security/shared-keys", Severity: health.Warning, Component: "security",
			Message: "trusted_keys is one key set for " + strings.Join(sec.SharedKeyRoles, ", ") +
				": a key stolen from the fleet server then also signs models and agent binaries; give each its own keys (commands.trusted_keys, bundles.trusted_keys, update.trusted_keys; docs/security.md#upgrading)"})
	}
	return sec, conds
}
