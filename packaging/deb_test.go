package packaging

import (
	"bytes"
	"debug/elf"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/edge-agent/edge-agent/internal/testenv"
)

// The version the test binaries report, and the Debian version the package gets.
const (
	testVersion    = "v0.9.1-3-gabc1234"
	testDebVersion = "0.9.1+3.gabc1234"
)

func TestDebVersion(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"v1.4.0", "1.4.0"},
		{"1.4.0", "1.4.0"},
		{"v1.4.0-rc.1", "1.4.0~rc.1"},
		{"v1.4.0-rc-2", "1.4.0~rc.2"},
		{"v1.4.0-3-gabc1234", "1.4.0+3.gabc1234"},
		{"v1.4.0-3-gabc1234-dirty", "1.4.0+3.gabc1234.dirty"},
		{"v1.4.0-rc.1-3-gabc1234", "1.4.0~rc.1+3.gabc1234"},
		{"v1.4.0+build.7", "1.4.0+build.7"},
		{"v1.4.0-dirty", "1.4.0+dirty"},
		{"050c5f3", "0.0.0+g050c5f3"},
		{"050c5f3-dirty", "0.0.0+g050c5f3.dirty"},
		{"dev", "0.0.0+dev"},
	} {
		got, err := DebVersion(c.in)
		if err != nil || got != c.want {
			t.Errorf("DebVersion(%q) = %q, %v; want %q", c.in, got, err, c.want)
		}
	}
	for _, bad := range []string{"", "v", "1.0 beta", "1.0/2"} {
		if got, err := DebVersion(bad); err == nil {
			t.Errorf("DebVersion(%q) = %q; want an error", bad, got)
		}
	}
	// The conversion must keep the order: a pre-release before its release, later commits after.
	ordered := []string{"dev", "v0.9.0", "v1.4.0-rc.1", "v1.4.0-rc.1-3-gabc1234", "v1.4.0", "v1.4.0-3-gabc1234", "v1.10.0"}
	for i := 1; i < len(ordered); i++ {
		a, _ := DebVersion(ordered[i-1])
		b, _ := DebVersion(ordered[i])
		if err := exec.Command("dpkg", "--compare-versions", a, "lt", b).Run(); err != nil {
			t.Errorf("dpkg --compare-versions %s lt %s: %v; %s must sort before %s", a, b, err, ordered[i-1], ordered[i])
		}
	}
}

