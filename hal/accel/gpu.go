package accel

import (
	"bufio"
	"os"
	"path"
	"strings"
)

// Where a Jetson shows itself: the device-tree compatible list names a Tegra SoC, and the
// nvgpu driver creates one of these nodes (nvhost-gpu up to L4T 32 / Nano, TX2, Xavier;
// nvgpu/igpu0/ctrl on Orin).
const (
	dtCompatible = "/proc/device-tree/compatible"
	dtModel      = "/proc/device-tree/model"
)

// NoteNoGPU is the note when no GPU of either kind is present.
const NoteNoGPU = "no GPU: no NVIDIA Tegra (/proc/device-tree/compatible, /dev/nvhost-gpu, /dev/nvgpu/igpu0/ctrl) and no /dev/dri/renderD*"

func (s sysfs) gpus(notes *[]string) []GPU {
	var out []GPU
	jetson, isJetson := s.jetson(notes)
	if isJetson {
		out = append(out, jetson)
	}
	// On a Jetson the render nodes belong to the same Tegra GPU and display engine;
	// listing them again as an unusable "drm" GPU would only confuse.
	if !isJetson {
		for _, node := range s.List("/dev/dri", "renderD*") {
			if !s.Exists(node) {
				continue
			}
			out = append(out, GPU{
				Kind: GPUDRM,
				Name: s.drmDriver(path.Base(node)),
				Path: node,
				Note: NoteNoDRMDelegate,
			})
		}
	}
	if len(out) == 0 {
		*notes = append(*notes, NoteNoGPU)
	}
	return out
}

func (s sysfs) jetson(notes *[]string) (GPU, bool) {
	tegra := false
	if compat, ok := s.readValue(dtCompatible, notes); ok {
		for _, c := range strings.Split(compat, "\x00") {
			if strings.HasPrefix(strings.TrimSpace(c), "nvidia,tegra") {
				tegra = true
				break
			}
		}
	}
	node := ""
	for _, n := range []string{"/dev/nvhost-gpu", "/dev/nvgpu/igpu0/ctrl"} {
		if s.Exists(n) {
			node = n
			break
		}
	}
	if !tegra && node == "" {
		return GPU{}, false
	}
	g := GPU{Kind: GPUJetson, Name: "NVIDIA Tegra", Path: node, Usable: node != ""}
	if model, ok := s.readValue(dtModel, notes); ok && model != "" {
		g.Name = model
	}
	if node == "" {
		g.Path = dtCompatible
		g.Note = "NVIDIA Tegra SoC without /dev/nvhost-gpu or /dev/nvgpu/igpu0/ctrl: the nvgpu driver is not loaded or the device is not passed through"
	}
	return g, true
}

// drmDriver names the kernel driver behind a render node ("v3d", "i915"), from the
// device's uevent or, failing that, its driver link. "" when neither says.
func (s sysfs) drmDriver(node string) string {
	dev := path.Join("/sys/class/drm", node, "device")
	if f, err := os.Open(s.Abs(path.Join(dev, "uevent"))); err == nil {
		defer f.Close()
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if v, ok := strings.CutPrefix(sc.Text(), "DRIVER="); ok && v != "" {
				return v
			}
		}
	}
	if target, err := os.Readlink(s.Abs(path.Join(dev, "driver"))); err == nil {
		return path.Base(target)
	}
	return ""
}
