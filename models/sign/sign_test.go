package sign

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// fixedKey returns a deterministic key pair (the fuzz corpus in testdata depends on it).
func fixedKey(t testing.TB, seed byte) (PublicKey, PrivateKey) {
	t.Helper()
	pub, priv, err := generateKey(bytes.NewReader(bytes.Repeat([]byte{seed}, 32)))
	if err != nil {
		t.Fatal(err)
	}
	return pub, priv
}

func mustSign(t testing.TB, priv PrivateKey, msg []byte, comment string) []byte {
	t.Helper()
	sig, err := Sign(priv, msg, comment)
	if err != nil {
		t.Fatalf("Sign: %v", err)
	}
	return sig
}

// sigLines splits a signature file into its four lines.
func sigLines(t testing.TB, sig []byte) []string {
	t.Helper()
	l := strings.Split(strings.TrimSuffix(string(sig), "\n"), "\n")
	if len(l) != 4 {
		t.Fatalf("signature has %d lines; want 4:\n%s", len(l), sig)
	}
	return l
}

// flipDecoded flips one bit of the base64 line i of sig at byte offset off and re-encodes
// it, so the file stays well formed.
func flipDecoded(t testing.TB, sig []byte, line, off int) []byte {
	t.Helper()
	l := sigLines(t, sig)
	b, err := base64.StdEncoding.DecodeString(l[line])
	if err != nil {
		t.Fatal(err)
	}
	b[off] ^= 0x01
	l[line] = base64.StdEncoding.EncodeToString(b)
	return []byte(strings.Join(l, "\n") + "\n")
}

func TestSignVerifyRoundTrip(t *testing.T) {
	pub, priv := fixedKey(t, 1)
	msg := []byte("manifest")
	sig := mustSign(t, priv, msg, "release 3")
	if l := sigLines(t, sig); !strings.HasPrefix(l[1], "RU") { // base64 of "ED": prehashed
		t.Errorf("signature line %q; want a prehashed (ED) signature", l[1])
	}
	res, err := mustVerifier(t, pub).Verify(msg, sig)
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if want := (Result{KeyID: pub.ID(), TrustedComment: "release 3"}); res != want {
		t.Errorf("Verify = %+v; want %+v", res, want)
	}
	// An empty message and an empty trusted comment are valid.
	if _, err := mustVerifier(t, pub).Verify(nil, mustSign(t, priv, nil, "")); err != nil {
		t.Errorf("Verify(empty message, empty comment): %v", err)
	}
}

func TestRotation(t *testing.T) {
	pubA, privA := fixedKey(t, 1)
	pubB, privB := fixedKey(t, 2)
	pubC, privC := fixedKey(t, 3)
	v := mustVerifier(t, pubA, pubB)
	if got, want := v.KeyIDs(), []string{pubA.ID(), pubB.ID()}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("KeyIDs() = %v; want %v", got, want)
	}
	msg := []byte("model v2")
	for _, k := range []struct {
		pub  PublicKey
		priv PrivateKey
	}{{pubA, privA}, {pubB, privB}} {
		res, err := v.Verify(msg, mustSign(t, k.priv, msg, "c"))
		if err != nil || res.KeyID != k.pub.ID() {
			t.Errorf("Verify(signed by %s) = %+v, %v; want key id %s", k.pub.ID(), res, err, k.pub.ID())
		}
	}
	_, err := v.Verify(msg, mustSign(t, privC, msg, "c"))
	if !errors.Is(err, ErrUntrustedKey) {
		t.Fatalf("Verify(signed by a third key) = %v; want ErrUntrustedKey", err)
	}
	if !strings.Contains(err.Error(), pubC.ID()) {
		t.Errorf("error %q; want it to name the signing key id %s", err, pubC.ID())
	}
}

