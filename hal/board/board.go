// Package board reads facts about the machine the agent runs on: its model and serial,
// thermal zones, memory, kernel release and hostname, and the resident memory of a
// process. Everything comes from procfs and sysfs under a root directory, so tests point
// the root at a fixture tree and the agent passes "/" (or "").
//
// A missing file is a normal answer (an x86 box has no device tree, a container may have
// no thermal zones): Read leaves that fact at its zero value and never fails.
//
// board imports nothing from agent/*; the agent, benchmarks and the status page read it.
package board

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"

	"github.com/edge-agent/edge-agent/hal/internal/hostfs"
)

// Info is what Read found.
type Info struct {
	// Model is the device-tree model ("Raspberry Pi 4 Model B Rev 1.4"), else the DMI
	// product name, else "unknown".
	Model string `json:"model"`
	// Serial is the device-tree serial number, when the board has one.
	Serial string `json:"serial,omitempty"`
	// Temperatures are the readable thermal zones in zone order.
	Temperatures []Temp `json:"temperatures,omitempty"`
	Memory       Memory `json:"memory"`
	// Kernel is the kernel release ("6.1.0-rpi7-rpi-v8").
	Kernel   string `json:"kernel,omitempty"`
	Hostname string `json:"hostname,omitempty"`
}

// UnknownModel is Info.Model when neither the device tree nor DMI names the board.
const UnknownModel = "unknown"

// Temp is one thermal zone.
type Temp struct {
	Zone    string  `json:"zone"` // "thermal_zone0"
	Type    string  `json:"type"` // "cpu-thermal", "CPU-therm", "x86_pkg_temp"
	Celsius float64 `json:"celsius"`
}

// Memory is /proc/meminfo's MemTotal and MemAvailable in bytes; zero when unknown.
type Memory struct {
	TotalBytes     uint64 `json:"total_bytes"`
	AvailableBytes uint64 `json:"available_bytes"`
}

// CPUTemp returns the temperature of the first zone whose type mentions "cpu", "soc" or
// "x86_pkg_temp", else of the first zone; false when there is no zone at all.
func (i Info) CPUTemp() (float64, bool) {
	for _, t := range i.Temperatures {
		ty := strings.ToLower(t.Type)
		if strings.Contains(ty, "cpu") || strings.Contains(ty, "soc") || strings.Contains(ty, "x86_pkg_temp") {
			return t.Celsius, true
		}
	}
	if len(i.Temperatures) > 0 {
		return i.Temperatures[0].Celsius, true
	}
	return 0, false
}

// Read gathers Info under root ("" or "/" for the running system).
func Read(root string) Info {
	fsys := sysfs{hostfs.New(root)}
	info := Info{
		Model:        fsys.value("/proc/device-tree/model"),
		Serial:       fsys.value("/proc/device-tree/serial-number"),
		Temperatures: fsys.temperatures(),
		Memory:       fsys.memory(),
		Kernel:       fsys.value("/proc/sys/kernel/osrelease"),
		Hostname:     fsys.value("/proc/sys/kernel/hostname"),
	}
	if info.Model == "" {
		info.Model = fsys.value("/sys/devices/virtual/dmi/id/product_name")
	}
	if info.Model == "" {
		info.Model = UnknownModel
	}
	return info
}

// sysfs adds board's readers to the host filesystem.
type sysfs struct{ hostfs.FS }

// value reads a one-line attribute; "" when the file cannot be read.
func (s sysfs) value(p string) string {
	v, err := s.Value(p)
	if err != nil {
		return ""
	}
	return v
}

