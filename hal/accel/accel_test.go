package accel

import (
	"encoding/json"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"testing"
)

func TestDetectBoards(t *testing.T) {
	tests := []struct {
		name      string
		files     map[string]string
		edgeTPU   []EdgeTPU
		gpu       []GPU
		arch      string
		cores     int
		neon      bool
		avx2      bool
		modelName string
		notes     []string // each must be among Report.Notes
	}{
		{
			name:      "raspberry pi 4",
			files:     raspberryPi4(),
			gpu:       []GPU{{Kind: GPUDRM, Name: "v3d", Path: "/dev/dri/renderD128", Usable: false, Note: NoteNoDRMDelegate}},
			arch:      "arm64",
			cores:     4,
			neon:      true,
			modelName: "ARM Cortex-A72",
			notes:     []string{NoteNoEdgeTPU},
		},
		{
			name:      "raspberry pi 3 with a 32-bit kernel",
			files:     raspberryPi3Armv7(),
			arch:      "arm",
			cores:     4,
			neon:      true,
			modelName: "ARM Cortex-A53",
			notes:     []string{NoteNoEdgeTPU, NoteNoGPU},
		},
		{
			name:      "jetson nano",
			files:     jetsonNano(),
			gpu:       []GPU{{Kind: GPUJetson, Name: "NVIDIA Jetson Nano Developer Kit", Path: "/dev/nvhost-gpu", Usable: true}},
			arch:      "arm64",
			cores:     4,
			neon:      true,
			modelName: "ARM Cortex-A57",
			notes:     []string{NoteNoEdgeTPU},
		},
		{
			name:      "x86 with an unflashed coral usb",
			files:     x86CoralUSB(),
			edgeTPU:   []EdgeTPU{{Kind: "usb", Path: "/sys/bus/usb/devices/2-1", VendorID: "1a6e", ProductID: "089a", State: StateUnflashed}},
			gpu:       []GPU{{Kind: GPUDRM, Name: "i915", Path: "/dev/dri/renderD128", Note: NoteNoDRMDelegate}},
			arch:      "amd64",
			cores:     4,
			avx2:      true,
			modelName: "Intel(R) Core(TM) i5-8500T CPU @ 2.10GHz",
			notes: []string{"Edge TPU at /sys/bus/usb/devices/2-1 (1a6e:089a) has no firmware yet: " +
				"the Edge TPU runtime (libedgetpu) loads it when the delegate opens, and the device then re-enumerates as 18d1:9302"},
		},
		{
			name:      "x86 with a pcie coral",
			files:     x86CoralPCIe(),
			edgeTPU:   []EdgeTPU{{Kind: "pcie", Path: "/dev/apex_0", VendorID: "1ac1", ProductID: "089a", State: StateReady}},
			arch:      "amd64",
			cores:     4,
			modelName: "Intel(R) Celeron(R) J4125 CPU @ 2.00GHz",
			notes:     []string{NoteNoGPU},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := Detect(tree(t, tt.files))
			if !reflect.DeepEqual(r.EdgeTPU, tt.edgeTPU) {
				t.Errorf("EdgeTPU = %+v; want %+v", r.EdgeTPU, tt.edgeTPU)
			}
			if got, want := r.HasEdgeTPU(), len(tt.edgeTPU) > 0; got != want {
				t.Errorf("HasEdgeTPU() = %v; want %v", got, want)
			}
			if !reflect.DeepEqual(r.GPU, tt.gpu) {
				t.Errorf("GPU = %+v; want %+v", r.GPU, tt.gpu)
			}
			c := r.CPU
			if c.Arch != tt.arch {
				t.Errorf("CPU.Arch = %q; want %q", c.Arch, tt.arch)
			}
			if c.Cores != tt.cores {
				t.Errorf("CPU.Cores = %v; want %v", c.Cores, tt.cores)
			}
			if c.NEON != tt.neon {
				t.Errorf("CPU.NEON = %v; want %v", c.NEON, tt.neon)
			}
			if c.AVX2 != tt.avx2 {
				t.Errorf("CPU.AVX2 = %v; want %v", c.AVX2, tt.avx2)
			}
			if c.ModelName != tt.modelName {
				t.Errorf("CPU.ModelName = %q; want %q", c.ModelName, tt.modelName)
			}
			if len(c.Features) == 0 {
				t.Errorf("CPU.Features is empty; want the cpuinfo list")
			}
			for _, n := range tt.notes {
				if !slices.Contains(r.Notes, n) {
					t.Errorf("Notes = %q; want it to contain %q", r.Notes, n)
				}
			}
		})
	}
}

func TestEdgeTPUStates(t *testing.T) {
	tests := []struct {
		vendor, product string
		want            []EdgeTPU
	}{
		{"1a6e\n", "089a\n", []EdgeTPU{{Kind: "usb", Path: "/sys/bus/usb/devices/3-2", VendorID: "1a6e", ProductID: "089a", State: StateUnflashed}}},
		{"18d1\n", "9302\n", []EdgeTPU{{Kind: "usb", Path: "/sys/bus/usb/devices/3-2", VendorID: "18d1", ProductID: "9302", State: StateReady}}},
		{"18D1\n", "9302\n", []EdgeTPU{{Kind: "usb", Path: "/sys/bus/usb/devices/3-2", VendorID: "18d1", ProductID: "9302", State: StateReady}}},
		{"18d1\n", "4ee7\n", nil}, // a Pixel phone, not a Coral
		{"1a6e\n", "", nil},       // half a device
	}
	for _, tt := range tests {
		files := map[string]string{"/sys/bus/usb/devices/3-2/idVendor": tt.vendor}
		if tt.product != "" {
			files["/sys/bus/usb/devices/3-2/idProduct"] = tt.product
		}
		r := Detect(tree(t, files))
		if !reflect.DeepEqual(r.EdgeTPU, tt.want) {
			t.Errorf("%q:%q: EdgeTPU = %+v; want %+v", tt.vendor, tt.product, r.EdgeTPU, tt.want)
		}
	}
}

