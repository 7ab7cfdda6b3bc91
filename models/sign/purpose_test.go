package sign

import (
	"errors"
	"testing"
)

// A signature counts only for the purpose and artifact its trusted comment names: each check
// takes its own comment and refuses every other, with ErrWrongPurpose.
func TestPurposes(t *testing.T) {
	pub, priv, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	v, err := NewVerifier(pub)
	if err != nil {
		t.Fatal(err)
	}
	signed := func(comment string) Result {
		t.Helper()
		msg := []byte("payload")
		sig, err := Sign(priv, msg, comment)
		if err != nil {
			t.Fatal(err)
		}
		r, err := v.Verify(msg, sig)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	cmd := signed("edge-agent command")
	bun := signed("edge-agent bundle sin 7")
	legacy := signed("edge-agent bundle sin 1.2.0 sequence 7")
	bin := signed("edge-agent binary 1.4.0 arm64")
	file := signed("file:edge-agent") // what edgectl sign wrote before purposes
	old := signed("edgectl command")

	if err := CheckCommand(cmd); err != nil {
		t.Errorf("command signature: %v", err)
	}
	for name, r := range map[string]Result{"bundle": bun, "binary": bin, "file": file, "old command": old} {
		if err := CheckCommand(r); !errors.Is(err, ErrWrongPurpose) {
			t.Errorf("CheckCommand(%s signature %q) = %v; want ErrWrongPurpose", name, r.TrustedComment, err)
		}
	}

	for name, r := range map[string]Result{"bundle": bun, "legacy bundle": legacy} {
		if err := CheckBundle(r, "sin", 7); err != nil {
			t.Errorf("CheckBundle(%s) = %v", name, err)
		}
		if err := CheckBundle(r, "sin", 8); !errors.Is(err, ErrWrongPurpose) {
			t.Errorf("CheckBundle(%s, another sequence) = %v; want ErrWrongPurpose", name, err)
		}
		if err := CheckBundle(r, "cos", 7); !errors.Is(err, ErrWrongPurpose) {
			t.Errorf("CheckBundle(%s, another model) = %v; want ErrWrongPurpose", name, err)
		}
	}
	for name, r := range map[string]Result{"command": cmd, "binary": bin, "file": file,
		"bundle with a longer name": signed("edge-agent bundle sin x 7")} {
		if err := CheckBundle(r, "sin", 7); !errors.Is(err, ErrWrongPurpose) {
			t.Errorf("CheckBundle(%s signature %q) = %v; want ErrWrongPurpose", name, r.TrustedComment, err)
		}
	}

	if b, err := ParseBinary(bin); err != nil || b != (Binary{Version: "1.4.0", Arch: "arm64"}) {
		t.Errorf("ParseBinary = %+v, %v; want 1.4.0, arm64", b, err)
	}
	if b, err := ParseBinary(signed("edge-agent binary 1.3.0 arm64 downgrade 12")); err != nil || b != (Binary{Version: "1.3.0", Arch: "arm64", Downgrade: 12}) {
		t.Errorf("ParseBinary(downgrade) = %+v, %v; want 1.3.0, arm64, downgrade 12", b, err)
	}
	for name, r := range map[string]Result{"command": cmd, "bundle": bun, "file": file,
		"three words": signed("edge-agent binary 1.4.0 arm64 extra"), "one word": signed("edge-agent binary 1.4.0"),
		"double space": signed("edge-agent binary 1.4.0  arm64"), "downgrade 0": signed("edge-agent binary 1.4.0 arm64 downgrade 0"),
		"downgrade word": signed("edge-agent binary 1.4.0 arm64 downgrade x"), "not downgrade": signed("edge-agent binary 1.4.0 arm64 upgrade 3")} {
		if _, err := ParseBinary(r); !errors.Is(err, ErrWrongPurpose) {
			t.Errorf("ParseBinary(%s signature %q) = %v; want ErrWrongPurpose", name, r.TrustedComment, err)
		}
	}
	if got := BundleComment("sin", 7); got != "edge-agent bundle sin 7" {
		t.Errorf("BundleComment = %q", got)
	}
	if got := BinaryComment("1.4.0", "arm64"); got != "edge-agent binary 1.4.0 arm64" {
		t.Errorf("BinaryComment = %q", got)
	}
	if got := DowngradeComment("1.3.0", "arm64", 12); got != "edge-agent binary 1.3.0 arm64 downgrade 12" {
		t.Errorf("DowngradeComment = %q", got)
	}
}