func TestTampering(t *testing.T) {
	pub, priv := fixedKey(t, 1)
	v := mustVerifier(t, pub)
	msg := []byte(`{"model":"kws.tflite","sha256":"00ff"}`)
	sig := mustSign(t, priv, msg, "edge-agent bundle kws 1.0.0 sequence 1")

	flippedMsg := bytes.Clone(msg)
	flippedMsg[5] ^= 0x20
	l := sigLines(t, sig)
	l[2] = strings.Replace(l[2], "sequence 1", "sequence 9", 1)
	alteredComment := []byte(strings.Join(l, "\n") + "\n")
	l = sigLines(t, sig)
	l[1] = "RW" + l[1][2:] // "ED" → "Ed": claim a legacy signature
	legacyClaim := []byte(strings.Join(l, "\n") + "\n")

	for _, tc := range []struct {
		name     string
		msg, sig []byte
		want     error
		because  string
	}{
		{"flipped message byte", flippedMsg, sig, ErrBadSignature, "message does not match"},
		{"flipped signature byte", msg, flipDecoded(t, sig, 1, 20), ErrBadSignature, "altered"},
		{"flipped comment signature byte", msg, flipDecoded(t, sig, 3, 7), ErrBadSignature, "trusted comment was altered"},
		{"altered trusted comment", msg, alteredComment, ErrBadSignature, "trusted comment was altered"},
		{"prehashed claimed legacy", msg, legacyClaim, ErrBadSignature, "message does not match"},
		{"flipped key id", msg, flipDecoded(t, sig, 1, 3), ErrUntrustedKey, "key id"},
		{"message signed with another comment", msg, mustSign(t, priv, []byte("other"), "edge-agent bundle kws 1.0.0 sequence 1"), ErrBadSignature, "message does not match"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res, err := v.Verify(tc.msg, tc.sig)
			if !errors.Is(err, tc.want) {
				t.Fatalf("Verify = %+v, %v; want %v", res, err, tc.want)
			}
			if !strings.Contains(err.Error(), tc.because) {
				t.Errorf("error %q; want it to say %q", err, tc.because)
			}
		})
	}

	// The untrusted comment is not signed: changing it changes nothing.
	l = sigLines(t, sig)
	l[0] = "untrusted comment: anything at all"
	if _, err := v.Verify(msg, []byte(strings.Join(l, "\n")+"\n")); err != nil {
		t.Errorf("Verify(altered untrusted comment) = %v; want success", err)
	}
	// CRLF line ends (a signature that went through a Windows editor) still verify.
	if _, err := v.Verify(msg, bytes.ReplaceAll(sig, []byte("\n"), []byte("\r\n"))); err != nil {
		t.Errorf("Verify(CRLF signature) = %v; want success", err)
	}
}

func TestMalformed(t *testing.T) {
	pub, priv := fixedKey(t, 1)
	v := mustVerifier(t, pub)
	msg := []byte("m")
	sig := mustSign(t, priv, msg, "c")
	l := sigLines(t, sig)
	with := func(i int, s string) []byte {
		c := append([]string(nil), l...)
		c[i] = s
		return []byte(strings.Join(c, "\n") + "\n")
	}
	raw, _ := base64.StdEncoding.DecodeString(l[1])
	badAlg := append([]byte("Xx"), raw[2:]...)

	for _, tc := range []struct {
		name string
		sig  []byte
	}{
		{"empty", nil},
		{"garbage", []byte("\x00\xff not a signature at all")},
		{"a public key", []byte("untrusted comment: minisign public key\n" + pub.String() + "\n")},
		{"truncated to two lines", []byte(strings.Join(l[:2], "\n") + "\n")},
		{"truncated mid line", sig[:len(sig)/2]},
		{"truncated comment signature", sig[:len(sig)-10]},
		{"oversize", append(bytes.Clone(sig), bytes.Repeat([]byte("\n"), MaxSignatureSize)...)},
		{"oversize trusted comment", with(2, "trusted comment: "+strings.Repeat("x", MaxSignatureSize))},
		{"no untrusted comment prefix", with(0, "comment: x")},
		{"no trusted comment prefix", with(2, "c")},
		{"bad base64", with(1, "RUR!!!!")},
		{"short signature", with(1, base64.StdEncoding.EncodeToString(raw[:40]))},
		{"unknown algorithm", with(1, base64.StdEncoding.EncodeToString(badAlg))},
		{"NUL in trusted comment", with(2, "trusted comment: c\x00hidden")},
		{"CR in trusted comment", with(2, "trusted comment: c\rhidden")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res, err := v.Verify(msg, tc.sig)
			if !errors.Is(err, ErrMalformed) {
				t.Errorf("Verify = %+v, %v; want ErrMalformed", res, err)
			}
		})
	}
}

