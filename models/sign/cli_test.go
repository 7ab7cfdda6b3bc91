package sign

// Interoperability with the stock minisign CLI (Debian's minisign 0.11), run for real.

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/blake2b"
	"golang.org/x/crypto/scrypt"
)

// minisignCLI returns the path of the minisign binary. A missing binary fails the test:
// skipping would hide that interoperability is no longer checked.
func minisignCLI(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("minisign")
	if err != nil {
		t.Fatalf("the minisign CLI is not installed (%v): apt-get install minisign (scripts/deps.sh installs it)", err)
	}
	return bin
}

// runCLI runs minisign with args, feeding stdin (nothing: /dev/null) and returning its
// combined output.
func runCLI(t *testing.T, stdin string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, minisignCLI(t), args...)
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	} // else os/exec reads from /dev/null
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// mustCLI runs minisign and fails the test when it fails.
func mustCLI(t *testing.T, stdin string, args ...string) string {
	t.Helper()
	out, err := runCLI(t, stdin, args...)
	if err != nil {
		t.Fatalf("minisign %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// writePubFile writes pub as a minisign .pub file.
func writePubFile(t testing.TB, path string, pub PublicKey) {
	t.Helper()
	text := "untrusted comment: minisign public key " + pub.ID() + "\n" + pub.String() + "\n"
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
}

func writeFile(t testing.TB, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

func readFile(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func mustVerifier(t testing.TB, keys ...PublicKey) *Verifier {
	t.Helper()
	v, err := NewVerifier(keys...)
	if err != nil {
		t.Fatalf("NewVerifier: %v", err)
	}
	return v
}

// cliKeyPair runs `minisign -G -W` and returns the paths of its .pub and secret key files.
func cliKeyPair(t *testing.T, dir string) (pubPath, secPath string) {
	t.Helper()
	pubPath, secPath = filepath.Join(dir, "cli.pub"), filepath.Join(dir, "cli.key")
	mustCLI(t, "", "-G", "-W", "-p", pubPath, "-s", secPath)
	return pubPath, secPath
}

func TestGoSignatureVerifiedByCLI(t *testing.T) {
	dir := t.TempDir()
	pub, priv, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	pubPath := filepath.Join(dir, "go.pub")
	writePubFile(t, pubPath, pub)
	file := filepath.Join(dir, "manifest.json")
	writeFile(t, file, []byte(`{"name":"kws","version":"1.2.0"}`+"\n"))
	const comment = "edge-agent bundle kws 1.2.0 sequence 7"
	sig, err := Sign(priv, readFile(t, file), comment)
	if err != nil {
		t.Fatalf("Sign: %v", err)
	}
	writeFile(t, file+".minisig", sig)

	out := mustCLI(t, "", "-V", "-p", pubPath, "-m", file)
	if !strings.Contains(out, "Trusted comment: "+comment) {
		t.Errorf("minisign -V output %q; want it to show the trusted comment %q", out, comment)
	}
	// -H demands a prehashed signature: ours must pass it too.
	mustCLI(t, "", "-V", "-H", "-P", pub.String(), "-m", file)

	// The CLI must also notice tampering, or the checks above prove nothing.
	writeFile(t, file, []byte(`{"name":"kws","version":"6.6.6"}`+"\n"))
	if out, err := runCLI(t, "", "-V", "-p", pubPath, "-m", file); err == nil {
		t.Errorf("minisign -V accepted a tampered file:\n%s", out)
	}
}

func TestCLISignatureVerifiedInGo(t *testing.T) {
	dir := t.TempDir()
	pubPath, secPath := cliKeyPair(t, dir)

	keys, err := KeysFromConfig([]string{pubPath})
	if err != nil {
		t.Fatalf("KeysFromConfig(%s): %v", pubPath, err)
	}
	pubText := string(readFile(t, pubPath))
	wantID := strings.TrimSpace(strings.TrimPrefix(strings.SplitN(pubText, "\n", 2)[0], "untrusted comment: minisign public key"))
	if got := keys[0].ID(); got != wantID {
		t.Errorf("ID() = %q; want %q as the CLI printed it", got, wantID)
	}
	bare, err := ParsePublicKey(strings.SplitN(pubText, "\n", 3)[1])
	if err != nil || !bare.Equal(keys[0]) {
		t.Errorf("ParsePublicKey(key line) = %v, %v; want the key of the .pub file", bare, err)
	}
	v := mustVerifier(t, keys...)

	msg := []byte("a model manifest\n")
	file := filepath.Join(dir, "m.json")
	writeFile(t, file, msg)

	t.Run("prehashed", func(t *testing.T) {
		mustCLI(t, "", "-S", "-s", secPath, "-m", file, "-t", "release 1.4.0 by the CLI")
		res, err := v.Verify(msg, readFile(t, file+".minisig"))
		if err != nil {
			t.Fatalf("Verify(CLI signature): %v", err)
		}
		want := Result{KeyID: wantID, TrustedComment: "release 1.4.0 by the CLI"}
		if res != want {
			t.Errorf("Verify = %+v; want %+v", res, want)
		}
	})
	t.Run("default trusted comment", func(t *testing.T) {
		mustCLI(t, "", "-S", "-s", secPath, "-m", file)
		res, err := v.Verify(msg, readFile(t, file+".minisig"))
		if err != nil {
			t.Fatalf("Verify(CLI signature): %v", err)
		}
		if !strings.HasPrefix(res.TrustedComment, "timestamp:") || !strings.Contains(res.TrustedComment, "\tfile:m.json") {
			t.Errorf("TrustedComment = %q; want the CLI's default \"timestamp:…\\tfile:m.json…\"", res.TrustedComment)
		}
	})
	// Legacy (non-prehashed) signatures: minisign 0.11 still writes them with -l and its -V
	// accepts them unless -H is given. We accept them too and say so in Result.Legacy.
	t.Run("legacy", func(t *testing.T) {
		legacy := filepath.Join(dir, "legacy.minisig")
		mustCLI(t, "", "-S", "-l", "-s", secPath, "-m", file, "-x", legacy, "-t", "legacy")
		res, err := v.Verify(msg, readFile(t, legacy))
		if err != nil {
			t.Fatalf("Verify(legacy CLI signature): %v", err)
		}
		if want := (Result{KeyID: wantID, TrustedComment: "legacy", Legacy: true}); res != want {
			t.Errorf("Verify = %+v; want %+v", res, want)
		}
		if _, err := v.Verify([]byte("another message\n"), readFile(t, legacy)); !errors.Is(err, ErrBadSignature) {
			t.Errorf("Verify(other message, legacy signature) = %v; want ErrBadSignature", err)
		}
	})
}

func TestGoPrivateKeyUsedByCLI(t *testing.T) {
	dir := t.TempDir()
	pub, priv, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	secPath := filepath.Join(dir, "go.key")
	if err := WritePrivateKey(secPath, priv, nil); err != nil {
		t.Fatalf("WritePrivateKey: %v", err)
	}
	if st, err := os.Stat(secPath); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("secret key file mode: %v, %v; want 0600", st.Mode(), err)
	}

	// The CLI recreates the same public key from our secret key file...
	pubPath := filepath.Join(dir, "recreated.pub")
	mustCLI(t, "", "-R", "-s", secPath, "-p", pubPath)
	got, err := ParsePublicKey(string(readFile(t, pubPath)))
	if err != nil || !got.Equal(pub) {
		t.Fatalf("minisign -R from our secret key gave %v (%v); want %v", got, err, pub)
	}
	// ...and signs with it, without asking for a password.
	msg := []byte("binary v2\n")
	file := filepath.Join(dir, "edge-agent")
	writeFile(t, file, msg)
	mustCLI(t, "", "-S", "-s", secPath, "-m", file, "-t", "signed by the CLI with a Go key")
	res, err := mustVerifier(t, pub).Verify(msg, readFile(t, file+".minisig"))
	if err != nil || res.TrustedComment != "signed by the CLI with a Go key" {
		t.Errorf("Verify = %+v, %v; want the CLI's comment and no error", res, err)
	}
}

func TestCLIPrivateKeyReadInGo(t *testing.T) {
	dir := t.TempDir()
	pubPath, secPath := cliKeyPair(t, dir)
	priv, err := ReadPrivateKey(secPath, nil)
	if err != nil {
		t.Fatalf("ReadPrivateKey(minisign -G -W key): %v", err)
	}
	pub, err := ParsePublicKey(string(readFile(t, pubPath)))
	if err != nil {
		t.Fatal(err)
	}
	if !priv.Public().Equal(pub) || priv.ID() != pub.ID() {
		t.Fatalf("secret key read from the CLI's file has public key %v (id %s); want %v (id %s)", priv.Public(), priv.ID(), pub, pub.ID())
	}
	// Our file for the same key is byte for byte what the CLI wrote.
	ours := filepath.Join(dir, "ours.key")
	if err := WritePrivateKey(ours, priv, nil); err != nil {
		t.Fatal(err)
	}
	if a, b := readFile(t, ours), readFile(t, secPath); !bytes.Equal(a, b) {
		t.Errorf("WritePrivateKey(no password) wrote\n%s\nthe CLI wrote\n%s", a, b)
	}

	file := filepath.Join(dir, "m")
	writeFile(t, file, []byte("signed in Go with the CLI's key\n"))
	sig, err := Sign(priv, readFile(t, file), "go")
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, file+".minisig", sig)
	mustCLI(t, "", "-V", "-H", "-p", pubPath, "-m", file)
}

// lowCostEncryptedKey encrypts priv the way minisign does, but with the smallest scrypt
// cost (N=1024) instead of the 1 GiB "sensitive" one, so that wrong-password paths can be
// tested quickly in Go and in the CLI (both take the cost from the file).
func lowCostEncryptedKey(t testing.TB, priv PrivateKey, password string) []byte {
	t.Helper()
	plain, err := priv.k.MarshalText()
	if err != nil {
		t.Fatal(err)
	}
	raw, err := base64.StdEncoding.DecodeString(string(plain[bytes.IndexByte(plain, '\n')+1:]))
	if err != nil {
		t.Fatal(err)
	}
	const ops, mem = 32768, 16 << 20 // libsodium and aead.dev/minisign both derive N=1024, r=8, p=1
	copy(raw[skKDFOff:], "Sc")
	if _, err := rand.Read(raw[6:38]); err != nil { // salt
		t.Fatal(err)
	}
	binary.LittleEndian.PutUint64(raw[skOpsOff:], ops)
	binary.LittleEndian.PutUint64(raw[skMemOff:], mem)
	secret := raw[skKeyNumOff : skKeyNumOff+72] // key id and Ed25519 secret key
	chk := blake2b.Sum256(append([]byte("Ed"), secret...))
	copy(raw[skKeyNumOff+72:], chk[:])
	stream, err := scrypt.Key([]byte(password), raw[6:38], 1024, 8, 1, skSize-skKeyNumOff)
	if err != nil {
		t.Fatal(err)
	}
	for i, k := range stream {
		raw[skKeyNumOff+i] ^= k
	}
	return []byte("untrusted comment: minisign encrypted secret key\n" + base64.StdEncoding.EncodeToString(raw) + "\n")
}

func TestEncryptedKeyPasswords(t *testing.T) {
	dir := t.TempDir()
	pub, priv, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	secPath := filepath.Join(dir, "enc.key")
	writeFile(t, secPath, lowCostEncryptedKey(t, priv, "s3cret"))

	got, err := ReadPrivateKey(secPath, []byte("s3cret"))
	if err != nil || !got.Public().Equal(pub) {
		t.Fatalf("ReadPrivateKey(right password) = %v, %v; want the key", got, err)
	}
	if _, err := ReadPrivateKey(secPath, []byte("wrong")); !errors.Is(err, ErrWrongPassword) {
		t.Errorf("ReadPrivateKey(wrong password) = %v; want ErrWrongPassword", err)
	}
	if _, err := ReadPrivateKey(secPath, nil); !errors.Is(err, ErrWrongPassword) || !strings.Contains(err.Error(), "give its password") {
		t.Errorf("ReadPrivateKey(no password) = %v; want ErrWrongPassword asking for the password", err)
	}

	// The CLI agrees about both passwords.
	file := filepath.Join(dir, "m")
	writeFile(t, file, []byte("hello\n"))
	if out, err := runCLI(t, "wrong\n", "-S", "-s", secPath, "-m", file); err == nil || !strings.Contains(out, "Wrong password") {
		t.Errorf("minisign -S with a wrong password: %v\n%s\nwant it refused with \"Wrong password\"", err, out)
	}
	mustCLI(t, "s3cret\n", "-S", "-s", secPath, "-m", file)
	if _, err := mustVerifier(t, pub).Verify([]byte("hello\n"), readFile(t, file+".minisig")); err != nil {
		t.Errorf("Verify: %v", err)
	}
}

// Real encrypted keys use scrypt at libsodium's "sensitive" cost (1 GiB, seconds per key;
// tens of seconds under -race), the CLI's default. The CLI reads the password from stdin
// when stdin is not a terminal.
func TestEncryptedKeysInterop(t *testing.T) {
	const password = "correct horse battery staple"
	t.Run("Go writes, CLI signs", func(t *testing.T) {
		t.Parallel()
		dir := t.TempDir()
		pub, priv, err := GenerateKey()
		if err != nil {
			t.Fatal(err)
		}
		secPath := filepath.Join(dir, "go.key")
		if err := WritePrivateKey(secPath, priv, []byte(password)); err != nil {
			t.Fatalf("WritePrivateKey: %v", err)
		}
		file := filepath.Join(dir, "m")
		writeFile(t, file, []byte("hello\n"))
		mustCLI(t, password+"\n", "-S", "-s", secPath, "-m", file, "-t", "cli")
		if _, err := mustVerifier(t, pub).Verify([]byte("hello\n"), readFile(t, file+".minisig")); err != nil {
			t.Errorf("Verify: %v", err)
		}
	})
	t.Run("CLI writes, Go signs", func(t *testing.T) {
		t.Parallel()
		dir := t.TempDir()
		pubPath, secPath := filepath.Join(dir, "cli.pub"), filepath.Join(dir, "cli.key")
		mustCLI(t, password+"\n"+password+"\n", "-G", "-p", pubPath, "-s", secPath)
		priv, err := ReadPrivateKey(secPath, []byte(password))
		if err != nil {
			t.Fatalf("ReadPrivateKey: %v", err)
		}
		file := filepath.Join(dir, "m")
		writeFile(t, file, []byte("hello\n"))
		sig, err := Sign(priv, []byte("hello\n"), "go")
		if err != nil {
			t.Fatal(err)
		}
		writeFile(t, file+".minisig", sig)
		mustCLI(t, "", "-V", "-p", pubPath, "-m", file)
	})
}
