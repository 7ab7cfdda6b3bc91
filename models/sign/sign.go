// Package sign owns edge-agent's signing keys and signatures: minisign (Ed25519) key pairs,
// their files, and .minisig signatures that the stock `minisign` CLI (Debian's 0.11 is the
// reference) writes and verifies. The fleet console signs bundle manifests and agent binaries
// with it; the agent verifies them against the configured trusted keys before anything is
// stored. It builds on aead.dev/minisign and imports nothing of agent/ or hal/.
//
// Signature algorithm: Sign writes prehashed signatures (algorithm "ED": Ed25519 over the
// BLAKE2b-512 digest of the message). That is what `minisign -S` 0.11 writes by default and
// what `minisign -V` accepts both by default and with -H (which demands prehashed input).
// Verify also accepts legacy non-prehashed signatures (algorithm "Ed", `minisign -S -l`),
// exactly as `minisign -V` does without -H; Result.Legacy reports them. Both are plain
// Ed25519 under the same key, so accepting the legacy form costs nothing in security.
//
// Key files: WritePrivateKey with a password writes the scrypt-encrypted format of
// `minisign -G`; with an empty password it writes the unencrypted format of `minisign -G -W`
// byte for byte (minisign 0.11 stores no checksum for those). Either file is usable by the
// CLI, and the CLI's files are readable here.
package sign

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"aead.dev/minisign"
)

// Errors for decisions. Every error this package returns for one of these cases wraps the
// sentinel (test with errors.Is) and says in its text what was wrong.
var (
	// ErrMalformed: the input is not a minisign signature file (bad structure, base64,
	// length, algorithm, or larger than MaxSignatureSize).
	ErrMalformed = errors.New("malformed minisign signature")
	// ErrUntrustedKey: a well-formed signature made by a key that is not trusted. The error
	// text names the signature's key id.
	ErrUntrustedKey = errors.New("signed by an untrusted key")
	// ErrBadSignature: the signature was made by a trusted key but does not verify: the
	// message, the signature or its trusted comment was altered.
	ErrBadSignature = errors.New("signature does not verify")
	// ErrInvalidKey: a public or private key (text or file) is malformed.
	ErrInvalidKey = errors.New("invalid minisign key")
	// ErrWrongPassword: an encrypted private key did not decrypt with the given password.
	ErrWrongPassword = errors.New("wrong password for the minisign secret key")
)

// Size bounds. A .minisig file is four short lines; key files are two.
const (
	// MaxSignatureSize is the largest signature file Verify reads.
	MaxSignatureSize = 8 << 10
	// MaxTrustedCommentSize is the longest trusted comment Sign writes; it keeps every
	// signature well under MaxSignatureSize and under the CLI's own line limit.
	MaxTrustedCommentSize = 4 << 10
	maxKeyFileSize        = 4 << 10
	// maxPasswordSize: the CLI reads at most 1023 bytes of password, line by line.
	maxPasswordSize = 1022
)

// untrustedSigComment is the untrusted comment line `minisign -S` writes by default.
const untrustedSigComment = "signature from minisign secret key"

// Layout of the secret key structure (158 bytes, little endian), as minisign.c defines it.
const (
	skSize      = 158
	skKDFOff    = 2  // "Sc" = scrypt, 0x0000 = none (-W)
	skChkOff    = 4  // "B2"
	skOpsOff    = 38 // scrypt opslimit
	skMemOff    = 46 // scrypt memlimit
	skKeyNumOff = 54 // key id (8 bytes) then the Ed25519 secret key (64) and checksum (32)
	skSecretOff = 62
)

// scrypt cost limits for reading keys: libsodium's "sensitive" limits, the most the CLI
// ever writes and the most aead.dev/minisign accepts.
const (
	maxScryptOps = 0x2000000
	maxScryptMem = 0x40000000
)

var (
	algEd      = [2]byte{'E', 'd'}
	algScrypt  = [2]byte{'S', 'c'}
	algNone    = [2]byte{0, 0}
	algBlake2b = [2]byte{'B', '2'}
)

// PublicKey is a minisign public key. The zero value is not a key.
type PublicKey struct {
	k     minisign.PublicKey
	valid bool
}

// String returns the key as minisign's base64 key line (what `minisign -P` takes and the
// second line of a .pub file).
func (p PublicKey) String() string {
	if !p.valid {
		return "<no key>"
	}
	return p.k.String()
}

