package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/edge-agent/edge-agent/models/bundle"
	"github.com/edge-agent/edge-agent/models/sign"
)

func cmdKeygen(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("keygen", flag.ContinueOnError)
	fs.SetOutput(stderr)
	out := fs.String("out", "", "path prefix: writes PREFIX.key and PREFIX.pub (required)")
	pwFile := fs.String("password-file", "", "file whose first line encrypts the secret key, as minisign -G does")
	unencrypted := fs.Bool("unencrypted", false, "write the secret key unencrypted (minisign -G -W): only for a key kept where nobody else can read it")
	force := fs.Bool("force", false, "overwrite existing files")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	switch {
	case *out == "" || fs.NArg() > 0:
		return usageError{errors.New("--out PREFIX is required")}
	case *pwFile == "" && !*unencrypted:
		return usageError{errors.New("the secret key is encrypted by default: give --password-file F (its first line is the password), or --unencrypted")}
	case *pwFile != "" && *unencrypted:
		return usageError{errors.New("give --password-file or --unencrypted, not both")}
	}
	keyPath, pubPath := *out+".key", *out+".pub"
	if !*force {
		for _, p := range []string{keyPath, pubPath} {
			if _, err := os.Stat(p); err == nil {
				return fmt.Errorf("%s exists; use --force to replace it", p)
			}
		}
	}
	pw, err := readPassword(*pwFile)
	if err != nil {
		return err
	}
	pub, priv, err := sign.GenerateKey()
	if err != nil {
		return err
	}
	if err := sign.WritePrivateKey(keyPath, priv, pw); err != nil {
		return err
	}
	pubFile := fmt.Sprintf("untrusted comment: minisign public key %s\n%s\n", pub.ID(), pub.String())
	if err := os.WriteFile(pubPath, []byte(pubFile), 0o644); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "key id   %s\nsecret   %s (keep it off the devices)\npublic   %s\n\n"+
		"put it in the agents' config under the one role this key has (docs/security.md):\n"+
		"  commands: {trusted_keys: [%s]}   # the fleet server's key: signs commands\n"+
		"  bundles:  {trusted_keys: [%s]}   # signs model bundles (keep it offline)\n"+
		"  update:   {trusted_keys: [%s]}   # signs agent binaries (keep it offline)\n",
		pub.ID(), keyPath, pubPath, pub.String(), pub.String(), pub.String())
	return nil
}

func verifierFrom(pubs []string) (*sign.Verifier, error) {
	if len(pubs) == 0 {
		return nil, usageError{errors.New("give at least one --pub key (a .pub file or a base64 key line)")}
	}
	// sign.KeysFromConfig reads a file only for entries starting with "/", "./" or "../" (the
	// agent config's rule); on the command line a plain relative path such as key.pub names a
	// file too, so pass the absolute path of any --pub that is an existing file.
	entries := make([]string, len(pubs))
	for i, p := range pubs {
		entries[i] = p
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() {
			if abs, err := filepath.Abs(p); err == nil {
				entries[i] = abs
			}
		}
	}
	return sign.VerifierFromConfig(entries)
}

