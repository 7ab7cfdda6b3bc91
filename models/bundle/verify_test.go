package bundle

import (
	"bytes"
	"errors"
	"testing"

	"github.com/edge-agent/edge-agent/models/sign"
)

// With VerifyWith, a bundle opens only when its manifest signature (real minisign) names this
// manifest's model and sequence: a command or binary signature by the same key, or one
// naming another sequence or model, is refused before anything is extracted.
func TestVerifyWithChecksThePurpose(t *testing.T) {
	pub, priv, err := sign.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	v, err := sign.NewVerifier(pub)
	if err != nil {
		t.Fatal(err)
	}
	files := smallFiles()
	m := withFiles(testManifest(), files) // mnist, sequence 7
	raw, err := marshalManifest(m)
	if err != nil {
		t.Fatal(err)
	}
	archive := func(comment string) []byte {
		sig, err := sign.Sign(priv, raw, comment)
		if err != nil {
			t.Fatal(err)
		}
		return craftTar(t, true, append([]member{reg(ManifestName, raw), reg(SignatureName, sig)}, bodies(files)...)...)
	}
	for _, ok := range []string{"edge-agent bundle mnist 7", "edge-agent bundle mnist 1.2.0 sequence 7"} {
		_, dir := stagingDir(t)
		b, err := Open(bytes.NewReader(archive(ok)), dir, OpenOptions{Verify: VerifyWith(v)})
		if err != nil {
			t.Fatalf("signed %q: %v", ok, err)
		}
		if b.KeyID != pub.ID() {
			t.Errorf("signed %q: key id %q, want %q", ok, b.KeyID, pub.ID())
		}
	}
	for _, bad := range []string{"edge-agent command", "edge-agent binary 1.2.0 amd64", "edge-agent bundle mnist 6",
		"edge-agent bundle sin 7", "file:model.tflite", "test bundle"} {
		parent, dir := stagingDir(t)
		_, err := Open(bytes.NewReader(archive(bad)), dir, OpenOptions{Verify: VerifyWith(v)})
		if !errors.Is(err, ErrSignature) || !errors.Is(err, sign.ErrWrongPurpose) {
			t.Errorf("signed %q: %v; want ErrSignature wrapping sign.ErrWrongPurpose", bad, err)
		}
		checkContained(t, parent, dir)
		if got := dirEntries(t, dir); len(got) != 0 {
			t.Errorf("signed %q: staging holds %v after the refusal", bad, got)
		}
	}
}