// ID returns the key id in hex as minisign prints it (upper case, no leading zeros).
func (p PublicKey) ID() string { return formatID(p.k.ID()) }

// Equal reports whether p and q are the same key.
func (p PublicKey) Equal(q PublicKey) bool { return p.valid == q.valid && p.k.Equal(q.k) }

// raw returns the 32-byte Ed25519 public key.
func (p PublicKey) raw() ed25519.PublicKey {
	b, _ := base64.StdEncoding.DecodeString(p.k.String()) // our own encoding: cannot fail
	return ed25519.PublicKey(b[10:])
}

// PrivateKey is a minisign secret key. The zero value is not a key. Its String method
// prints only the key id, so logging a PrivateKey leaks nothing.
type PrivateKey struct {
	k     minisign.PrivateKey
	valid bool
}

// Public returns the public half of the key pair.
func (p PrivateKey) Public() PublicKey {
	if !p.valid {
		return PublicKey{}
	}
	return PublicKey{k: p.k.Public().(minisign.PublicKey), valid: true}
}

// ID returns the key id in hex as minisign prints it.
func (p PrivateKey) ID() string { return formatID(p.k.ID()) }

// String names the key without revealing it.
func (p PrivateKey) String() string { return "minisign secret key " + p.ID() }

// GoString names the key without revealing it (for %#v).
func (p PrivateKey) GoString() string { return "sign.PrivateKey{" + p.ID() + "}" }

func formatID(id uint64) string { return strings.ToUpper(strconv.FormatUint(id, 16)) }

// GenerateKey returns a new key pair from the operating system's random source.
func GenerateKey() (pub PublicKey, priv PrivateKey, err error) {
	return generateKey(nil)
}

// generateKey draws the key from random (crypto/rand when nil); tests pass a fixed reader.
func generateKey(random io.Reader) (PublicKey, PrivateKey, error) {
	p, s, err := minisign.GenerateKey(random)
	if err != nil {
		return PublicKey{}, PrivateKey{}, fmt.Errorf("generate minisign key: %w", err)
	}
	return PublicKey{k: p, valid: true}, PrivateKey{k: s, valid: true}, nil
}

// ParsePublicKey reads a public key from its base64 key line or from the content of a
// minisign .pub file (an "untrusted comment:" line, then the key line). Surrounding
// whitespace and CRLF line ends are accepted.
func ParsePublicKey(text string) (PublicKey, error) {
	if len(text) > maxKeyFileSize {
		return PublicKey{}, fmt.Errorf("%w: public key text is %d bytes; a minisign public key is about 100", ErrInvalidKey, len(text))
	}
	var lines []string
	for _, l := range strings.Split(text, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			lines = append(lines, l)
		}
	}
	if len(lines) > 0 && strings.HasPrefix(lines[0], "untrusted comment:") {
		lines = lines[1:]
	}
	if len(lines) != 1 {
		return PublicKey{}, fmt.Errorf("%w: want one base64 key line (optionally after an \"untrusted comment:\" line), got %d lines", ErrInvalidKey, len(lines))
	}
	line := lines[0]
	b, err := base64.StdEncoding.Strict().DecodeString(line)
	if err != nil {
		return PublicKey{}, fmt.Errorf("%w: key line is not base64: %v", ErrInvalidKey, err)
	}
	if len(b) != 2+8+ed25519.PublicKeySize {
		return PublicKey{}, fmt.Errorf("%w: key is %d bytes, want %d", ErrInvalidKey, len(b), 2+8+ed25519.PublicKeySize)
	}
	if [2]byte(b[:2]) != algEd {
		return PublicKey{}, fmt.Errorf("%w: key algorithm %q, want \"Ed\" (Ed25519)", ErrInvalidKey, b[:2])
	}
	var k minisign.PublicKey
	if err := k.UnmarshalText([]byte(line)); err != nil {
		return PublicKey{}, fmt.Errorf("%w: %v", ErrInvalidKey, err)
	}
	return PublicKey{k: k, valid: true}, nil
}

