package accel

import (
	"runtime"
	"slices"
	"strconv"
	"strings"
)

const cpuinfoPath = "/proc/cpuinfo"

func (s sysfs) cpu(notes *[]string) CPU {
	text, ok := s.readValue(cpuinfoPath, notes)
	if !ok {
		*notes = append(*notes, "/proc/cpuinfo unavailable: CPU architecture and core count come from the Go runtime")
		return CPU{Arch: runtime.GOARCH, Cores: runtime.NumCPU()}
	}
	c := parseCPUInfo(text)
	if c.Cores == 0 {
		c.Cores = s.onlineCPUs(notes)
	}
	if c.Cores == 0 {
		c.Cores = runtime.NumCPU()
	}
	return c
}

// parseCPUInfo reads the "key : value" lines of /proc/cpuinfo. Per-processor keys are taken
// from the first processor; cores are counted by "processor" lines.
func parseCPUInfo(text string) CPU {
	first := map[string]string{}
	cores := 0
	for _, line := range strings.Split(text, "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		if k == "processor" {
			cores++
		}
		if _, seen := first[k]; !seen {
			first[k] = v
		}
	}

	c := CPU{Cores: cores, Arch: runtime.GOARCH}
	flags, x86 := first["flags"] // x86 says "flags", ARM says "Features"
	if x86 {
		c.Features = strings.Fields(flags)
		c.Arch = "386"
		if slices.Contains(c.Features, "lm") { // long mode: a 64-bit CPU
			c.Arch = "amd64"
		}
		c.ModelName = first["model name"]
	} else if feats, ok := first["Features"]; ok {
		c.Features = strings.Fields(feats)
		c.Arch = "arm"
		// A 64-bit kernel says "CPU architecture: 8"; a 32-bit kernel on the same
		// Cortex-A53 says 7. asimd is listed only by 64-bit kernels.
		if armArch(first["CPU architecture"]) >= 8 || slices.Contains(c.Features, "asimd") {
			c.Arch = "arm64"
		}
		c.ModelName = armCoreName(first["CPU implementer"], first["CPU part"])
		if c.ModelName == "" {
			c.ModelName = first["model name"]
		}
	}
	c.NEON = slices.Contains(c.Features, "asimd") || slices.Contains(c.Features, "neon")
	c.AVX2 = slices.Contains(c.Features, "avx2")
	return c
}

// armArch parses "8" or "7" (older kernels write "AArch64" or "7TEJ"); 0 when unknown.
func armArch(v string) int {
	if strings.EqualFold(v, "AArch64") {
		return 8
	}
	end := 0
	for end < len(v) && v[end] >= '0' && v[end] <= '9' {
		end++
	}
	n, _ := strconv.Atoi(v[:end])
	return n
}

// armCoreName names Arm Ltd cores (implementer 0x41) found on the boards edge-agent runs
// on; "" for any other.
func armCoreName(implementer, part string) string {
	if !strings.EqualFold(implementer, "0x41") {
		return ""
	}
	p, err := strconv.ParseUint(strings.TrimPrefix(strings.ToLower(part), "0x"), 16, 16)
	if err != nil {
		return ""
	}
	var name string
	switch p {
	case 0xc07:
		name = "Cortex-A7"
	case 0xc08:
		name = "Cortex-A8"
	case 0xc09:
		name = "Cortex-A9"
	case 0xc0f:
		name = "Cortex-A15"
	case 0xd03:
		name = "Cortex-A53" // Raspberry Pi 3, Zero 2 W
	case 0xd04:
		name = "Cortex-A35"
	case 0xd05:
		name = "Cortex-A55"
	case 0xd07:
		name = "Cortex-A57" // Jetson Nano, TX1/TX2
	case 0xd08:
		name = "Cortex-A72" // Raspberry Pi 4
	case 0xd09:
		name = "Cortex-A73"
	case 0xd0a:
		name = "Cortex-A75"
	case 0xd0b:
		name = "Cortex-A76" // Raspberry Pi 5
	case 0xd0c:
		name = "Neoverse-N1"
	case 0xd42:
		name = "Cortex-A78AE" // Jetson Orin
	default:
		return ""
	}
	return "ARM " + name
}

// onlineCPUs counts /sys/devices/system/cpu/online ("0-3", "0,2-5"); 0 when unknown.
func (s sysfs) onlineCPUs(notes *[]string) int {
	v, ok := s.readValue("/sys/devices/system/cpu/online", notes)
	if !ok {
		return 0
	}
	n := 0
	for _, r := range strings.Split(v, ",") {
		lo, hi, isRange := strings.Cut(r, "-")
		a, err := strconv.Atoi(lo)
		if err != nil {
			return 0
		}
		b := a
		if isRange {
			if b, err = strconv.Atoi(hi); err != nil || b < a {
				return 0
			}
		}
		n += b - a + 1
	}
	return n
}