// temperatures reads every thermal_zoneN whose temp is readable. A zone whose sensor is
// off fails the read (EINVAL, ENODATA) and is left out.
func (s sysfs) temperatures() []Temp {
	entries, err := os.ReadDir(s.Abs("/sys/class/thermal"))
	if err != nil {
		return nil
	}
	type zone struct {
		n    int
		name string
	}
	var zones []zone
	for _, e := range entries {
		num, ok := strings.CutPrefix(e.Name(), "thermal_zone")
		if !ok {
			continue
		}
		n, err := strconv.Atoi(num)
		if err != nil || n < 0 {
			continue
		}
		zones = append(zones, zone{n, e.Name()})
	}
	sort.Slice(zones, func(a, b int) bool { return zones[a].n < zones[b].n }) // thermal_zone10 after thermal_zone9

	var out []Temp
	for _, z := range zones {
		dir := "/sys/class/thermal/" + z.name
		milli, err := strconv.ParseInt(s.value(dir+"/temp"), 10, 64)
		if err != nil {
			continue
		}
		out = append(out, Temp{Zone: z.name, Type: s.value(dir + "/type"), Celsius: float64(milli) / 1000})
	}
	return out
}

func (s sysfs) memory() Memory {
	f, err := os.Open(s.Abs("/proc/meminfo"))
	if err != nil {
		return Memory{}
	}
	defer f.Close()
	var m Memory
	_ = scanKB(f, map[string]*uint64{"MemTotal": &m.TotalBytes, "MemAvailable": &m.AvailableBytes})
	return m
}

// scanKB reads "Key:   1234 kB" lines, storing each wanted key's value in bytes. It returns
// ErrFieldMissing naming the first wanted key it did not see.
func scanKB(r io.Reader, want map[string]*uint64) error {
	seen := make(map[string]bool, len(want))
	sc := bufio.NewScanner(io.LimitReader(r, hostfs.MaxFile))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		dst, wanted := want[k]
		if !wanted || seen[k] {
			continue
		}
		fields := strings.Fields(v)
		if len(fields) == 0 {
			continue
		}
		n, err := strconv.ParseUint(fields[0], 10, 64)
		if err != nil {
			return fmt.Errorf("%s %q: %w", k, strings.TrimSpace(v), err)
		}
		if len(fields) > 1 && fields[1] == "kB" {
			n *= 1024
		}
		*dst = n
		seen[k] = true
	}
	if err := sc.Err(); err != nil {
		return err
	}
	var missing []string
	for k := range want {
		if !seen[k] {
			missing = append(missing, k)
		}
	}
	if len(missing) > 0 {
		sort.Strings(missing)
		return fmt.Errorf("no %s line: %w", strings.Join(missing, ", "), ErrFieldMissing)
	}
	return nil
}

// ErrFieldMissing is returned by ProcessRSS and PeakRSS when the status file has no such
// line, as for a kernel thread or a zombie.
var ErrFieldMissing = errors.New("field missing")

// ProcessRSS returns the resident set size in bytes (VmRSS) of process pid, read from
// <root>/proc/<pid>/status. pid 0 means the calling process (/proc/self).
func ProcessRSS(root string, pid int) (uint64, error) {
	return statusField(root, pid, "VmRSS")
}

// PeakRSS returns the peak resident set size in bytes (VmHWM, the high-water mark) of
// process pid, read from <root>/proc/<pid>/status. pid 0 means the calling process.
func PeakRSS(root string, pid int) (uint64, error) {
	return statusField(root, pid, "VmHWM")
}

func statusField(root string, pid int, key string) (uint64, error) {
	if pid < 0 {
		return 0, fmt.Errorf("read %s: pid %d is negative", key, pid)
	}
	proc := "self"
	if pid > 0 {
		proc = strconv.Itoa(pid)
	}
	path := "/proc/" + proc + "/status"
	f, err := os.Open(hostfs.New(root).Abs(path))
	if err != nil {
		return 0, fmt.Errorf("read %s: %w", key, err)
	}
	defer f.Close()
	var n uint64
	if err := scanKB(f, map[string]*uint64{key: &n}); err != nil {
		return 0, fmt.Errorf("read %s from %s: %w", key, path, err)
	}
	return n, nil
}