// KeysFromConfig turns the agent's trusted_keys entries into keys. An entry starting with
// "/", "./" or "../" is the path of a minisign .pub file; any other entry is a base64 key
// line. Errors name the entry's index.
func KeysFromConfig(lines []string) ([]PublicKey, error) {
	keys := make([]PublicKey, 0, len(lines))
	for i, entry := range lines {
		entry = strings.TrimSpace(entry)
		var (
			k   PublicKey
			err error
		)
		switch {
		case entry == "":
			err = errors.New("empty entry: give a base64 key line or the path of a .pub file")
		case strings.HasPrefix(entry, "/") || strings.HasPrefix(entry, "./") || strings.HasPrefix(entry, "../"):
			var b []byte
			b, err = readBounded(entry, maxKeyFileSize)
			if err == nil {
				k, err = ParsePublicKey(string(b))
			}
			if err != nil {
				err = fmt.Errorf("public key file %s: %w", entry, err)
			}
		default:
			k, err = ParsePublicKey(entry)
		}
		if err != nil {
			return nil, fmt.Errorf("trusted_keys[%d]: %w", i, err)
		}
		keys = append(keys, k)
	}
	return keys, nil
}

// VerifierFromConfig is NewVerifier over the keys of trusted_keys entries (KeysFromConfig).
func VerifierFromConfig(entries []string) (*Verifier, error) {
	keys, err := KeysFromConfig(entries)
	if err != nil {
		return nil, err
	}
	return NewVerifier(keys...)
}

// WritePrivateKey writes priv to path in minisign's secret key format, replacing the file
// atomically with mode 0600. A non-empty password encrypts the key exactly as `minisign -G`
// does (scrypt with libsodium's "sensitive" cost: about 1 GiB of memory and a few seconds);
// an empty password writes the unencrypted form of `minisign -G -W`. The password must be
// usable at the CLI's prompt: at most 1022 bytes, no NUL, CR or LF.
func WritePrivateKey(path string, priv PrivateKey, password []byte) error {
	if !priv.valid {
		return fmt.Errorf("write secret key %s: %w: zero PrivateKey (use GenerateKey)", path, ErrInvalidKey)
	}
	if len(password) > maxPasswordSize || bytes.ContainsAny(password, "\x00\r\n") {
		return fmt.Errorf("write secret key %s: the password must be at most %d bytes without NUL, CR or LF, or the minisign CLI could not use it", path, maxPasswordSize)
	}
	var (
		text []byte
		err  error
	)
	if len(password) == 0 {
		text, err = priv.k.MarshalText()
	} else {
		text, err = minisign.EncryptKey(string(password), priv.k)
	}
	if err != nil {
		return fmt.Errorf("write secret key %s: %w", path, err)
	}
	text = append(text, '\n')
	if err := writeFileAtomic(path, text, 0o600); err != nil {
		return fmt.Errorf("write secret key %s: %w", path, err)
	}
	return nil
}

// ReadPrivateKey reads a minisign secret key file, decrypting it with password when it is
// encrypted (ErrWrongPassword when that fails or no password was given). An unencrypted key
// (`minisign -G -W`, or WritePrivateKey with an empty password) is read whatever password
// is given, as the CLI does.
func ReadPrivateKey(path string, password []byte) (PrivateKey, error) {
	b, err := readBounded(path, maxKeyFileSize)
	if err != nil {
		return PrivateKey{}, fmt.Errorf("read secret key: %w", err)
	}
	k, err := parsePrivateKey(b, password)
	if err != nil {
		return PrivateKey{}, fmt.Errorf("read secret key %s: %w", path, err)
	}
	return k, nil
}