func TestSignRefuses(t *testing.T) {
	_, priv := fixedKey(t, 1)
	for _, tc := range []struct {
		name    string
		priv    PrivateKey
		comment string
	}{
		{"zero key", PrivateKey{}, "c"},
		{"newline in comment", priv, "a\ntrusted comment: b"},
		{"CR in comment", priv, "a\rb"},
		{"NUL in comment", priv, "a\x00b"},
		{"comment too long", priv, strings.Repeat("x", MaxTrustedCommentSize+1)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if sig, err := Sign(tc.priv, []byte("m"), tc.comment); err == nil {
				t.Errorf("Sign = %q, nil; want an error", sig)
			}
		})
	}
	// The longest allowed comment still makes a signature Verify accepts.
	long := strings.Repeat("x", MaxTrustedCommentSize)
	res, err := mustVerifier(t, priv.Public()).Verify([]byte("m"), mustSign(t, priv, []byte("m"), long))
	if err != nil || res.TrustedComment != long {
		t.Errorf("Verify(longest comment) = %v; want success", err)
	}
}

func TestParsePublicKey(t *testing.T) {
	pub, _ := fixedKey(t, 1)
	file := "untrusted comment: minisign public key " + pub.ID() + "\n" + pub.String() + "\n"
	for _, text := range []string{
		pub.String(),
		"  " + pub.String() + "\n",
		file,
		strings.ReplaceAll(file, "\n", "\r\n"),
	} {
		got, err := ParsePublicKey(text)
		if err != nil || !got.Equal(pub) {
			t.Errorf("ParsePublicKey(%q) = %v, %v; want %v", text, got, err, pub)
		}
	}
	raw, _ := base64.StdEncoding.DecodeString(pub.String())
	for _, text := range []string{
		"",
		"untrusted comment: only a comment\n",
		"not base64!",
		pub.String() + "\n" + pub.String(),
		base64.StdEncoding.EncodeToString(raw[:30]),
		base64.StdEncoding.EncodeToString(append([]byte("ED"), raw[2:]...)),
		strings.Repeat("A", 5000),
	} {
		if got, err := ParsePublicKey(text); !errors.Is(err, ErrInvalidKey) {
			t.Errorf("ParsePublicKey(%.40q) = %v, %v; want ErrInvalidKey", text, got, err)
		}
	}
}

func TestKeysFromConfig(t *testing.T) {
	pubA, _ := fixedKey(t, 1)
	pubB, _ := fixedKey(t, 2)
	dir := t.TempDir()
	pubPath := filepath.Join(dir, "b.pub")
	writePubFile(t, pubPath, pubB)

	keys, err := KeysFromConfig([]string{pubA.String(), pubPath})
	if err != nil {
		t.Fatalf("KeysFromConfig: %v", err)
	}
	if len(keys) != 2 || !keys[0].Equal(pubA) || !keys[1].Equal(pubB) {
		t.Errorf("KeysFromConfig = %v; want [%v %v]", keys, pubA, pubB)
	}

	// A relative path with ./ is a path too.
	wd, _ := os.Getwd()
	t.Chdir(dir)
	if keys, err := KeysFromConfig([]string{"./b.pub"}); err != nil || !keys[0].Equal(pubB) {
		t.Errorf("KeysFromConfig(./b.pub) = %v, %v", keys, err)
	}
	t.Chdir(wd)

	for _, tc := range []struct {
		lines []string
		want  string
	}{
		{[]string{pubA.String(), "RWQbad"}, "trusted_keys[1]"},
		{[]string{""}, "trusted_keys[0]: empty"},
		{[]string{pubA.String(), pubB.String(), filepath.Join(dir, "missing.pub")}, "trusted_keys[2]: public key file"},
	} {
		if _, err := KeysFromConfig(tc.lines); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("KeysFromConfig(%q) = %v; want an error containing %q", tc.lines, err, tc.want)
		}
	}
}

