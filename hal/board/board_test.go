package board

import (
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"testing"
)

// tree lays out files (board path → content) under a new temporary root.
func tree(t *testing.T, files map[string]string) string {
	t.Helper()
	root := t.TempDir()
	for name, content := range files {
		p := filepath.Join(root, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

const meminfo4G = "MemTotal:        3884376 kB\nMemFree:         2735604 kB\nMemAvailable:    3378160 kB\nBuffers:           38468 kB\n"

func raspberryPi4() map[string]string {
	return map[string]string{
		"/proc/device-tree/model":                  "Raspberry Pi 4 Model B Rev 1.4\x00",
		"/proc/device-tree/serial-number":          "100000002a5b3c4d\x00",
		"/proc/cpuinfo":                            "processor\t: 0\nFeatures\t: fp asimd evtstrm crc32 cpuid\nCPU architecture: 8\nCPU part\t: 0xd08\n",
		"/sys/class/thermal/thermal_zone0/type":    "cpu-thermal\n",
		"/sys/class/thermal/thermal_zone0/temp":    "48312\n",
		"/sys/class/thermal/cooling_device0/type":  "gpio-fan\n",
		"/proc/meminfo":                            meminfo4G,
		"/proc/sys/kernel/osrelease":               "6.1.0-rpi7-rpi-v8\n",
		"/proc/sys/kernel/hostname":                "pi-gate-3\n",
		"/sys/devices/virtual/dmi/id/product_name": "not read: the device tree wins\n",
	}
}

func jetsonNano() map[string]string {
	return map[string]string{
		"/proc/device-tree/model":               "NVIDIA Jetson Nano Developer Kit\x00",
		"/proc/device-tree/compatible":          "nvidia,p3450-0000\x00nvidia,jetson-nano\x00nvidia,tegra210\x00",
		"/dev/nvhost-gpu":                       "",
		"/sys/class/thermal/thermal_zone0/type": "AO-therm\n",
		"/sys/class/thermal/thermal_zone0/temp": "40500\n",
		"/sys/class/thermal/thermal_zone1/type": "CPU-therm\n",
		"/sys/class/thermal/thermal_zone1/temp": "36500\n",
		"/sys/class/thermal/thermal_zone2/type": "GPU-therm\n",
		"/sys/class/thermal/thermal_zone2/temp": "35500\n",
		"/proc/meminfo":                         "MemTotal:        4059272 kB\nMemAvailable:    2999000 kB\n",
		"/proc/sys/kernel/osrelease":            "4.9.253-tegra\n",
		"/proc/sys/kernel/hostname":             "nano\n",
	}
}

func x86Box() map[string]string {
	return map[string]string{
		"/sys/devices/virtual/dmi/id/product_name": "NUC8i5BEH\n",
		"/sys/class/thermal/thermal_zone0/type":    "acpitz\n",
		"/sys/class/thermal/thermal_zone0/temp":    "27800\n",
		"/sys/class/thermal/thermal_zone1/type":    "INT3400 Thermal\n", // no temp: sensor reads fail
		"/sys/class/thermal/thermal_zone2/type":    "x86_pkg_temp\n",
		"/sys/class/thermal/thermal_zone2/temp":    "45000\n",
		"/sys/class/thermal/thermal_zone10/type":   "iwlwifi_1\n",
		"/sys/class/thermal/thermal_zone10/temp":   "-5000\n",
		"/sys/bus/usb/devices/2-1/idVendor":        "1a6e\n", // a Coral USB; accel's business
		"/sys/bus/usb/devices/2-1/idProduct":       "089a\n",
		"/proc/meminfo":                            "MemTotal:       16231484 kB\nMemAvailable:   12000000 kB\n",
		"/proc/sys/kernel/osrelease":               "6.1.0-18-amd64\n",
		"/proc/sys/kernel/hostname":                "edge-x86\n",
	}
}

func TestRead(t *testing.T) {
	tests := []struct {
		name  string
		files map[string]string
		want  Info
	}{
		{
			name:  "raspberry pi 4",
			files: raspberryPi4(),
			want: Info{
				Model:        "Raspberry Pi 4 Model B Rev 1.4",
				Serial:       "100000002a5b3c4d",
				Temperatures: []Temp{{Zone: "thermal_zone0", Type: "cpu-thermal", Celsius: 48.312}},
				Memory:       Memory{TotalBytes: 3884376 * 1024, AvailableBytes: 3378160 * 1024},
				Kernel:       "6.1.0-rpi7-rpi-v8",
				Hostname:     "pi-gate-3",
			},
		},
		{
			name:  "jetson nano",
			files: jetsonNano(),
			want: Info{
				Model: "NVIDIA Jetson Nano Developer Kit",
				Temperatures: []Temp{
					{Zone: "thermal_zone0", Type: "AO-therm", Celsius: 40.5},
					{Zone: "thermal_zone1", Type: "CPU-therm", Celsius: 36.5},
					{Zone: "thermal_zone2", Type: "GPU-therm", Celsius: 35.5},
				},
				Memory:   Memory{TotalBytes: 4059272 * 1024, AvailableBytes: 2999000 * 1024},
				Kernel:   "4.9.253-tegra",
				Hostname: "nano",
			},
		},
		{
			name:  "x86 box",
			files: x86Box(),
			want: Info{
				Model: "NUC8i5BEH",
				Temperatures: []Temp{
					{Zone: "thermal_zone0", Type: "acpitz", Celsius: 27.8},
					{Zone: "thermal_zone2", Type: "x86_pkg_temp", Celsius: 45},
					{Zone: "thermal_zone10", Type: "iwlwifi_1", Celsius: -5},
				},
				Memory:   Memory{TotalBytes: 16231484 * 1024, AvailableBytes: 12000000 * 1024},
				Kernel:   "6.1.0-18-amd64",
				Hostname: "edge-x86",
			},
		},
		{
			name:  "empty root",
			files: map[string]string{},
			want:  Info{Model: UnknownModel},
		},
		{
			name:  "blank device-tree model falls back to dmi",
			files: map[string]string{"/proc/device-tree/model": "\x00", "/sys/devices/virtual/dmi/id/product_name": "Standard PC (Q35 + ICH9, 2009)\n"},
			want:  Info{Model: "Standard PC (Q35 + ICH9, 2009)"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Read(tree(t, tt.files)); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Read() = %+v; want %+v", got, tt.want)
			}
		})
	}
}

func TestCPUTemp(t *testing.T) {
	tests := []struct {
		name   string
		temps  []Temp
		want   float64
		wantOK bool
	}{
		{"raspberry pi", []Temp{{Zone: "thermal_zone0", Type: "cpu-thermal", Celsius: 48.312}}, 48.312, true},
		{"jetson: CPU-therm, not the first zone", []Temp{{Type: "AO-therm", Celsius: 40.5}, {Type: "CPU-therm", Celsius: 36.5}, {Type: "GPU-therm", Celsius: 35.5}}, 36.5, true},
		{"x86 package", []Temp{{Type: "acpitz", Celsius: 27.8}, {Type: "x86_pkg_temp", Celsius: 45}}, 45, true},
		{"rockchip soc", []Temp{{Type: "gpu-thermal", Celsius: 50}, {Type: "soc-thermal", Celsius: 52}}, 52, true},
		{"nothing named: the first", []Temp{{Type: "acpitz", Celsius: 27.8}, {Type: "iwlwifi_1", Celsius: 30}}, 27.8, true},
		{"no zones", nil, 0, false},
	}
	for _, tt := range tests {
		got, ok := Info{Temperatures: tt.temps}.CPUTemp()
		if got != tt.want || ok != tt.wantOK {
			t.Errorf("%s: CPUTemp() = %v, %v; want %v, %v", tt.name, got, ok, tt.want, tt.wantOK)
		}
	}
}

func TestInfoJSON(t *testing.T) {
	b, err := json.Marshal(Read(tree(t, raspberryPi4())))
	if err != nil {
		t.Fatal(err)
	}
	want := `{"model":"Raspberry Pi 4 Model B Rev 1.4","serial":"100000002a5b3c4d",` +
		`"temperatures":[{"zone":"thermal_zone0","type":"cpu-thermal","celsius":48.312}],` +
		`"memory":{"total_bytes":3977601024,"available_bytes":3459235840},` +
		`"kernel":"6.1.0-rpi7-rpi-v8","hostname":"pi-gate-3"}`
	if got := string(b); got != want {
		t.Errorf("JSON = %s; want %s", got, want)
	}
}

const statusFile = "Name:\tedge-agent\nState:\tS (sleeping)\nPid:\t4242\nVmPeak:\t  812344 kB\nVmSize:\t  745000 kB\nVmHWM:\t   96512 kB\nVmRSS:\t   81920 kB\nThreads:\t12\n"

func TestProcessRSSAndPeak(t *testing.T) {
	root := tree(t, map[string]string{
		"/proc/4242/status": statusFile,
		"/proc/self/status": statusFile,
		"/proc/2/status":    "Name:\tkthreadd\nState:\tS (sleeping)\nPid:\t2\nThreads:\t1\n", // a kernel thread: no Vm lines
	})
	tests := []struct {
		name    string
		fn      func(string, int) (uint64, error)
		pid     int
		want    uint64
		wantErr error // matched with errors.Is; nil means success
	}{
		{"rss", ProcessRSS, 4242, 81920 * 1024, nil},
		{"peak", PeakRSS, 4242, 96512 * 1024, nil},
		{"rss of self", ProcessRSS, 0, 81920 * 1024, nil},
		{"rss of a kernel thread", ProcessRSS, 2, 0, ErrFieldMissing},
		{"peak of a kernel thread", PeakRSS, 2, 0, ErrFieldMissing},
		{"no such process", ProcessRSS, 99999, 0, fs.ErrNotExist},
	}
	for _, tt := range tests {
		got, err := tt.fn(root, tt.pid)
		if tt.wantErr == nil && err != nil {
			t.Errorf("%s: err = %v; want nil", tt.name, err)
		}
		if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
			t.Errorf("%s: err = %v; want %v", tt.name, err, tt.wantErr)
		}
		if got != tt.want {
			t.Errorf("%s: got %v; want %v", tt.name, got, tt.want)
		}
	}
	if _, err := ProcessRSS(root, -1); err == nil {
		t.Errorf("ProcessRSS(pid -1): err = nil; want an error")
	}
}

// TestRealSystem runs against this machine: it must not fail, whatever the machine has.
func TestRealSystem(t *testing.T) {
	for _, root := range []string{"", "/"} {
		info := Read(root)
		if info.Model == "" {
			t.Errorf("Read(%q).Model = %q; want a name or %q", root, info.Model, UnknownModel)
		}
		if runtime.GOOS == "linux" {
			if info.Memory.TotalBytes == 0 {
				t.Errorf("Read(%q).Memory.TotalBytes = 0; want > 0", root)
			}
			if info.Kernel == "" {
				t.Errorf("Read(%q).Kernel is empty; want the release", root)
			}
		}
		c, ok := info.CPUTemp()
		t.Logf("Read(%q) = %+v; CPUTemp() = %v, %v", root, info, c, ok)
	}
	if runtime.GOOS != "linux" {
		return
	}
	rss, err := ProcessRSS("/", os.Getpid())
	if err != nil || rss == 0 {
		t.Errorf("ProcessRSS(/, self) = %v, %v; want > 0, nil", rss, err)
	}
	peak, err := PeakRSS("", 0)
	if err != nil || peak == 0 {
		t.Errorf("PeakRSS(\"\", 0) = %v, %v; want > 0, nil", peak, err)
	}
}