func parsePrivateKey(text, password []byte) (PrivateKey, error) {
	lines := bytes.Split(bytes.TrimSpace(text), []byte("\n"))
	if len(lines) != 2 || !bytes.HasPrefix(lines[0], []byte("untrusted comment:")) {
		return PrivateKey{}, fmt.Errorf("%w: not a minisign secret key file (want an \"untrusted comment:\" line and a base64 line)", ErrInvalidKey)
	}
	line := bytes.TrimSpace(lines[1])
	raw, err := base64.StdEncoding.Strict().DecodeString(string(line))
	if err != nil {
		return PrivateKey{}, fmt.Errorf("%w: secret key line is not base64: %v", ErrInvalidKey, err)
	}
	if len(raw) != skSize {
		return PrivateKey{}, fmt.Errorf("%w: secret key is %d bytes, want %d", ErrInvalidKey, len(raw), skSize)
	}
	if [2]byte(raw[:2]) != algEd {
		return PrivateKey{}, fmt.Errorf("%w: key algorithm %q, want \"Ed\" (Ed25519)", ErrInvalidKey, raw[:2])
	}
	if [2]byte(raw[skChkOff:]) != algBlake2b {
		return PrivateKey{}, fmt.Errorf("%w: checksum algorithm %q, want \"B2\"", ErrInvalidKey, raw[skChkOff:skChkOff+2])
	}
	var k minisign.PrivateKey
	switch kdf := [2]byte(raw[skKDFOff:]); kdf {
	case algNone:
		if err := k.UnmarshalText(line); err != nil {
			return PrivateKey{}, fmt.Errorf("%w: %v", ErrInvalidKey, err)
		}
	case algScrypt:
		ops := binary.LittleEndian.Uint64(raw[skOpsOff:])
		mem := binary.LittleEndian.Uint64(raw[skMemOff:])
		if ops > maxScryptOps || mem > maxScryptMem {
			return PrivateKey{}, fmt.Errorf("%w: scrypt cost ops=%d mem=%d exceeds the limit ops=%d mem=%d", ErrInvalidKey, ops, mem, maxScryptOps, maxScryptMem)
		}
		if len(password) == 0 {
			return PrivateKey{}, fmt.Errorf("%w: the key is encrypted; give its password (or re-create it with `minisign -C -W` to remove the password)", ErrWrongPassword)
		}
		// The structure was checked above, so a failure here is the checksum: wrong password.
		if k, err = minisign.DecryptKey(string(password), line); err != nil {
			return PrivateKey{}, fmt.Errorf("%w (or the key file is corrupt)", ErrWrongPassword)
		}
	default:
		return PrivateKey{}, fmt.Errorf("%w: key derivation %q, want \"Sc\" (scrypt) or none", ErrInvalidKey, kdf[:])
	}
	// minisign 0.11 keeps no checksum in unencrypted keys: check that the secret half still
	// matches its public half so a damaged file cannot produce unverifiable signatures.
	plain, _ := k.MarshalText()
	dec, err := base64.StdEncoding.DecodeString(string(plain[bytes.IndexByte(plain, '\n')+1:]))
	if err != nil || len(dec) != skSize {
		return PrivateKey{}, fmt.Errorf("%w: re-encoding the key failed", ErrInvalidKey)
	}
	secret := ed25519.PrivateKey(dec[skSecretOff : skSecretOff+ed25519.PrivateKeySize])
	if !bytes.Equal(ed25519.NewKeyFromSeed(secret.Seed()), secret) {
		return PrivateKey{}, fmt.Errorf("%w: the secret key does not match its public half (damaged file)", ErrInvalidKey)
	}
	return PrivateKey{k: k, valid: true}, nil
}

// Sign signs msg with priv and returns the content of a .minisig file, prehashed (algorithm
// "ED", as `minisign -S` writes by default). The trusted comment is signed too and comes
// back from Verify; it must be one line (no NUL, CR or LF) of at most MaxTrustedCommentSize
// bytes.
func Sign(priv PrivateKey, msg []byte, trustedComment string) ([]byte, error) {
	if !priv.valid {
		return nil, fmt.Errorf("sign: %w: zero PrivateKey (use GenerateKey or ReadPrivateKey)", ErrInvalidKey)
	}
	if len(trustedComment) > MaxTrustedCommentSize {
		return nil, fmt.Errorf("sign: trusted comment is %d bytes; at most %d", len(trustedComment), MaxTrustedCommentSize)
	}
	if strings.ContainsAny(trustedComment, "\x00\r\n") {
		return nil, fmt.Errorf("sign: trusted comment %q must be one line without NUL, CR or LF", trustedComment)
	}
	r := minisign.NewReader(bytes.NewReader(msg))
	if _, err := io.Copy(io.Discard, r); err != nil {
		return nil, fmt.Errorf("sign: hash message: %w", err)
	}
	return r.SignWithComments(priv.k, trustedComment, untrustedSigComment), nil
}

// Result is what a verified signature tells.
type Result struct {
	KeyID          string // id of the trusted key that made the signature, as minisign prints it
	TrustedComment string // the signed comment (`minisign -S -t`)
	Legacy         bool   // a non-prehashed "Ed" signature (`minisign -S -l`)
}

