package sign

// Purposes. Every signature edge-agent relies on states in its trusted comment (which the
// signature covers) what it was made for, and each verifier checks that purpose, so a
// signature made for one thing is refused for another: a signed command is not a model
// bundle, a signed bundle manifest or a signed script is not an agent binary.
//
//	edge-agent command                    a fleet command envelope
//	edge-agent bundle NAME SEQUENCE       the manifest of release SEQUENCE of model NAME
//	edge-agent binary VERSION ARCH        an edge-agent executable of VERSION for GOARCH ARCH
//	edge-agent binary VERSION ARCH downgrade SEQ
//	                                      the same, signed to replace a higher version: the
//	                                      device takes it once, if SEQ is above every
//	                                      downgrade it took before (agent/update's floor)

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// ErrWrongPurpose: a valid signature by a trusted key whose trusted comment says it was made
// for another purpose or artifact.
var ErrWrongPurpose = errors.New("signature made for another purpose")

// CommandComment is the trusted comment of every signed command.
const CommandComment = "edge-agent command"

const (
	bundlePrefix = "edge-agent bundle "
	binaryPrefix = "edge-agent binary "
)

// BundleComment is the trusted comment of the manifest signature of release seq of model name.
func BundleComment(name string, seq uint64) string {
	return bundlePrefix + name + " " + strconv.FormatUint(seq, 10)
}

// BinaryComment is the trusted comment of the signature of an agent binary.
func BinaryComment(version, arch string) string {
	return binaryPrefix + version + " " + arch
}

// DowngradeComment is the trusted comment of an agent binary signed as downgrade seq: one a
// device installs even though it runs (or ran) a higher version.
func DowngradeComment(version, arch string, seq uint64) string {
	return BinaryComment(version, arch) + " downgrade " + strconv.FormatUint(seq, 10)
}

// Binary is what an agent binary's signature vouches for.
type Binary struct {
	Version string
	Arch    string
	// Downgrade is the downgrade sequence (0: an ordinary release, which must be above the
	// device's version floor).
	Downgrade uint64
}

// CheckCommand reports whether r is a command signature.
func CheckCommand(r Result) error {
	if r.TrustedComment != CommandComment {
		return fmt.Errorf("%w: the signature's trusted comment is %q, a command's is %q (sign commands with edgectl and a command key)",
			ErrWrongPurpose, r.TrustedComment, CommandComment)
	}
	return nil
}

// CheckBundle reports whether r signs the manifest of release seq of model name. It also
// takes the comment edgectl wrote before purposes were checked ("edge-agent bundle NAME
// VERSION sequence SEQ"), which names the model and sequence just as well, so bundles
// installed before an upgrade keep verifying.
func CheckBundle(r Result, name string, seq uint64) error {
	want := BundleComment(name, seq)
	if r.TrustedComment == want {
		return nil
	}
	if f := strings.Fields(r.TrustedComment); len(f) == 6 && strings.HasPrefix(r.TrustedComment, bundlePrefix) &&
		f[2] == name && f[4] == "sequence" && f[5] == strconv.FormatUint(seq, 10) {
		return nil
	}
	return fmt.Errorf("%w: the manifest signature's trusted comment is %q, want %q (re-sign the bundle: edgectl bundle sign --key BUNDLE_KEY FILE)",
		ErrWrongPurpose, r.TrustedComment, want)
}

// ParseBinary returns what an agent binary signature vouches for.
func ParseBinary(r Result) (Binary, error) {
	rest, ok := strings.CutPrefix(r.TrustedComment, binaryPrefix)
	f := strings.Fields(rest)
	if ok && strings.Join(f, " ") == rest {
		switch len(f) {
		case 2:
			return Binary{Version: f[0], Arch: f[1]}, nil
		case 4:
			if seq, err := strconv.ParseUint(f[3], 10, 64); err == nil && f[2] == "downgrade" && seq > 0 {
				return Binary{Version: f[0], Arch: f[1], Downgrade: seq}, nil
			}
		}
	}
	return Binary{}, fmt.Errorf("%w: the signature's trusted comment is %q, an agent binary's is %q or %q (sign binaries with edgectl sign --key BINARY_KEY FILE)",
		ErrWrongPurpose, r.TrustedComment, BinaryComment("VERSION", "ARCH"), DowngradeComment("VERSION", "ARCH", 1))
}

// VerifyCommand checks that sig is a command signature (CheckCommand) of msg by a trusted key.
func (v *Verifier) VerifyCommand(msg, sig []byte) error {
	r, err := v.Verify(msg, sig)
	if err == nil {
		err = CheckCommand(r)
	}
	return err
}