func TestNewVerifier(t *testing.T) {
	pub, _ := fixedKey(t, 1)
	if _, err := NewVerifier(); !errors.Is(err, ErrInvalidKey) {
		t.Errorf("NewVerifier() = %v; want an error: no trusted keys", err)
	}
	if _, err := NewVerifier(PublicKey{}); err == nil {
		t.Error("NewVerifier(zero key) succeeded; want an error")
	}
	if v, err := NewVerifier(pub, pub); err != nil || len(v.KeyIDs()) != 1 {
		t.Errorf("NewVerifier(same key twice) = %v; want one key", err)
	}
	// A different key claiming the same key id.
	raw, _ := base64.StdEncoding.DecodeString(pub.String())
	raw[20] ^= 1
	twin, err := ParsePublicKey(base64.StdEncoding.EncodeToString(raw))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := NewVerifier(pub, twin); err == nil || !strings.Contains(err.Error(), pub.ID()) {
		t.Errorf("NewVerifier(two keys with id %s) = %v; want an error naming the id", pub.ID(), err)
	}
}

func TestPrivateKeyFiles(t *testing.T) {
	dir := t.TempDir()
	pub, priv := fixedKey(t, 1)
	path := filepath.Join(dir, "k.key")
	if err := WritePrivateKey(path, priv, nil); err != nil {
		t.Fatal(err)
	}
	got, err := ReadPrivateKey(path, []byte("ignored: the key is not encrypted"))
	if err != nil || !got.Public().Equal(pub) {
		t.Fatalf("ReadPrivateKey = %v, %v; want the key written", got, err)
	}
	if s := fmt.Sprintf("%v %+v %#v %s", priv, priv, priv, priv); strings.Count(s, priv.ID()) != 4 || len(s) > 200 {
		t.Errorf("formatting a PrivateKey gives %q; want only its id", s)
	}

	if err := WritePrivateKey(path, priv, []byte("two\nlines")); err == nil {
		t.Error("WritePrivateKey accepted a password the CLI cannot read")
	}
	if err := WritePrivateKey(path, PrivateKey{}, nil); err == nil {
		t.Error("WritePrivateKey accepted the zero PrivateKey")
	}

	text := readFile(t, path)
	lines := strings.Split(strings.TrimSpace(string(text)), "\n")
	raw, _ := base64.StdEncoding.DecodeString(lines[1])
	damaged := bytes.Clone(raw)
	damaged[skSecretOff+40] ^= 1 // inside the public half of the secret key
	badKDF := bytes.Clone(raw)
	copy(badKDF[skKDFOff:], "Zz")
	costly := bytes.Clone(raw)
	copy(costly[skKDFOff:], "Sc")
	costly[skMemOff+7] = 0xff
	for _, tc := range []struct {
		name string
		text string
		want error
	}{
		{"damaged key", lines[0] + "\n" + base64.StdEncoding.EncodeToString(damaged) + "\n", ErrInvalidKey},
		{"unknown KDF", lines[0] + "\n" + base64.StdEncoding.EncodeToString(badKDF) + "\n", ErrInvalidKey},
		{"scrypt cost beyond limit", lines[0] + "\n" + base64.StdEncoding.EncodeToString(costly) + "\n", ErrInvalidKey},
		{"public key file", "untrusted comment: x\n" + pub.String() + "\n", ErrInvalidKey},
		{"no comment line", lines[1] + "\n", ErrInvalidKey},
		{"not base64", lines[0] + "\n!!!\n", ErrInvalidKey},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(dir, "bad.key")
			writeFile(t, p, []byte(tc.text))
			if _, err := ReadPrivateKey(p, []byte("pw")); !errors.Is(err, tc.want) || !strings.Contains(err.Error(), p) {
				t.Errorf("ReadPrivateKey = %v; want %v naming the file", err, tc.want)
			}
		})
	}
	big := filepath.Join(dir, "big.key")
	writeFile(t, big, bytes.Repeat([]byte("A"), 1<<20))
	if _, err := ReadPrivateKey(big, nil); err == nil {
		t.Error("ReadPrivateKey read a 1 MiB file")
	}
}