func TestTegraWithoutGPUDriver(t *testing.T) {
	r := Detect(tree(t, map[string]string{
		"/proc/device-tree/model":      "NVIDIA Jetson Nano Developer Kit\x00",
		"/proc/device-tree/compatible": "nvidia,p3450-0000\x00nvidia,jetson-nano\x00nvidia,tegra210\x00",
	}))
	if len(r.GPU) != 1 {
		t.Fatalf("GPU = %+v; want one jetson", r.GPU)
	}
	g := r.GPU[0]
	if g.Kind != GPUJetson || g.Usable || g.Path != "/proc/device-tree/compatible" || g.Note == "" {
		t.Errorf("GPU = %+v; want an unusable jetson at /proc/device-tree/compatible with a note", g)
	}
}

func TestOrinNodeWithoutDeviceTree(t *testing.T) {
	r := Detect(tree(t, map[string]string{"/dev/nvgpu/igpu0/ctrl": ""}))
	want := []GPU{{Kind: GPUJetson, Name: "NVIDIA Tegra", Path: "/dev/nvgpu/igpu0/ctrl", Usable: true}}
	if !reflect.DeepEqual(r.GPU, want) {
		t.Errorf("GPU = %+v; want %+v", r.GPU, want)
	}
}

func TestEmptyRootFallsBackToRuntime(t *testing.T) {
	r := Detect(t.TempDir())
	if r.CPU.Arch != runtime.GOARCH {
		t.Errorf("CPU.Arch = %q; want %q", r.CPU.Arch, runtime.GOARCH)
	}
	if r.CPU.Cores != runtime.NumCPU() {
		t.Errorf("CPU.Cores = %v; want %v", r.CPU.Cores, runtime.NumCPU())
	}
	if r.HasEdgeTPU() || len(r.GPU) != 0 {
		t.Errorf("EdgeTPU = %+v, GPU = %+v; want none", r.EdgeTPU, r.GPU)
	}
	for _, n := range []string{NoteNoEdgeTPU, NoteNoGPU} {
		if !slices.Contains(r.Notes, n) {
			t.Errorf("Notes = %q; want it to contain %q", r.Notes, n)
		}
	}
}

func TestCoresFromSysfsWhenCpuinfoHasNoProcessorLines(t *testing.T) {
	r := Detect(tree(t, map[string]string{
		"/proc/cpuinfo":                  "Features\t: fp asimd\nCPU architecture: 8\n",
		"/sys/devices/system/cpu/online": "0-3,6,8-9\n",
	}))
	if got, want := r.CPU.Cores, 7; got != want {
		t.Errorf("CPU.Cores = %v; want %v", got, want)
	}
}

func TestSummary(t *testing.T) {
	tests := []struct {
		files map[string]string
		want  string
	}{
		{raspberryPi4(), `cpu=arm64 cores=4 model="ARM Cortex-A72" simd=neon edgetpu=none gpu=drm:v3d(not-usable)`},
		{jetsonNano(), `cpu=arm64 cores=4 model="ARM Cortex-A57" simd=neon edgetpu=none gpu=jetson:"NVIDIA Jetson Nano Developer Kit"`},
		{x86CoralUSB(), `cpu=amd64 cores=4 model="Intel(R) Core(TM) i5-8500T CPU @ 2.10GHz" simd=avx2 edgetpu=usb:unflashed gpu=drm:i915(not-usable)`},
		{x86CoralPCIe(), `cpu=amd64 cores=4 model="Intel(R) Celeron(R) J4125 CPU @ 2.00GHz" simd=none edgetpu=pcie:ready gpu=none`},
	}
	for _, tt := range tests {
		if got := Detect(tree(t, tt.files)).Summary(); got != tt.want {
			t.Errorf("Summary() = %s; want %s", got, tt.want)
		}
	}
}

func TestReportJSON(t *testing.T) {
	b, err := json.Marshal(Detect(tree(t, x86CoralUSB())))
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]json.RawMessage
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"edgetpu", "gpu", "cpu", "notes"} {
		if _, ok := got[k]; !ok {
			t.Errorf("JSON keys = %v; want %q in %s", keys(got), k, b)
		}
	}
	if !strings.Contains(string(b), `"state":"unflashed"`) || !strings.Contains(string(b), `"avx2":true`) {
		t.Errorf("JSON = %s; want state unflashed and avx2 true", b)
	}

	b, err = json.Marshal(Report{CPU: CPU{Arch: "arm64", Cores: 1}})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := string(b), `{"cpu":{"arch":"arm64","neon":false,"avx2":false,"cores":1}}`; got != want {
		t.Errorf("JSON = %s; want %s", got, want)
	}
}

func keys(m map[string]json.RawMessage) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// TestRealSystem runs against this machine: it must not fail, whatever the machine has.
func TestRealSystem(t *testing.T) {
	for _, root := range []string{"", "/"} {
		r := Detect(root)
		if r.CPU.Cores < 1 {
			t.Errorf("Detect(%q).CPU.Cores = %v; want >= 1", root, r.CPU.Cores)
		}
		if runtime.GOARCH == "amd64" && r.CPU.Arch != "amd64" {
			t.Errorf("Detect(%q).CPU.Arch = %q; want amd64", root, r.CPU.Arch)
		}
		t.Logf("Detect(%q): %s; notes %q", root, r.Summary(), r.Notes)
	}
}
