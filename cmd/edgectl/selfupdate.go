package main

import (
	"bytes"
	"crypto/sha256"
	"debug/buildinfo"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/edge-agent/edge-agent/models/sign"
)

// maxSignedFile bounds a file edgectl signs (an agent binary).
const maxSignedFile = 256 << 20

// cmdSignFile: edgectl sign --key K [--password-file F] [--version V] [--downgrade N] FILE → FILE.minisig, a
// minisign signature of an agent binary (edge-agent update and selfupdate) whose trusted
// comment names its purpose, version and architecture ("edge-agent binary VERSION ARCH"). The
// architecture comes from the ELF header, the version from --version or from the version the
// binary was built with (-X .../agent.Version=V); anything but an ELF executable is refused.
func cmdSignFile(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("sign", flag.ContinueOnError)
	fs.SetOutput(stderr)
	keyPath := fs.String("key", "", "secret key (required): the fleet's update key")
	pwFile := fs.String("password-file", "", "password of the secret key")
	version := fs.String("version", "", "the version the binary reports (default: the one it was built with)")
	downgrade := fs.Uint64("downgrade", 0, "sign as downgrade N: devices running a higher version take it, once; N must be above every downgrade they took")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *keyPath == "" || fs.NArg() != 1 {
		return usageError{errors.New("sign needs --key and one FILE")}
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
	arch, built, err := describeBinary(data)
	if err != nil {
		return fmt.Errorf("%s: %w: edgectl sign signs edge-agent binaries only", path, err)
	}
	switch {
	case *version == "" && built == "":
		return fmt.Errorf("%s: the version it was built with cannot be read: give --version (what `edge-agent version` prints)", path)
	case *version == "":
		*version = built
	case built != "" && built != *version:
		return fmt.Errorf("%s was built as version %s, not %s: check --version", path, built, *version)
	case strings.ContainsAny(*version, " \t\r\n"):
		return usageError{fmt.Errorf("--version %q holds white space", *version)}
	}
	priv, err := readSecretKey(*keyPath, *pwFile)
	if err != nil {
		return err
	}
	comment := sign.BinaryComment(*version, arch)
	if *downgrade > 0 {
		comment = sign.DowngradeComment(*version, arch, *downgrade)
	}
	sig, err := sign.Sign(priv, data, comment)
	if err != nil {
		return err
	}
	if err := os.WriteFile(path+".minisig", sig, 0o644); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "wrote %s (key %s): %s\n", path+".minisig", priv.ID(), comment)
	return nil
}

// goArch maps ELF machines to GOARCH names.
var goArch = map[elf.Machine]string{
	elf.EM_X86_64: "amd64", elf.EM_AARCH64: "arm64", elf.EM_ARM: "arm", elf.EM_386: "386", elf.EM_RISCV: "riscv64",
}

// describeBinary returns the GOARCH of an ELF executable and, for a Go binary built with
// -X github.com/edge-agent/edge-agent/agent.Version=V, that version ("" when unknown).
func describeBinary(data []byte) (arch, version string, err error) {
	f, err := elf.NewFile(bytes.NewReader(data))
	if err != nil {
		return "", "", fmt.Errorf("not an ELF executable (%v)", err)
	}
	defer f.Close()
	arch, ok := goArch[f.Machine]
	if !ok || (f.Type != elf.ET_EXEC && f.Type != elf.ET_DYN) {
		return "", "", fmt.Errorf("an ELF %v file for %v, not an executable for a supported architecture", f.Type, f.Machine)
	}
	if bi, err := buildinfo.Read(bytes.NewReader(data)); err == nil {
		for _, s := range bi.Settings {
			if s.Key == "-ldflags" {
				version = linkedVersion(s.Value)
			}
		}
	}
	return arch, version, nil
}

// linkedVersion finds -X github.com/edge-agent/edge-agent/agent.Version=V in ldflags.
func linkedVersion(ldflags string) string {
	const key = "github.com/edge-agent/edge-agent/agent.Version="
	f := strings.Fields(ldflags)
	for i, w := range f {
		w = strings.Trim(w, `'"`)
		if w == "-X" && i+1 < len(f) {
			if v, ok := strings.CutPrefix(strings.Trim(f[i+1], `'"`), key); ok {
				return v
			}
		} else if v, ok := strings.CutPrefix(w, "-X="+key); ok {
			return v
		}
	}
	return ""
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
