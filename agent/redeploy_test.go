//go:build cgo

package agent_test

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/edge-agent/edge-agent/agent/deploy"
	"github.com/edge-agent/edge-agent/models/sign"
	"github.com/edge-agent/edge-agent/models/store"
)

// A bundle of the active version (same name, version and sequence), sent again as a resumed
// rollout does, succeeds and changes nothing; it is still verified first, and anything else
// at or below the active sequence is still a downgrade.
func TestRedeployOfTheActiveVersionIsANoOp(t *testing.T) {
	f := newFleet(t)
	state := t.TempDir()
	r := startDeploy(t, f, state, 20)
	ctx := context.Background()
	v1 := f.Pack(t, bundleOpt{Version: "1.0.0", Seq: 1})
	v2 := f.Pack(t, bundleOpt{Version: "2.0.0", Seq: 2})
	for _, b := range []string{v1, v2} {
		if _, err := r.a.Deploy().InstallFile(ctx, b); err != nil {
			t.Fatal(err)
		}
	}
	st, err := store.OpenReadOnly(filepath.Join(state, "models"))
	if err != nil {
		t.Fatal(err)
	}
	before, ok, err := st.Active("sin")
	if err != nil || !ok || before.Version != "2.0.0" {
		t.Fatalf("active %+v, %v, %v; want 2.0.0", before, ok, err)
	}
	historyBefore := history(t, state)

	// The same file again, and the same version re-packed and re-signed: done, nothing moves.
	same := f.Pack(t, bundleOpt{Version: "2.0.0", Seq: 2})
	for _, b := range []string{v2, same} {
		man, err := r.a.Deploy().InstallFile(ctx, b)
		if err != nil {
			t.Fatalf("re-deploying the active version: %v; want success", err)
		}
		if man.Name != "sin" || man.Version != "2.0.0" || man.Sequence != 2 {
			t.Errorf("manifest %s %s %d; want sin 2.0.0 2", man.Name, man.Version, man.Sequence)
		}
	}
	after, _, _ := st.Active("sin")
	if after != before {
		t.Errorf("active pointer changed by a no-op deploy:\nbefore %+v\nafter  %+v", before, after)
	}
	if h := history(t, state); h != historyBefore {
		t.Errorf("history changed by a no-op deploy:\nbefore:\n%s\nafter:\n%s", historyBefore, h)
	}
	if v := serving(r); v != "2.0.0" {
		t.Errorf("serving %q; want 2.0.0", v)
	}

	// Verification comes first: the active version signed by an untrusted key is refused.
	_, other, _ := sign.GenerateKey()
	if _, err := r.a.Deploy().InstallFile(ctx, f.Pack(t, bundleOpt{Version: "2.0.0", Seq: 2, Signer: &other})); err == nil || !strings.Contains(err.Error(), "untrusted key") {
		t.Errorf("active version signed by an untrusted key: %v; want a refusal naming the untrusted key", err)
	}
	// Same sequence with another version, and an older one: still downgrades.
	for _, o := range []bundleOpt{{Version: "2.0.1", Seq: 2}, {Version: "1.0.0", Seq: 1}} {
		if _, err := r.a.Deploy().InstallFile(ctx, f.Pack(t, o)); !errors.Is(err, deploy.ErrDowngrade) {
			t.Errorf("%s sequence %d over the active 2.0.0 sequence 2: %v; want ErrDowngrade", o.Version, o.Seq, err)
		}
	}
	if v := serving(r); v != "2.0.0" {
		t.Errorf("serving %q after the refusals; want 2.0.0", v)
	}
}