func TestVerifyConcurrent(t *testing.T) {
	pubA, privA := fixedKey(t, 1)
	pubB, privB := fixedKey(t, 2)
	v := mustVerifier(t, pubA, pubB)
	msg := []byte("shared")
	sigs := [][]byte{mustSign(t, privA, msg, "a"), mustSign(t, privB, msg, "b")}
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 50 {
				if _, err := v.Verify(msg, sigs[i%2]); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
}

// FuzzVerify feeds arbitrary messages and signature files to a Verifier holding the fixed
// keys 1 and 2; the seed corpus in testdata/fuzz/FuzzVerify holds valid, legacy, tampered,
// untrusted and malformed signatures. Verify must never panic and must fail only with the
// three documented errors.
func FuzzVerify(f *testing.F) {
	pubA, privA := fixedKey(f, 1)
	pubB, _ := fixedKey(f, 2)
	v := mustVerifier(f, pubA, pubB)
	f.Add([]byte("m"), mustSign(f, privA, []byte("m"), "seed"))
	f.Fuzz(func(t *testing.T, msg, sig []byte) {
		res, err := v.Verify(msg, sig)
		switch {
		case err == nil:
			if res.KeyID != pubA.ID() && res.KeyID != pubB.ID() {
				t.Fatalf("Verify accepted a signature by key %q, which is not trusted", res.KeyID)
			}
		case errors.Is(err, ErrMalformed), errors.Is(err, ErrUntrustedKey), errors.Is(err, ErrBadSignature):
		default:
			t.Fatalf("Verify error %v wraps none of ErrMalformed, ErrUntrustedKey, ErrBadSignature", err)
		}
	})
}

// TestFuzzCorpus checks that the committed seed corpus still means what its file names say
// (valid_*, crlf: verify; untrusted_*: ErrUntrustedKey; tampered_*, flipped_*:
// ErrBadSignature; anything else: ErrMalformed), so the fuzzer starts from every outcome.
func TestFuzzCorpus(t *testing.T) {
	pubA, _ := fixedKey(t, 1)
	pubB, _ := fixedKey(t, 2)
	v := mustVerifier(t, pubA, pubB)
	dir := filepath.Join("testdata", "fuzz", "FuzzVerify")
	entries, err := os.ReadDir(dir)
	if err != nil || len(entries) == 0 {
		t.Fatalf("seed corpus %s: %v (%d files)", dir, err, len(entries))
	}
	for _, e := range entries {
		name := e.Name()
		lines := strings.Split(strings.TrimSpace(string(readFile(t, filepath.Join(dir, name)))), "\n")
		if len(lines) != 3 || lines[0] != "go test fuzz v1" {
			t.Fatalf("%s: not a two-value fuzz corpus file", name)
		}
		var args [2][]byte
		for i, l := range lines[1:] {
			s, err := strconv.Unquote(strings.TrimSuffix(strings.TrimPrefix(l, "[]byte("), ")"))
			if err != nil {
				t.Fatalf("%s line %d: %v", name, i+2, err)
			}
			args[i] = []byte(s)
		}
		var want error
		switch {
		case strings.HasPrefix(name, "valid_"), name == "crlf":
		case strings.HasPrefix(name, "untrusted_"):
			want = ErrUntrustedKey
		case strings.HasPrefix(name, "tampered_"), strings.HasPrefix(name, "flipped_"):
			want = ErrBadSignature
		default:
			want = ErrMalformed
		}
		if _, err := v.Verify(args[0], args[1]); (want == nil && err != nil) || !errors.Is(err, want) {
			t.Errorf("seed %s: Verify = %v; want %v", name, err, want)
		}
	}
}