// The package for this machine (amd64 in CI), for real: its metadata and contents; dpkg -i on this machine; the agent
// and a one-shot prediction as the service user; the daemon on the default config; an upgrade
// that keeps a changed config; purge; then scripts/install.sh twice and --uninstall twice.
// CI runs it as root on Debian. It purges an edge-agent package left installed before it.
func TestDebInstallRunRemove(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("this test installs the .deb with dpkg and creates the user edge-agent: run it as root (CI does): sudo go test ./packaging/")
	}
	host, other := runtime.GOARCH, "arm64"
	switch host {
	case "amd64":
	case "arm64":
		other = "amd64"
	default:
		t.Fatalf("packages are built for amd64 and arm64; this machine is %s", host)
	}
	lockDpkg(t)
	root := testenv.Root(t)
	dist := crossBuild(t, host)
	out := t.TempDir()
	deb, err := Build(Options{Root: root, Dist: dist, Arch: host, Version: testVersion, Out: out})
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(out, "edge-agent_"+testDebVersion+"_"+host+".deb"); deb != want {
		t.Errorf("Build wrote %s; want %s", deb, want)
	}
	checkDebInfo(t, deb, host, testDebVersion)
	checkDebContents(t, deb)

	purge(t) // a run that failed half-way may have left it installed
	t.Cleanup(func() { purge(t) })

	t.Run("dpkg", func(t *testing.T) {
		run(t, "dpkg", "-i", deb)
		checkInstalled(t, root, testDebVersion)
		checkAgentRuns(t)

		// What the service and an administrator leave behind, which purge must remove too.
		asService(t, "ln", BinDir+"/edge-agent", BinDir+"/edge-agent.previous")
		asService(t, "sh", "-c", "echo '{}' > "+BinDir+"/.edge-agent.update-result.json")
		if err := os.WriteFile("/etc/edge-agent/fleet.pub", []byte("untrusted comment: test\n"), 0o644); err != nil {
			t.Fatal(err)
		}

		// Upgrade: a changed config is kept (config|noreplace), the service keeps its binary.
		edited := append(readFile(t, Config), "\n# changed on the board\n"...)
		if err := os.WriteFile(Config, edited, 0o640); err != nil {
			t.Fatal(err)
		}
		deb2, err := Build(Options{Root: root, Dist: dist, Arch: host, Version: "v0.9.2", Out: out})
		if err != nil {
			t.Fatal(err)
		}
		run(t, "dpkg", "-i", deb2)
		checkInstalled(t, root, "0.9.2")
		if got := readFile(t, Config); !bytes.Equal(got, edited) {
			t.Errorf("the upgrade replaced the changed %s:\n%s", Config, got)
		}

		run(t, "dpkg", "--purge", Name)
		checkGone(t)
	})

	t.Run("install.sh", func(t *testing.T) {
		purge(t) // when the dpkg part stopped half-way
		script := filepath.Join(root, "scripts", "install.sh")
		// From the file, then from a URL: the second finds it installed and does nothing.
		if out := run(t, script, deb); !strings.Contains(out, Name+" "+testDebVersion+" installed") {
			t.Errorf("install.sh %s said:\n%s\nwant it to report the installed version", deb, out)
		}
		checkInstalled(t, root, testDebVersion)
		srv := httptest.NewServer(http.FileServer(http.Dir(out)))
		defer srv.Close()
		if out := run(t, script, srv.URL+"/"+filepath.Base(deb)); !strings.Contains(out, "already installed") {
			t.Errorf("install.sh a second time said:\n%s\nwant it to find the package already installed", out)
		}
		if got := asService(t, "/usr/bin/edge-agent", "version"); !strings.HasPrefix(got, "edge-agent "+testVersion+"\n") {
			t.Errorf("edge-agent version after install.sh:\n%s", got)
		}
		// A folder with packages for several architectures: it picks this board's.
		broken := filepath.Join(t.TempDir(), "edge-agent_"+testDebVersion+"_"+other+".deb")
		if err := os.WriteFile(broken, []byte("not this board's"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Link(deb, filepath.Join(filepath.Dir(broken), filepath.Base(deb))); err != nil {
			t.Fatal(err)
		}
		if out := run(t, script, filepath.Dir(broken)); !strings.Contains(out, "already installed") {
			t.Errorf("install.sh DIR said:\n%s\nwant it to pick the %s package, already installed", out, host)
		}
		// A broken file and another architecture's package are refused, saying why.
		if out, err := exec.Command(script, broken).CombinedOutput(); err == nil || !strings.Contains(string(out), "not a Debian package") {
			t.Errorf("install.sh on a broken package: %v\n%s\nwant a refusal", err, out)
		}
		pkg := filepath.Join(t.TempDir(), "pkg")
		if err := os.MkdirAll(filepath.Join(pkg, "DEBIAN"), 0o755); err != nil {
			t.Fatal(err)
		}
		control := "Package: edge-agent\nVersion: 9.9.9\nArchitecture: " + other + "\nMaintainer: test <test@example.invalid>\nDescription: stand-in\n"
		if err := os.WriteFile(filepath.Join(pkg, "DEBIAN", "control"), []byte(control), 0o644); err != nil {
			t.Fatal(err)
		}
		run(t, "dpkg-deb", "--build", pkg, pkg+".deb")
		if out, err := exec.Command(script, pkg+".deb").CombinedOutput(); err == nil || !strings.Contains(string(out), "is for "+other+"; this board is "+host) {
			t.Errorf("install.sh on an %s package: %v\n%s\nwant a refusal naming both architectures", other, err, out)
		}

		if out := run(t, script, "--uninstall"); !strings.Contains(out, "removed") {
			t.Errorf("install.sh --uninstall said:\n%s", out)
		}
		checkGone(t)
		if out := run(t, script, "--uninstall"); !strings.Contains(out, "not installed") {
			t.Errorf("install.sh --uninstall a second time said:\n%s\nwant: not installed, nothing to do", out)
		}
		checkGone(t)
	})
}

// The arm64 package holds arm64 binaries and libraries that run together from the package's
// layout (checked under qemu-user, with the cross toolchain's libc as the board's).
func TestDebArm64(t *testing.T) {
	root := testenv.Root(t)
	dist := crossBuild(t, "arm64")
	deb, err := Build(Options{Root: root, Dist: dist, Arch: "arm64", Version: testVersion, Out: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if filepath.Base(deb) != "edge-agent_"+testDebVersion+"_arm64.deb" {
		t.Errorf("Build wrote %s", deb)
	}
	checkDebInfo(t, deb, "arm64", testDebVersion)
	checkDebContents(t, deb)

	x := t.TempDir()
	run(t, "dpkg-deb", "-x", deb, x)
	for _, f := range []string{BinDir + "/edge-agent", "/usr/bin/edgectl", LibDir + "/libtensorflowlite_c.so", LibDir + "/libexternal_delegate_obj.so"} {
		e, err := elf.Open(filepath.Join(x, f))
		if err != nil {
			t.Fatalf("%s in the arm64 package: %v", f, err)
		}
		if e.Machine != elf.EM_AARCH64 {
			t.Errorf("%s in the arm64 package is for %v; want EM_AARCH64", f, e.Machine)
		}
		e.Close()
	}
	qemu, err := exec.LookPath("qemu-aarch64-static")
	if err != nil {
		t.Fatal("qemu-aarch64-static is missing: apt-get install qemu-user-static (scripts/deps.sh)")
	}
	// $ORIGIN/../lib finds the package's own library in the extracted tree.
	got := run(t, qemu, "-L", "/usr/aarch64-linux-gnu", filepath.Join(x, BinDir, "edge-agent"), "version")
	for _, want := range []string{"edge-agent " + testVersion + "\n", "TensorFlow Lite 2.9.0", "linux/arm64"} {
		if !strings.Contains(got, want) {
			t.Errorf("arm64 edge-agent version under qemu:\n%s\nwant %q", got, want)
		}
	}
}

// Build refuses layouts that would not run once installed, saying what is wrong.
func TestBuildRefusesBrokenLayouts(t *testing.T) {
	root := testenv.Root(t)
	lib := tfliteLibDir(t, root)
	host, other := runtime.GOARCH, "arm64" // gcc builds for this machine
	if host == "arm64" {
		other = "amd64"
	}
	cc := func(t *testing.T, out string, args ...string) {
		t.Helper()
		src := filepath.Join(t.TempDir(), "main.c")
		if err := os.WriteFile(src, []byte("int main(void) { return 0; }\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		run(t, "gcc", append([]string{"-o", out, src, "-L" + lib, "-Wl,--no-as-needed"}, args...)...)
	}
	layout := func(t *testing.T, libs []string, ccArgs ...string) string {
		t.Helper()
		d := filepath.Join(t.TempDir(), "linux-"+host)
		if err := os.MkdirAll(filepath.Join(d, "lib"), 0o755); err != nil {
			t.Fatal(err)
		}
		for _, b := range []string{"edge-agent", "edgectl"} {
			cc(t, filepath.Join(d, b), ccArgs...)
		}
		for _, l := range libs {
			copyFile(t, filepath.Join(lib, l), filepath.Join(d, "lib", l))
		}
		return d
	}
	both := []string{"libtensorflowlite_c.so", "libexternal_delegate_obj.so"}
	for _, c := range []struct {
		name   string
		dist   func(t *testing.T) string
		arch   string
		errHas string
	}{
		{"no layout", func(t *testing.T) string { return filepath.Join(t.TempDir(), "linux-"+host) }, host, "make cross"},
		{"no library", func(t *testing.T) string { return layout(t, nil) }, host, "no lib/libtensorflowlite_c.so"},
		{"other architecture", func(t *testing.T) string { return layout(t, both) }, other, "not " + other},
		{"no rpath", func(t *testing.T) string { return layout(t, both, "-ltensorflowlite_c") }, host, "-Wl,-rpath"},
		{"library not shipped", func(t *testing.T) string {
			return layout(t, both[:1], "-ltensorflowlite_c", "-lexternal_delegate_obj", "-Wl,-rpath,"+LibDir)
		}, host, "needs libexternal_delegate_obj.so"},
	} {
		t.Run(c.name, func(t *testing.T) {
			out := t.TempDir()
			_, err := Build(Options{Root: root, Dist: c.dist(t), Arch: c.arch, Version: testVersion, Out: out})
			if err == nil || !strings.Contains(err.Error(), c.errHas) {
				t.Fatalf("Build: %v; want an error mentioning %q", err, c.errHas)
			}
			if left, _ := os.ReadDir(out); len(left) > 0 {
				t.Errorf("a refused build left %v in the output folder", left)
			}
		})
	}
	// A layout that would run is accepted (the same C programs, linked as make cross links).
	d := layout(t, both, "-ltensorflowlite_c", "-lexternal_delegate_obj", "-Wl,-rpath,$ORIGIN/../lib:"+LibDir)
	if _, err := checkLayout(d, host); err != nil {
		t.Errorf("checkLayout on a good layout: %v", err)
	}
}

// crossBuild builds the layout for arch with cross/build.sh (what `make cross` runs), with the
// test version, in a temporary folder, and returns dist/linux-<arch>.
func crossBuild(t *testing.T, arch string) string {
	t.Helper()
	root := testenv.Root(t)
	out := t.TempDir()
	cmd := exec.Command(filepath.Join(root, "cross", "build.sh"), "-o", out, arch)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "GO_LDFLAGS=-X github.com/edge-agent/edge-agent/agent.Version="+testVersion)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cross/build.sh -o %s %s: %v\n%s", out, arch, err, b)
	}
	return filepath.Join(out, "linux-"+arch)
}

// tfliteLibDir is where the host's TensorFlow Lite library is (installed on demand).
func tfliteLibDir(t *testing.T, root string) string {
	t.Helper()
	out, err := exec.Command(filepath.Join(root, "scripts", "tflite-prefix.sh")).Output()
	if err != nil {
		t.Fatalf("scripts/tflite-prefix.sh: %v", err)
	}
	return filepath.Join(strings.TrimSpace(string(out)), "lib")
}

func checkDebInfo(t *testing.T, deb, arch, version string) {
	t.Helper()
	for field, want := range map[string]string{
		"Package":      "edge-agent",
		"Architecture": arch,
		"Version":      version,
		"Depends":      "libc6 (>= 2.",
	} {
		if got := strings.TrimSpace(run(t, "dpkg-deb", "--field", deb, field)); !strings.HasPrefix(got, want) {
			t.Errorf("%s: %s = %q; want %q", filepath.Base(deb), field, got, want)
		}
	}
	if got := run(t, "dpkg-deb", "--info", deb, "conffiles"); strings.TrimSpace(got) != Config {
		t.Errorf("conffiles = %q; want only %s", got, Config)
	}
	info := run(t, "dpkg-deb", "--info", deb)
	for _, script := range []string{"postinst", "prerm", "postrm"} {
		if !regexpLine(info, script+`\s+#!/bin/sh`) {
			t.Errorf("dpkg-deb --info lists no %s script:\n%s", script, info)
		}
	}
}

func checkDebContents(t *testing.T, deb string) {
	t.Helper()
	got := run(t, "dpkg-deb", "--contents", deb)
	for _, want := range []string{
		"-rwxr-xr-x root/root .* ./opt/edge-agent/bin/edge-agent$",
		"./usr/bin/edge-agent -> /opt/edge-agent/bin/edge-agent$",
		"-rwxr-xr-x root/root .* ./usr/bin/edgectl$",
		"-rw-r--r-- root/root .* ./opt/edge-agent/lib/libtensorflowlite_c.so$",
		"-rw-r--r-- root/root .* ./opt/edge-agent/lib/libexternal_delegate_obj.so$",
		"-rw-r--r-- root/root .* ./lib/systemd/system/edge-agent.service$",
		"-rw-r----- root/root .* ./etc/edge-agent/config.yaml$",
		"-rw-r--r-- root/root .* ./usr/share/doc/edge-agent/copyright$",
		"-rw-r--r-- root/root .* ./usr/share/doc/edge-agent/licenses/tensorflow-lite$",
		"-rw-r--r-- root/root .* ./usr/share/doc/edge-agent/licenses/go/LICENSE$",
		"-rw-r--r-- root/root .* ./usr/share/doc/edge-agent/licenses/go.etcd.io/bbolt/LICENSE$",
		"-rw-r--r-- root/root .* ./usr/share/doc/edge-agent/licenses/github.com/eclipse/paho.mqtt.golang/LICENSE$",
	} {
		if !regexpLine(got, want) {
			t.Errorf("dpkg-deb --contents has no line matching %q:\n%s", want, got)
		}
	}
}

// checkInstalled checks what dpkg and postinst set up.
func checkInstalled(t *testing.T, root, version string) {
	t.Helper()
	if got := run(t, "dpkg-query", "-W", "-f=${Status} ${Version}", Name); got != "install ok installed "+version {
		t.Errorf("dpkg-query: %q; want installed %s", got, version)
	}
	pw := strings.Split(strings.TrimSpace(run(t, "getent", "passwd", "edge-agent")), ":")
	if len(pw) != 7 || pw[5] != "/var/lib/edge-agent" || pw[6] != "/usr/sbin/nologin" {
		t.Errorf("user edge-agent: %v; want home /var/lib/edge-agent and shell /usr/sbin/nologin", pw)
	}
	uid, _ := strconv.Atoi(pw[2])
	if uid == 0 || uid >= 1000 {
		t.Errorf("user edge-agent has uid %d; want a system user", uid)
	}
	groups := strings.Fields(run(t, "id", "-nG", "edge-agent"))
	for _, g := range []string{"edge-agent", "video", "plugdev"} {
		if !slices.Contains(groups, g) {
			t.Errorf("user edge-agent is in %v; want %s too", groups, g)
		}
	}
	gid := lookupGroup(t, "edge-agent")
	for _, c := range []struct {
		path     string
		uid, gid int
		mode     os.FileMode
	}{
		{"/var/lib/edge-agent", uid, gid, os.ModeDir | 0o750},
		{BinDir, uid, gid, os.ModeDir | 0o755},
		{BinDir + "/edge-agent", uid, gid, 0o755},
		{LibDir, 0, 0, os.ModeDir | 0o755},
		{LibDir + "/libtensorflowlite_c.so", 0, 0, 0o644},
		{"/usr/bin/edgectl", 0, 0, 0o755},
		{Config, 0, gid, 0o640},
		{Unit, 0, 0, 0o644},
	} {
		st, err := os.Lstat(c.path)
		if err != nil {
			t.Errorf("%v", err)
			continue
		}
		s := st.Sys().(*syscall.Stat_t)
		if int(s.Uid) != c.uid || int(s.Gid) != c.gid || st.Mode() != c.mode {
			t.Errorf("%s: owner %d:%d mode %v; want %d:%d %v", c.path, s.Uid, s.Gid, st.Mode(), c.uid, c.gid, c.mode)
		}
	}
	if l, err := os.Readlink("/usr/bin/edge-agent"); err != nil || l != BinDir+"/edge-agent" {
		t.Errorf("/usr/bin/edge-agent -> %q, %v; want %s/edge-agent", l, err, BinDir)
	}
	if !bytes.Equal(readFile(t, Unit), readFile(t, filepath.Join(root, "systemd", "edge-agent.service"))) {
		t.Errorf("%s differs from systemd/edge-agent.service", Unit)
	}
}

// checkAgentRuns runs the installed agent as the service user: version, a one-shot
// prediction on a real model, and the daemon on the packaged default config.
func checkAgentRuns(t *testing.T) {
	t.Helper()
	got := asService(t, "/usr/bin/edge-agent", "version")
	if !strings.HasPrefix(got, "edge-agent "+testVersion+"\n") || !strings.Contains(got, "TensorFlow Lite 2.9.0") {
		t.Errorf("edge-agent version as the service user:\n%s\nwant version %s with TensorFlow Lite 2.9.0", got, testVersion)
	}
	if got := asService(t, "/usr/bin/edgectl", "version"); !strings.Contains(got, testVersion) {
		t.Errorf("edgectl version:\n%s\nwant %s", got, testVersion)
	}

	// The service user cannot read the test's temporary folders (0700): copy the inputs to a
	// folder it can.
	dir, err := os.MkdirTemp("", "edge-agent-deb-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	model, digit := filepath.Join(dir, "mnist.tflite"), filepath.Join(dir, "digit7.png")
	copyFile(t, testenv.Data(t, "mnist_model.tflite"), model)
	copyFile(t, testenv.Data(t, "mnist_digit_7.png"), digit)
	var r struct {
		Model   string      `json:"model"`
		Outputs [][]float64 `json:"outputs"`
	}
	out := asService(t, "/usr/bin/edge-agent", "predict", "--model", model, "--input", digit, "--json")
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("predict --json printed %q: %v", out, err)
	}
	if len(r.Outputs) != 1 || len(r.Outputs[0]) != 10 {
		t.Fatalf("predict: outputs %v; want one tensor of 10 probabilities", r.Outputs)
	}
	best := 0
	for i, p := range r.Outputs[0] {
		if p > r.Outputs[0][best] {
			best = i
		}
	}
	if r.Model != "mnist" || best != 7 {
		t.Errorf("predict on a 7: model %q, class %d (%v); want mnist, 7", r.Model, best, r.Outputs[0])
	}

	runDaemon(t)
}

// runDaemon starts `edge-agent run` as the unit does (the service user, the packaged config,
// the state folder as working directory), waits for it to start, checks it loaded the
// package's library, and stops it with SIGTERM.
func runDaemon(t *testing.T) {
	t.Helper()
	u, err := user.Lookup("edge-agent")
	if err != nil {
		t.Fatal(err)
	}
	cred := &syscall.Credential{Uid: atoi(t, u.Uid), Gid: atoi(t, u.Gid)}
	gids, err := u.GroupIds()
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range gids {
		cred.Groups = append(cred.Groups, atoi(t, g))
	}
	cmd := exec.Command(BinDir+"/edge-agent", "run", "--config", Config)
	cmd.Dir = "/var/lib/edge-agent"
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/var/lib/edge-agent", "LANG=C.UTF-8"}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	var log testenv.LockedBuffer
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatalf("start edge-agent run: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	stopped := false
	defer func() {
		if !stopped {
			cmd.Process.Kill()
			<-done
		}
	}()

	deadline := time.Now().Add(testenv.Patience(30 * time.Second))
	for !strings.Contains(log.String(), `msg="edge-agent starting"`) {
		select {
		case err := <-done:
			stopped = true
			t.Fatalf("edge-agent run on the packaged config exited: %v\n%s", err, log.String())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("edge-agent run did not start within 30s:\n%s", log.String())
		}
	}
	maps, err := os.ReadFile("/proc/" + strconv.Itoa(cmd.Process.Pid) + "/maps")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(maps, []byte(LibDir+"/libtensorflowlite_c.so")) {
		t.Errorf("the daemon did not load %s/libtensorflowlite_c.so; its maps:\n%s", LibDir, maps)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err = <-done:
		stopped = true
	case <-time.After(30 * time.Second):
		t.Fatalf("edge-agent did not stop within 30s of SIGTERM:\n%s", log.String())
	}
	if err != nil || !strings.Contains(log.String(), "edge-agent stopped") {
		t.Errorf("edge-agent run after SIGTERM: %v; want a clean stop:\n%s", err, log.String())
	}
	st, err := os.Stat("/var/lib/edge-agent/outbox.db")
	if err != nil {
		t.Fatalf("the daemon made no outbox in the state folder: %v", err)
	}
	if got := st.Sys().(*syscall.Stat_t).Uid; got != cred.Uid {
		t.Errorf("outbox.db is owned by uid %d; want the service user %d", got, cred.Uid)
	}
}

// checkGone checks that nothing of the package, its user or its data is left.
func checkGone(t *testing.T) {
	t.Helper()
	if out, err := exec.Command("dpkg-query", "-W", "-f=${db:Status-Abbrev}", Name).CombinedOutput(); err == nil && !strings.HasPrefix(string(out), "un") {
		t.Errorf("dpkg-query still knows %s: %q", Name, out)
	}
	if _, err := user.Lookup("edge-agent"); !errors.As(err, new(user.UnknownUserError)) {
		t.Errorf("user edge-agent is still there (%v)", err)
	}
	if _, err := user.LookupGroup("edge-agent"); !errors.As(err, new(user.UnknownGroupError)) {
		t.Errorf("group edge-agent is still there (%v)", err)
	}
	for _, p := range []string{"/opt/edge-agent", "/etc/edge-agent", "/var/lib/edge-agent", "/usr/bin/edge-agent", "/usr/bin/edgectl", Unit} {
		if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s is still there after purge (%v)", p, err)
		}
	}
}

// purge removes an installed edge-agent package (nothing to do when there is none).
func purge(t *testing.T) {
	t.Helper()
	if out, err := exec.Command("dpkg", "--purge", Name).CombinedOutput(); err != nil {
		t.Errorf("dpkg --purge %s: %v\n%s", Name, err, out)
	}
}

// lockDpkg serialises the tests that install packages on this machine: two `go test` runs at
// once would remove each other's install (and dpkg refuses a second process anyway).
func lockDpkg(t *testing.T) {
	t.Helper()
	f, err := os.OpenFile(filepath.Join(os.TempDir(), "edge-agent-packaging-test.lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(15 * time.Minute)
	for syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) != nil {
		if time.Now().After(deadline) {
			f.Close()
			t.Fatal("another test run has been installing edge-agent for 15 minutes (lock in " + f.Name() + ")")
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Cleanup(func() { f.Close() }) // closing releases the lock
}

// asService runs a command as the service user, in / (it cannot read the test's folder).
func asService(t *testing.T, args ...string) string {
	t.Helper()
	cmd := exec.Command("runuser", append([]string{"-u", "edge-agent", "--"}, args...)...)
	cmd.Dir = "/"
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8"}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("as edge-agent: %s: %v\n%s%s", strings.Join(args, " "), err, out, stderr.String())
	}
	return string(out)
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s%s", name, strings.Join(args, " "), err, out, stderr.String())
	}
	return string(out)
}

func regexpLine(text, pattern string) bool {
	for _, l := range strings.Split(text, "\n") {
		if ok, _ := regexp.MatchString(pattern, l); ok {
			return true
		}
	}
	return false
}

func readFile(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	in, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}

func lookupGroup(t *testing.T, name string) int {
	t.Helper()
	g, err := user.LookupGroup(name)
	if err != nil {
		t.Fatal(err)
	}
	return int(atoi(t, g.Gid))
}

func atoi(t *testing.T, s string) uint32 {
	t.Helper()
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil {
		t.Fatal(err)
	}
	return uint32(n)
}
