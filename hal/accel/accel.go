// Package accel detects the inference accelerators a board offers — Coral Edge TPUs (USB
// and PCIe), GPUs (NVIDIA Jetson, DRM render nodes) and the CPU's SIMD features — by reading
// sysfs, procfs and /dev under a root directory. Tests point the root at a fixture tree;
// the agent passes "/" (or "").
//
// accel only looks: it opens no device and loads no library, so it is safe to call at any
// time and needs no cgo. A missing file is a normal answer ("not here"), never an error;
// anything else worth knowing goes into Report.Notes as a sentence for the operator.
//
// accel imports nothing from agent/*; the agent and its engines read a Report.
package accel

import (
	"errors"
	"fmt"
	"io/fs"
	"strconv"
	"strings"

	"github.com/edge-agent/edge-agent/hal/internal/hostfs"
)

// Report is what Detect found.
type Report struct {
	EdgeTPU []EdgeTPU `json:"edgetpu,omitempty"`
	GPU     []GPU     `json:"gpu,omitempty"`
	CPU     CPU       `json:"cpu"`
	// Notes are human-readable reasons: why something was not found, what an operator
	// may need to do.
	Notes []string `json:"notes,omitempty"`
}

// EdgeTPU is one Coral Edge TPU.
type EdgeTPU struct {
	// Kind is "usb" or "pcie".
	Kind string `json:"kind"`
	// Path is the device as the board names it: the sysfs directory of a USB device
	// ("/sys/bus/usb/devices/2-1") or the PCIe device node ("/dev/apex_0"). It is
	// relative to the board's "/", not to the root Detect was given.
	Path string `json:"path"`
	// VendorID and ProductID are lower-case hex without "0x" ("1a6e", "089a"). For PCIe
	// they are filled only when /sys/class/apex/apex_N/device says.
	VendorID  string `json:"vendor_id,omitempty"`
	ProductID string `json:"product_id,omitempty"`
	// State is StateUnflashed or StateReady.
	State string `json:"state"`
}

// Edge TPU states.
const (
	// StateUnflashed is a Coral USB Accelerator before the Edge TPU runtime has loaded its
	// firmware (USB 1a6e:089a). The runtime flashes it on first use; it then re-enumerates
	// as 18d1:9302.
	StateUnflashed = "unflashed"
	// StateReady is a Coral USB with firmware (18d1:9302) or a PCIe Coral whose apex
	// driver created /dev/apex_N.
	StateReady = "ready"
)

// GPU is one graphics processor.
type GPU struct {
	// Kind is GPUJetson or GPUDRM.
	Kind string `json:"kind"`
	// Name is the board model for a Jetson ("NVIDIA Jetson Nano Developer Kit") or the
	// kernel driver for a DRM render node ("v3d", "i915").
	Name string `json:"name,omitempty"`
	// Path is the device node ("/dev/nvhost-gpu", "/dev/dri/renderD128"), relative to
	// the board's "/".
	Path string `json:"path"`
	// Usable says whether this build can run TensorFlow Lite on it; Note says why not.
	Usable bool   `json:"usable"`
	Note   string `json:"note,omitempty"`
}

// GPU kinds.
const (
	GPUJetson = "jetson"
	GPUDRM    = "drm"
)

// NoteNoDRMDelegate is the GPU.Note of a DRM render node (Raspberry Pi V3D, Intel i915,
// ...): the GPU is there but nothing in this build can run a model on it.
const NoteNoDRMDelegate = "no TensorFlow Lite GPU delegate for this GPU in this build"

// CPU describes the processor as /proc/cpuinfo sees it.
type CPU struct {
	// Arch is the CPU's architecture in GOARCH spelling ("amd64", "386", "arm64", "arm"),
	// from /proc/cpuinfo, else runtime.GOARCH. The running binary may be narrower than
	// the CPU (an arm binary on an arm64 kernel); runtime.GOARCH says what it is.
	Arch string `json:"arch"`
	// Features is the "flags" (x86) or "Features" (ARM) list of the first processor.
	Features []string `json:"features,omitempty"`
	NEON     bool     `json:"neon"`
	AVX2     bool     `json:"avx2"`
	Cores    int      `json:"cores"`
	// ModelName is "model name" on x86; on ARM the core's name when the part is known
	// ("ARM Cortex-A72"), else "model name" when present.
	ModelName string `json:"model_name,omitempty"`
}

// HasEdgeTPU reports whether at least one Edge TPU, flashed or not, was found.
func (r Report) HasEdgeTPU() bool { return len(r.EdgeTPU) > 0 }

// Summary is one line for logs, such as
//
//	cpu=arm64 cores=4 model="ARM Cortex-A72" simd=neon edgetpu=usb:unflashed gpu=drm:v3d(not-usable)
func (r Report) Summary() string {
	var b strings.Builder
	fmt.Fprintf(&b, "cpu=%s cores=%d", r.CPU.Arch, r.CPU.Cores)
	if r.CPU.ModelName != "" {
		fmt.Fprintf(&b, " model=%q", r.CPU.ModelName)
	}
	var simd []string
	if r.CPU.NEON {
		simd = append(simd, "neon")
	}
	if r.CPU.AVX2 {
		simd = append(simd, "avx2")
	}
	b.WriteString(" simd=" + joinOrNone(simd))

	var tpus []string
	for _, t := range r.EdgeTPU {
		tpus = append(tpus, t.Kind+":"+t.State)
	}
	b.WriteString(" edgetpu=" + joinOrNone(tpus))

	var gpus []string
	for _, g := range r.GPU {
		s := g.Kind
		if g.Name != "" {
			name := g.Name
			if strings.ContainsAny(name, " \"=") {
				name = strconv.Quote(name)
			}
			s += ":" + name
		}
		if !g.Usable {
			s += "(not-usable)"
		}
		gpus = append(gpus, s)
	}
	b.WriteString(" gpu=" + joinOrNone(gpus))
	return b.String()
}

func joinOrNone(s []string) string {
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, ",")
}

// Detect looks for accelerators under root. root "" or "/" is the running system; tests
// pass a directory laid out like one. Detect never fails: what it cannot read it leaves
// out, with a note when the reason is not simply "absent".
func Detect(root string) Report {
	fsys := sysfs{hostfs.New(root)}
	var r Report
	r.EdgeTPU = fsys.edgeTPUs(&r.Notes)
	r.GPU = fsys.gpus(&r.Notes)
	r.CPU = fsys.cpu(&r.Notes)
	return r
}

// sysfs adds accel's readers to the host filesystem.
type sysfs struct{ hostfs.FS }

// readValue reads a one-line attribute, trimming whitespace and device-tree NULs. ok is
// false when the file is absent; other failures become a note.
func (s sysfs) readValue(p string, notes *[]string) (string, bool) {
	v, err := s.Value(p)
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			*notes = append(*notes, fmt.Sprintf("cannot read %s: %v", p, unwrapPath(err)))
		}
		return "", false
	}
	return v, true
}

// unwrapPath drops the *fs.PathError wrapper, whose path is the fixture's, not the board's.
func unwrapPath(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}
