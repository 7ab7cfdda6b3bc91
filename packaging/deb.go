// Package packaging builds the edge-agent Debian packages with nfpm from the layout that
// `make cross` writes: dist/linux-<arch>/{edge-agent, edgectl, lib/libtensorflowlite_c.so}
// (binaries linked with the rpath $ORIGIN/../lib:/opt/edge-agent/lib). It checks the layout
// before packaging it: the architecture of every ELF file, that every library a binary needs
// is shipped or a base system library, and that the rpath finds the shipped ones.
//
// It is a build tool (packaging/mkdeb, `make deb`): nothing in the agent imports it, and it is
// the only importer of nfpm. Maintainer scripts, the default config and the licence notices
// live beside it; the unit comes from systemd/.
package packaging

import (
	"bytes"
	"debug/buildinfo"
	"debug/elf"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/goreleaser/nfpm/v2"
	"github.com/goreleaser/nfpm/v2/deb"
	"github.com/goreleaser/nfpm/v2/files"
)

// Where the package puts things (docs/operations.md, systemd/edge-agent.service).
const (
	Name   = "edge-agent"
	BinDir = "/opt/edge-agent/bin"
	LibDir = "/opt/edge-agent/lib"
	DocDir = "/usr/share/doc/edge-agent"
	Config = "/etc/edge-agent/config.yaml"
	Unit   = "/lib/systemd/system/edge-agent.service"
	tflite = "libtensorflowlite_c.so"
)

// DefaultMaintainer fills the Maintainer field Debian requires when Options leave it empty.
const DefaultMaintainer = "edge-agent maintainers <maintainers@edge-agent.invalid>"

// Options say what to package.
type Options struct {
	// Root is the repository root: systemd/, packaging/, README.md and docs/ are read there.
	Root string
	// Dist is the layout of one architecture, e.g. dist/linux-arm64.
	Dist string
	// Arch is the Debian and Go architecture: amd64 or arm64.
	Arch string
	// Version is the version the binaries report (git describe); DebVersion makes it a
	// Debian version.
	Version string
	// Out is the folder the .deb is written to (created if missing).
	Out string
	// Maintainer is "Name <email>" (default DefaultMaintainer).
	Maintainer string
}

// machine is the ELF machine of a packaged architecture.
func machine(arch string) (elf.Machine, bool) {
	switch arch {
	case "amd64":
		return elf.EM_X86_64, true
	case "arm64":
		return elf.EM_AARCH64, true
	}
	return 0, false
}

// systemLib reports whether every Debian system has the library (libc6, libstdc++6,
// libgcc-s1, the dynamic loader; Depends names their packages). Any other library a binary
// needs must be shipped in lib/.
func systemLib(name string) bool {
	switch name {
	case "libc.so.6", "libm.so.6", "libdl.so.2", "libpthread.so.0", "librt.so.1", "libresolv.so.2",
		"libstdc++.so.6", "libgcc_s.so.1", "ld-linux-x86-64.so.2", "ld-linux-aarch64.so.1":
		return true
	}
	return false
}

