package main

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"

	"github.com/edge-agent/edge-agent/agent"
)

// watch follows a running agent for the service manager and the self-update trial, until ctx
// ends (cmdRun sends STOPPING=1 on the signal; a reload or an exec in place is not a stop).
// Once the agent is ready it tells systemd READY=1 (Type=notify), then calls confirm on every
// tick until it returns true (a trial confirms only once the fleet is reached too); until
// then, late reports whether the trial's deadline passed (then watch returns). While the agent
// runs it sends WATCHDOG=1 every half WatchdogSec. Without NOTIFY_SOCKET (not under systemd)
// the notifications are no-ops.
func watch(ctx context.Context, a *agent.Agent, log *slog.Logger, confirm func() bool, late func(time.Time) bool) {
	notify := func(state string) {
		if _, err := daemon.SdNotify(false, state); err != nil {
			log.Warn("systemd notification failed", "state", state, "err", err)
		}
	}
	dog, err := daemon.SdWatchdogEnabled(false)
	if err != nil {
		log.Warn("systemd watchdog settings unreadable; not pinging", "err", err)
	}
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	var pings <-chan time.Time
	if dog > 0 {
		t := time.NewTicker(dog / 2)
		defer t.Stop()
		pings = t.C
	}
	ready, confirmed := false, false
	for {
		select {
		case <-ctx.Done():
			return
		case <-pings:
			notify("WATCHDOG=1")
		case now := <-tick.C:
			if confirmed {
				continue
			}
			if !ready && testFault != "hang" && a.Ready() {
				ready = true
				notify(fmt.Sprintf("READY=1\nSTATUS=serving (edge-agent %s)", agent.Version))
			}
			if ready && confirm() {
				confirmed = true
				continue
			}
			if late(now) {
				return
			}
		}
	}
}
