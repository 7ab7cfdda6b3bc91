package bundle

import (
	"fmt"

	"github.com/edge-agent/edge-agent/models/sign"
)

// VerifyWith is the OpenOptions.Verify of a minisign verifier: the manifest's signature must
// be by one of v's keys and made for this manifest's model and sequence (trusted comment
// "edge-agent bundle NAME SEQUENCE", sign.CheckBundle), so a command or binary signature, or
// the signature of another model's manifest, never opens a bundle.
func VerifyWith(v *sign.Verifier) func(manifest, sig []byte) (keyID string, err error) {
	return func(manifest, sig []byte) (string, error) {
		r, err := v.Verify(manifest, sig)
		if err != nil {
			return "", err
		}
		m, err := decodeManifest(manifest) // signed, so its name and sequence are the signer's
		if err != nil {
			return "", err
		}
		if err := sign.CheckBundle(r, m.Name, m.Sequence); err != nil {
			return "", fmt.Errorf("key %s: %w", r.KeyID, err)
		}
		return r.KeyID, nil
	}
}