func cmdVerify(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("verify", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var pubs multiFlag
	fs.Var(&pubs, "pub", "trusted public key (repeatable)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return usageError{errors.New("give one bundle")}
	}
	v, err := verifierFrom(pubs)
	if err != nil {
		return err
	}
	f, err := os.Open(fs.Arg(0))
	if err != nil {
		return err
	}
	defer f.Close()
	dir, err := os.MkdirTemp("", "edgectl-verify-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	b, err := bundle.Open(f, dir, bundle.OpenOptions{Verify: bundle.VerifyWith(v)})
	if err != nil {
		return fmt.Errorf("%s: %w", fs.Arg(0), err)
	}
	m := b.Manifest
	fmt.Fprintf(stdout, "OK %s: %s %s (sequence %d), signed by %s, %d files verified\n", fs.Arg(0), m.Name, m.Version, m.Sequence, b.KeyID, len(m.Files))
	return nil
}

func cmdInspect(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("inspect", flag.ContinueOnError)
	fs.SetOutput(stderr)
	asJSON := fs.Bool("json", false, "print the manifest as JSON")
	var pubs multiFlag
	fs.Var(&pubs, "pub", "verify the manifest's signature with this key (repeatable)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return usageError{errors.New("give one bundle")}
	}
	f, err := os.Open(fs.Arg(0))
	if err != nil {
		return err
	}
	defer f.Close()
	opt := bundle.OpenOptions{}
	signedBy := "not verified (give --pub to check the signature)"
	if len(pubs) > 0 {
		v, err := verifierFrom(pubs)
		if err != nil {
			return err
		}
		verify := bundle.VerifyWith(v)
		opt.Verify = func(m, s []byte) (string, error) {
			id, err := verify(m, s)
			signedBy = "signed by " + id
			return id, err
		}
	}
	m, _, _, err := bundle.ReadManifest(f, opt)
	if err != nil {
		return fmt.Errorf("%s: %w", fs.Arg(0), err)
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(m)
	}
	fmt.Fprintf(stdout, "bundle    %s\nmodel     %s %s (sequence %d), %s\ncreated   %s\n", fs.Arg(0), m.Name, m.Version, m.Sequence, signedBy, m.Created.Format(time.RFC3339))
	if m.Expires != nil {
		fmt.Fprintf(stdout, "expires   %s\n", m.Expires.Format(time.RFC3339))
	}
	if m.MinAgentVersion != "" {
		fmt.Fprintf(stdout, "needs     edge-agent ≥ %s\n", m.MinAgentVersion)
	}
	if m.Delegate != "" {
		fmt.Fprintf(stdout, "delegate  %s\n", m.Delegate)
	}
	for _, t := range m.Inputs {
		fmt.Fprintf(stdout, "input     %-30s %-8s %v\n", t.Name, t.DType, t.Shape)
	}
	for _, t := range m.Outputs {
		fmt.Fprintf(stdout, "output    %-30s %-8s %v\n", t.Name, t.DType, t.Shape)
	}
	for _, fl := range m.Files {
		fmt.Fprintf(stdout, "file      %-30s %10d  sha256 %s\n", fl.Path, fl.Size, fl.SHA256[:16]+"…")
	}
	fmt.Fprintf(stdout, "golden    %d vectors\n", len(m.Golden))
	if r := m.Reference; r != nil {
		fmt.Fprintf(stdout, "reference %d samples, %d features, %d classes\n", r.Samples, len(r.Features), len(r.Classes))
	}
	return nil
}

// maxMember bounds what `bundle sign` reads of each member of the operator's own bundle.
const maxMember = 1 << 30

func cmdSign(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("sign", flag.ContinueOnError)
	fs.SetOutput(stderr)
	keyPath := fs.String("key", "", "secret key (required)")
	pwFile := fs.String("password-file", "", "password of the secret key")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *keyPath == "" || fs.NArg() != 1 {
		return usageError{errors.New("--key and one bundle are required")}
	}
	priv, err := readSecretKey(*keyPath, *pwFile)
	if err != nil {
		return err
	}
	path := fs.Arg(0)
	in, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	gz := bytes.HasPrefix(in, []byte{0x1f, 0x8b})
	var r io.Reader = bytes.NewReader(in)
	if gz {
		zr, err := gzip.NewReader(r)
		if err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		r = zr
	}
	tr := tar.NewReader(r)
	var out bytes.Buffer
	var w io.Writer = &out
	var zw *gzip.Writer
	if gz {
		zw = gzip.NewWriter(&out)
		w = zw
	}
	tw := tar.NewWriter(w)
	first := true
	var manifest []byte
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		data, err := io.ReadAll(io.LimitReader(tr, maxMember))
		if err != nil {
			return fmt.Errorf("%s: %s: %w", path, h.Name, err)
		}
		if first {
			if h.Name != bundle.ManifestName {
				return fmt.Errorf("%s: first member is %q, not %s: not a bundle", path, h.Name, bundle.ManifestName)
			}
			manifest = data
			first = false
			var m bundle.Manifest
			if err := json.Unmarshal(data, &m); err != nil {
				return fmt.Errorf("%s: manifest: %w", path, err)
			}
			sig, err := sign.Sign(priv, data, sign.BundleComment(m.Name, m.Sequence))
			if err != nil {
				return err
			}
			if err := writeMember(tw, h, data); err != nil {
				return err
			}
			sh := *h
			sh.Name, sh.Size = bundle.SignatureName, int64(len(sig))
			if err := writeMember(tw, &sh, sig); err != nil {
				return err
			}
			continue
		}
		if h.Name == bundle.SignatureName {
			continue // replaced above
		}
		if err := writeMember(tw, h, data); err != nil {
			return err
		}
	}
	if manifest == nil {
		return fmt.Errorf("%s: empty archive", path)
	}
	if err := tw.Close(); err != nil {
		return err
	}
	if zw != nil {
		if err := zw.Close(); err != nil {
			return err
		}
	}
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp")
	if err := os.WriteFile(tmp, out.Bytes(), 0o644); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "signed %s\n", path)
	return nil
}

func writeMember(tw *tar.Writer, h *tar.Header, data []byte) error {
	h.Size = int64(len(data))
	if err := tw.WriteHeader(h); err != nil {
		return err
	}
	_, err := tw.Write(data)
	return err
}
