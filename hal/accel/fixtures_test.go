package accel

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// tree lays out files (board path → content) under a new temporary root. A content that
// starts with "->" makes a symlink to the rest.
func tree(t *testing.T, files map[string]string) string {
	t.Helper()
	root := t.TempDir()
	for name, content := range files {
		p := filepath.Join(root, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if target, ok := strings.CutPrefix(content, "->"); ok {
			if err := os.Symlink(target, p); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

// cpuinfo repeats one processor block n times, numbering each, and appends a trailer.
func cpuinfo(n int, block, trailer string) string {
	var b strings.Builder
	for i := range n {
		fmt.Fprintf(&b, "processor\t: %d\n%s\n", i, block)
	}
	return b.String() + trailer
}

const (
	pi4Block = "BogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\nCPU revision\t: 3\n"
	pi4Tail  = "Hardware\t: BCM2835\nRevision\t: c03114\nSerial\t\t: 100000002a5b3c4d\nModel\t\t: Raspberry Pi 4 Model B Rev 1.4\n"

	pi3ArmBlock = "model name\t: ARMv7 Processor rev 4 (v7l)\nBogoMIPS\t: 38.40\nFeatures\t: half thumb fastmult vfp edsp neon vfpv3 tls vfpv4 idiva idivt vfpd32 lpae evtstrm crc32\nCPU implementer\t: 0x41\nCPU architecture: 7\nCPU variant\t: 0x0\nCPU part\t: 0xd03\nCPU revision\t: 4\n"

	nanoBlock = "model name\t: ARMv8 Processor rev 1 (v8l)\nBogoMIPS\t: 38.40\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x1\nCPU part\t: 0xd07\nCPU revision\t: 1\n"

	i5Block = "vendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 158\nmodel name\t: Intel(R) Core(TM) i5-8500T CPU @ 2.10GHz\ncpu cores\t: 6\nflags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ss ht syscall nx pdpe1gb rdtscp lm constant_tsc pni pclmulqdq ssse3 fma cx16 sse4_1 sse4_2 movbe popcnt aes xsave avx f16c rdrand hypervisor lahf_lm abm 3dnowprefetch bmi1 avx2 smep bmi2 erms invpcid\nbogomips\t: 4199.88\n"

	celeronBlock = "vendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 122\nmodel name\t: Intel(R) Celeron(R) J4125 CPU @ 2.00GHz\nflags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ss ht syscall nx pdpe1gb rdtscp lm constant_tsc pni pclmulqdq ssse3 cx16 sse4_1 sse4_2 movbe popcnt aes xsave rdrand lahf_lm 3dnowprefetch erms\n"
)

// Board fixtures, by the paths a real board has.
func raspberryPi4() map[string]string {
	return map[string]string{
		"/proc/cpuinfo":                                cpuinfo(4, pi4Block, pi4Tail),
		"/proc/device-tree/model":                      "Raspberry Pi 4 Model B Rev 1.4\x00",
		"/proc/device-tree/compatible":                 "raspberrypi,4-model-b\x00brcm,bcm2711\x00",
		"/sys/bus/usb/devices/usb1/idVendor":           "1d6b\n",
		"/sys/bus/usb/devices/usb1/idProduct":          "0002\n",
		"/sys/bus/usb/devices/1-1/idVendor":            "2109\n",
		"/sys/bus/usb/devices/1-1/idProduct":           "3431\n",
		"/sys/bus/usb/devices/1-1:1.0/bInterfaceClass": "09\n",
		"/dev/dri/card0":                               "",
		"/dev/dri/renderD128":                          "",
		"/sys/class/drm/renderD128/device/uevent":      "DRIVER=v3d\nOF_NAME=v3d\nOF_COMPATIBLE_0=brcm,2711-v3d\n",
	}
}

func raspberryPi3Armv7() map[string]string {
	return map[string]string{
		"/proc/cpuinfo":           cpuinfo(4, pi3ArmBlock, "Hardware\t: BCM2835\nModel\t\t: Raspberry Pi 3 Model B Rev 1.2\n"),
		"/proc/device-tree/model": "Raspberry Pi 3 Model B Rev 1.2\x00",
	}
}

func jetsonNano() map[string]string {
	return map[string]string{
		"/proc/cpuinfo":                cpuinfo(4, nanoBlock, ""),
		"/proc/device-tree/model":      "NVIDIA Jetson Nano Developer Kit\x00",
		"/proc/device-tree/compatible": "nvidia,p3450-0000\x00nvidia,jetson-nano\x00nvidia,tegra210\x00",
		"/dev/nvhost-gpu":              "",
		"/dev/dri/renderD128":          "", // the Tegra display engine; not listed again
	}
}

func x86CoralUSB() map[string]string {
	return map[string]string{
		"/proc/cpuinfo":                                cpuinfo(4, i5Block, ""),
		"/sys/bus/usb/devices/usb2/idVendor":           "1d6b\n",
		"/sys/bus/usb/devices/usb2/idProduct":          "0003\n",
		"/sys/bus/usb/devices/2-1/idVendor":            "1a6e\n",
		"/sys/bus/usb/devices/2-1/idProduct":           "089a\n",
		"/sys/bus/usb/devices/2-1:1.0/bInterfaceClass": "ff\n",
		"/dev/dri/renderD128":                          "",
		"/sys/class/drm/renderD128/device/driver":      "->../../../bus/pci/drivers/i915",
	}
}

func x86CoralPCIe() map[string]string {
	return map[string]string{
		"/proc/cpuinfo":                        cpuinfo(4, celeronBlock, ""),
		"/dev/apex_0":                          "->/dev/null", // a real character device
		"/dev/apex_1/x":                        "",            // a directory: not a device
		"/dev/apex_extra":                      "",            // not apex_<N>
		"/sys/class/apex/apex_0/device/vendor": "0x1ac1\n",
		"/sys/class/apex/apex_0/device/device": "0x089a\n",
	}
}
