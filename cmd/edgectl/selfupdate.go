package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/edge-agent/edge-agent/models/sign"
)

// maxSignedFile bounds a file edgectl signs (an agent binary).
const maxSignedFile = 256 << 20

// cmdSignFile: edgectl sign --key K [--password-file F] FILE → FILE.minisig, a minisign
// signature of the whole file (agent binaries for edge-agent update and selfupdate).
func cmdSignFile(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("sign", flag.ContinueOnError)
	fs.SetOutput(stderr)
	keyPath := fs.String("key", "", "secret key (required)")
	pwFile := fs.String("password-file", "", "password of the secret key")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *keyPath == "" || fs.NArg() != 1 {
		return usageError{errors.New("sign needs --key and one FILE")}
	}
	priv, err := readSecretKey(*keyPath, *pwFile)
	if err != nil {
		return err
	}
	path := fs.Arg(0)
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if fi.Size() > maxSignedFile {
		return fmt.Errorf("%s is larger than %d bytes", path, maxSignedFile)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	sig, err := sign.Sign(priv, data, "file:"+filepath.Base(path))
	if err != nil {
		return err
	}
	if err := os.WriteFile(path+".minisig", sig, 0o644); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "wrote %s (key %s)\n", path+".minisig", priv.ID())
	return nil
}

// cmdSelfupdate: edgectl selfupdate TARGET --url URL (--sha256 HEX | BINARY_FILE) [--sig-url URL]
func cmdSelfupdate(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("selfupdate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	o := addSendFlags(fs)
	url := fs.String("url", "", "where the devices download the new edge-agent binary")
	sum := fs.String("sha256", "", "the binary's sha256 (hex); computed from BINARY_FILE when given")
	sigURL := fs.String("sig-url", "", "where its minisign signature is (default URL.minisig)")
	pos, err := parseMixed(fs, args)
	if err != nil {
		return err
	}
	if *url == "" {
		return usageError{errors.New("selfupdate needs --url: the address the devices fetch the binary from (its signature at URL.minisig)")}
	}
	switch len(pos) {
	case 0:
	case 1:
		f, err := os.Open(pos[0])
		if err != nil {
			return err
		}
		h := sha256.New()
		_, err = io.Copy(h, f)
		f.Close()
		if err != nil {
			return err
		}
		got := hex.EncodeToString(h.Sum(nil))
		if *sum != "" && !strings.EqualFold(*sum, got) {
			return fmt.Errorf("--sha256 %s does not match %s (sha256 %s)", *sum, pos[0], got)
		}
		*sum = got
	default:
		return usageError{errors.New("selfupdate takes at most one BINARY_FILE")}
	}
	if b, err := hex.DecodeString(*sum); err != nil || len(b) != sha256.Size {
		return usageError{fmt.Errorf("selfupdate needs --sha256 HEX (64 hex digits) or the BINARY_FILE to compute it from")}
	}
	a, _ := json.Marshal(map[string]string{"url": *url, "sha256": strings.ToLower(*sum), "sig_url": *sigURL})
	return o.send("selfupdate", a, true, stdout, stderr)
}