// Verifier checks signatures against a fixed set of trusted keys; several keys allow
// rotation. It is immutable and safe for concurrent use.
type Verifier struct {
	keys map[uint64]trusted
	ids  []string // in the order given, for error messages
}

type trusted struct {
	pub PublicKey
	raw ed25519.PublicKey
}

// NewVerifier returns a Verifier trusting keys. It needs at least one key: edge-agent
// never accepts unsigned artifacts. The same key given twice counts once; two different
// keys sharing a key id are refused, as a signature could not tell them apart.
func NewVerifier(keys ...PublicKey) (*Verifier, error) {
	if len(keys) == 0 {
		return nil, fmt.Errorf("%w: no trusted keys given; configure at least one public key (edgectl keygen prints one)", ErrInvalidKey)
	}
	v := &Verifier{keys: make(map[uint64]trusted, len(keys))}
	for i, k := range keys {
		if !k.valid {
			return nil, fmt.Errorf("%w: trusted key %d is the zero PublicKey", ErrInvalidKey, i)
		}
		id := k.k.ID()
		if old, ok := v.keys[id]; ok {
			if old.pub.Equal(k) {
				continue
			}
			return nil, fmt.Errorf("%w: two different trusted keys share key id %s", ErrInvalidKey, k.ID())
		}
		v.keys[id] = trusted{pub: k, raw: k.raw()}
		v.ids = append(v.ids, k.ID())
	}
	return v, nil
}

// KeyIDs returns the ids of the trusted keys, in the order given to NewVerifier.
func (v *Verifier) KeyIDs() []string { return append([]string(nil), v.ids...) }

// Verify checks that sig (the content of a .minisig file) is a valid signature of msg by a
// trusted key, covering its trusted comment. Errors wrap ErrMalformed, ErrUntrustedKey or
// ErrBadSignature.
func (v *Verifier) Verify(msg, sig []byte) (Result, error) {
	if v == nil {
		return Result{}, fmt.Errorf("%w: nil Verifier trusts no key (use NewVerifier)", ErrUntrustedKey)
	}
	if len(sig) > MaxSignatureSize {
		return Result{}, fmt.Errorf("%w: %d bytes; a .minisig file is at most %d", ErrMalformed, len(sig), MaxSignatureSize)
	}
	var s minisign.Signature
	if err := s.UnmarshalText(sig); err != nil {
		return Result{}, fmt.Errorf("%w: %s", ErrMalformed, strings.TrimPrefix(err.Error(), "minisign: "))
	}
	if strings.ContainsAny(s.TrustedComment, "\x00\r") {
		// The CLI reads the comment as a C string to its first NUL, and drops CRs: a comment
		// holding either would read differently there than here.
		return Result{}, fmt.Errorf("%w: trusted comment holds a NUL or CR byte", ErrMalformed)
	}
	k, ok := v.keys[s.KeyID]
	if !ok {
		return Result{}, fmt.Errorf("%w: the signature's key id is %s; trusted key ids: %s (add its public key to trusted_keys, or sign with a trusted key)",
			ErrUntrustedKey, formatID(s.KeyID), strings.Join(v.ids, ", "))
	}
	if !minisign.Verify(k.pub.k, msg, sig) {
		// Tell which part failed: the global signature covers the signature and the trusted
		// comment, the other one covers the message.
		global := append(s.Signature[:len(s.Signature):len(s.Signature)], s.TrustedComment...)
		if !ed25519.Verify(k.raw, global, s.CommentSignature[:]) {
			return Result{}, fmt.Errorf("%w: key %s: the signature or its trusted comment was altered", ErrBadSignature, k.pub.ID())
		}
		return Result{}, fmt.Errorf("%w: key %s: the message does not match its signature (altered message or signature)", ErrBadSignature, k.pub.ID())
	}
	return Result{KeyID: k.pub.ID(), TrustedComment: s.TrustedComment, Legacy: s.Algorithm == minisign.EdDSA}, nil
}

// readBounded reads a small file, refusing one larger than limit.
func readBounded(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%s is larger than %d bytes: not a minisign key file", path, limit)
	}
	return b, nil
}

// writeFileAtomic writes data to a temporary file beside path, syncs it and renames it over
// path, so a crash leaves either the old file or the new one.
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	f, err := os.CreateTemp(dir, "."+base+".tmp*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // no-op after a successful rename
	if err := f.Chmod(perm); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}