// Build checks the layout and writes <Out>/edge-agent_<version>_<arch>.deb, returning its path.
func Build(opt Options) (string, error) {
	if _, ok := machine(opt.Arch); !ok {
		return "", fmt.Errorf("arch %q: packages are built for amd64 and arm64", opt.Arch)
	}
	version, err := DebVersion(opt.Version)
	if err != nil {
		return "", err
	}
	if opt.Maintainer == "" {
		opt.Maintainer = DefaultMaintainer
	}
	lay, err := checkLayout(opt.Dist, opt.Arch)
	if err != nil {
		return "", err
	}
	src := func(rel string) string { return filepath.Join(opt.Root, filepath.FromSlash(rel)) }
	for _, f := range []string{"systemd/edge-agent.service", "packaging/config.yaml", "packaging/copyright",
		"packaging/licenses/tensorflow-lite", "packaging/scripts/postinst", "packaging/scripts/prerm",
		"packaging/scripts/postrm", "README.md", "docs/configuration.md", "docs/operations.md"} {
		if _, err := os.Stat(src(f)); err != nil {
			return "", fmt.Errorf("%w (Options.Root must be the repository root)", err)
		}
	}
	licenses, err := moduleLicenses(opt.Root, lay.bins)
	if err != nil {
		return "", err
	}

	file := func(from, to string, mode os.FileMode) *files.Content {
		return &files.Content{Source: from, Destination: to, FileInfo: &files.ContentFileInfo{Mode: mode}}
	}
	dir := func(to string) *files.Content {
		return &files.Content{Destination: to, Type: files.TypeDir, FileInfo: &files.ContentFileInfo{Mode: 0o755}}
	}
	contents := files.Contents{
		dir("/opt/edge-agent"), dir(BinDir), dir(LibDir), dir("/etc/edge-agent"),
		// The service runs this one and replaces it when it updates itself; postinst gives the
		// folder and the binary to the service user.
		file(filepath.Join(opt.Dist, "edge-agent"), BinDir+"/edge-agent", 0o755),
		{Source: BinDir + "/edge-agent", Destination: "/usr/bin/edge-agent", Type: files.TypeSymlink},
		// edgectl stays out of the folder the service can write: root runs it.
		file(filepath.Join(opt.Dist, "edgectl"), "/usr/bin/edgectl", 0o755),
		file(src("systemd/edge-agent.service"), Unit, 0o644),
		{Source: src("packaging/config.yaml"), Destination: Config, Type: files.TypeConfigNoReplace,
			FileInfo: &files.ContentFileInfo{Mode: 0o640}},
		file(src("packaging/copyright"), DocDir+"/copyright", 0o644),
		file(src("packaging/licenses/tensorflow-lite"), DocDir+"/licenses/tensorflow-lite", 0o644),
		file(src("README.md"), DocDir+"/README.md", 0o644),
		file(src("docs/configuration.md"), DocDir+"/configuration.md", 0o644),
		file(src("docs/operations.md"), DocDir+"/operations.md", 0o644),
	}
	for _, l := range lay.libs {
		contents = append(contents, file(filepath.Join(opt.Dist, "lib", l), LibDir+"/"+l, 0o644))
	}
	for _, l := range licenses {
		contents = append(contents, file(l.from, DocDir+"/licenses/"+l.to, 0o644))
	}

	info := nfpm.WithDefaults(&nfpm.Info{
		Name:            Name,
		Arch:            opt.Arch,
		Platform:        "linux",
		Version:         version,
		VersionSchema:   "none", // DebVersion made it a Debian version already
		Section:         "misc",
		Priority:        "optional",
		Maintainer:      opt.Maintainer,
		Homepage:        "https://github.com/edge-agent/edge-agent",
		DisableGlobbing: true,
		Description: "TensorFlow Lite inference agent for edge boards\n" +
			"edge-agent reads local sensors, runs TensorFlow Lite models on them, keeps every\n" +
			"result on disk until the fleet has it, syncs over MQTT and installs signed models\n" +
			"and agent updates. The package holds the agent (run as the service edge-agent),\n" +
			"the fleet console edgectl and the TensorFlow Lite 2.9 C library.",
		Overridables: nfpm.Overridables{
			Depends:  []string{"libc6 (>= " + lay.glibc + ")", "libstdc++6", "libgcc-s1"},
			Contents: contents,
			Scripts: nfpm.Scripts{
				PostInstall: src("packaging/scripts/postinst"),
				PreRemove:   src("packaging/scripts/prerm"),
				PostRemove:  src("packaging/scripts/postrm"),
			},
		},
	})

	if err := os.MkdirAll(opt.Out, 0o755); err != nil {
		return "", fmt.Errorf("output folder: %w", err)
	}
	out := filepath.Join(opt.Out, deb.Default.ConventionalFileName(info))
	// Written beside and renamed, so a failed build leaves no half .deb under the final name.
	tmp, err := os.CreateTemp(opt.Out, ".edge-agent-*.deb.tmp")
	if err != nil {
		return "", fmt.Errorf("output folder: %w", err)
	}
	defer os.Remove(tmp.Name())
	if err := deb.Default.Package(info, tmp); err != nil {
		tmp.Close()
		return "", fmt.Errorf("nfpm deb %s: %w", opt.Arch, err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return "", err
	}
	if err := tmp.Close(); err != nil {
		return "", fmt.Errorf("write %s: %w", tmp.Name(), err)
	}
	if err := os.Rename(tmp.Name(), out); err != nil {
		return "", err
	}
	return out, nil
}

// layout is what checkLayout found.
type layout struct {
	bins  []string // the two binaries' paths
	libs  []string // file names in lib/ to ship
	glibc string   // the highest GLIBC_x.y symbol version any ELF file needs
}

// checkLayout makes sure dist holds binaries and libraries for arch that will run once
// installed: a wrong architecture, a missing library or a missing rpath fails here, with
// what to do, instead of on the board.
func checkLayout(dist, arch string) (layout, error) {
	var lay layout
	const hint = "build the layout with `make cross` (packaging/README.md)"
	if st, err := os.Stat(dist); err != nil || !st.IsDir() {
		return lay, fmt.Errorf("layout %s is missing: %s", dist, hint)
	}
	entries, err := os.ReadDir(filepath.Join(dist, "lib"))
	if err != nil {
		return lay, fmt.Errorf("layout %s has no lib/ folder with %s: %s", dist, tflite, hint)
	}
	for _, e := range entries {
		if e.Type().IsRegular() && strings.Contains(e.Name(), ".so") {
			lay.libs = append(lay.libs, e.Name())
		}
	}
	if !slices.Contains(lay.libs, tflite) {
		return lay, fmt.Errorf("layout %s has no lib/%s: %s", dist, tflite, hint)
	}
	lay.glibc = "2.17"
	check := func(path string, binary bool) error {
		f, err := elf.Open(path)
		if err != nil {
			return fmt.Errorf("%s: %w: %s", path, err, hint)
		}
		defer f.Close()
		if m, _ := machine(arch); f.Machine != m {
			return fmt.Errorf("%s is built for %v, not %s: %s", path, f.Machine, arch, hint)
		}
		syms, _ := f.ImportedSymbols() // none in a static binary
		for _, s := range syms {
			if v, ok := strings.CutPrefix(s.Version, "GLIBC_"); ok && versionLess(lay.glibc, v) {
				lay.glibc = v
			}
		}
		if !binary {
			return nil
		}
		needed, err := f.ImportedLibraries()
		if err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		shipped := false
		for _, lib := range needed {
			switch {
			case slices.Contains(lay.libs, lib):
				shipped = true
			case !systemLib(lib):
				return fmt.Errorf("%s needs %s, which is neither in %s/lib nor a base system library: ship it in lib/ or link without it", path, lib, dist)
			}
		}
		if !shipped {
			return nil
		}
		var rpath []string
		for _, tag := range []elf.DynTag{elf.DT_RUNPATH, elf.DT_RPATH} {
			vals, _ := f.DynString(tag)
			for _, v := range vals {
				rpath = append(rpath, strings.Split(v, ":")...)
			}
		}
		if !slices.Contains(rpath, LibDir) {
			return fmt.Errorf("%s has the rpath %q, without %s: it would not find its libraries once installed; link with -Wl,-rpath,'$ORIGIN/../lib:%s' (make cross does)", path, strings.Join(rpath, ":"), LibDir, LibDir)
		}
		return nil
	}
	for _, b := range []string{"edge-agent", "edgectl"} {
		p := filepath.Join(dist, b)
		st, err := os.Stat(p)
		if err != nil || !st.Mode().IsRegular() || st.Mode()&0o111 == 0 {
			return lay, fmt.Errorf("layout %s has no executable %s: %s", dist, b, hint)
		}
		if err := check(p, true); err != nil {
			return lay, err
		}
		lay.bins = append(lay.bins, p)
	}
	for _, l := range lay.libs {
		if err := check(filepath.Join(dist, "lib", l), false); err != nil {
			return lay, err
		}
	}
	return lay, nil
}

// versionLess compares dotted numbers ("2.17" < "2.34").
func versionLess(a, b string) bool {
	as, bs := strings.Split(a, "."), strings.Split(b, ".")
	for i := 0; i < max(len(as), len(bs)); i++ {
		var x, y int
		if i < len(as) {
			x, _ = strconv.Atoi(as[i])
		}
		if i < len(bs) {
			y, _ = strconv.Atoi(bs[i])
		}
		if x != y {
			return x < y
		}
	}
	return false
}

var (
	describeRe   = regexp.MustCompile(`^(.+)-([0-9]+)-g([0-9a-f]+)$`)
	hashRe       = regexp.MustCompile(`^[0-9a-f]{7,40}$`)
	debVersionRe = regexp.MustCompile(`^[0-9][A-Za-z0-9.+~]*$`)
	licenseRe    = regexp.MustCompile(`(?i)^(licen[cs]e|copying|notice)(\.(md|txt|rst))?$`)
)

// DebVersion turns the version the binaries report (`git describe --tags --always --dirty`)
// into a Debian version that sorts the same way: v1.4.0 → 1.4.0, v1.4.0-rc.1 → 1.4.0~rc.1
// (before 1.4.0), v1.4.0-3-gabc1234-dirty → 1.4.0+3.gabc1234.dirty (after it), a bare commit
// abc1234 → 0.0.0+gabc1234, dev → 0.0.0+dev.
func DebVersion(v string) (string, error) {
	in := v
	v = strings.TrimPrefix(strings.TrimSpace(v), "v")
	dirty := strings.HasSuffix(v, "-dirty")
	v = strings.TrimSuffix(v, "-dirty")
	var extra []string
	if m := describeRe.FindStringSubmatch(v); m != nil {
		v, extra = m[1], []string{m[2], "g" + m[3]}
	}
	switch {
	case v == "":
	case hashRe.MatchString(v) && strings.ContainsAny(v, "abcdef"):
		v = "0.0.0+g" + v
	case v[0] < '0' || v[0] > '9':
		v = "0.0.0+" + v
	default:
		// 1.4.0-rc.1: a pre-release sorts before its release (~); later dashes become dots.
		if i := strings.IndexByte(v, '-'); i >= 0 {
			v = v[:i] + "~" + strings.ReplaceAll(v[i+1:], "-", ".")
		}
	}
	if dirty {
		extra = append(extra, "dirty")
	}
	if len(extra) > 0 {
		sep := "+"
		if strings.Contains(v, "+") {
			sep = "."
		}
		v += sep + strings.Join(extra, ".")
	}
	if !debVersionRe.MatchString(v) {
		return "", fmt.Errorf("version %q cannot be made a Debian version (got %q): use a tag like v1.4.0 or 1.4.0-rc.1", in, v)
	}
	return v, nil
}

type licenseFile struct{ from, to string }

// moduleLicenses finds the licence files of every Go module compiled into the binaries (from
// their build information) and of the Go standard library, for <doc>/licenses/<module>/.
func moduleLicenses(root string, bins []string) ([]licenseFile, error) {
	mods := map[string]bool{}
	for _, b := range bins {
		bi, err := buildinfo.ReadFile(b)
		if err != nil {
			return nil, fmt.Errorf("%s: no Go build information (%w): build it with the go command", b, err)
		}
		for _, d := range bi.Deps {
			if d.Replace != nil {
				d = d.Replace
			}
			if d.Version == "" || d.Version == "(devel)" {
				return nil, fmt.Errorf("%s holds %s replaced by a local folder: its licence cannot be located; package a build without local replacements", b, d.Path)
			}
			mods[d.Path+"@"+d.Version] = true
		}
	}
	var out []licenseFile
	add := func(dir, to, what string) error {
		entries, err := os.ReadDir(dir)
		if err != nil {
			return fmt.Errorf("licence of %s: %w", what, err)
		}
		n := 0
		for _, e := range entries {
			if e.Type().IsRegular() && licenseRe.MatchString(e.Name()) {
				out = append(out, licenseFile{filepath.Join(dir, e.Name()), to + "/" + e.Name()})
				n++
			}
		}
		if n == 0 {
			return fmt.Errorf("%s has no LICENSE, COPYING or NOTICE file in %s: its licence must ship with the binaries; add it to packaging/licenses and to Build by hand", what, dir)
		}
		return nil
	}
	goroot, err := goCmd(root, "env", "GOROOT")
	if err != nil {
		return nil, err
	}
	if err := add(strings.TrimSpace(string(goroot)), "go", "the Go standard library"); err != nil {
		return nil, err
	}
	if len(mods) == 0 {
		return out, nil
	}
	args := []string{"mod", "download", "-json"}
	for m := range mods {
		args = append(args, m)
	}
	slices.Sort(args[3:])
	js, err := goCmd(root, args...)
	if err != nil {
		return nil, err
	}
	dec := json.NewDecoder(bytes.NewReader(js))
	for {
		var m struct{ Path, Version, Dir, Error string }
		if err := dec.Decode(&m); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return nil, fmt.Errorf("go mod download -json: %w", err)
		}
		if m.Error != "" {
			return nil, fmt.Errorf("module %s@%s: %s", m.Path, m.Version, m.Error)
		}
		if err := add(m.Dir, m.Path, "module "+m.Path+"@"+m.Version); err != nil {
			return nil, err
		}
	}
	return out, nil
}

func goCmd(dir string, args ...string) ([]byte, error) {
	cmd := exec.Command("go", args...)
	cmd.Dir = dir
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return out, nil
}
