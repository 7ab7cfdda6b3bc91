package accel

import (
	"fmt"
	"path"
	"strings"
)

// USB identities of the Coral USB Accelerator.
const (
	usbUnflashedVendor, usbUnflashedProduct = "1a6e", "089a" // Global Unichip, before firmware
	usbReadyVendor, usbReadyProduct         = "18d1", "9302" // Google, firmware loaded
)

const usbDevices = "/sys/bus/usb/devices"

// NoteNoEdgeTPU is the note when neither a USB nor a PCIe Edge TPU is present.
const NoteNoEdgeTPU = "no Edge TPU: no USB device 1a6e:089a or 18d1:9302 under /sys/bus/usb/devices and no /dev/apex_*"

func (s sysfs) edgeTPUs(notes *[]string) []EdgeTPU {
	var out []EdgeTPU

	// USB: every device directory has idVendor and idProduct; interfaces ("1-1:1.0") do
	// not, and are skipped by the missing file.
	for _, dev := range s.List(usbDevices, "*") {
		vendor, ok := s.readValue(path.Join(dev, "idVendor"), notes)
		if !ok {
			continue
		}
		product, ok := s.readValue(path.Join(dev, "idProduct"), notes)
		if !ok {
			continue
		}
		vendor, product = strings.ToLower(vendor), strings.ToLower(product)
		t := EdgeTPU{Kind: "usb", Path: dev, VendorID: vendor, ProductID: product}
		switch {
		case vendor == usbUnflashedVendor && product == usbUnflashedProduct:
			t.State = StateUnflashed
			*notes = append(*notes, fmt.Sprintf(
				"Edge TPU at %s (%s:%s) has no firmware yet: the Edge TPU runtime (libedgetpu) loads it when the delegate opens, and the device then re-enumerates as %s:%s",
				dev, vendor, product, usbReadyVendor, usbReadyProduct))
		case vendor == usbReadyVendor && product == usbReadyProduct:
			t.State = StateReady
		default:
			continue
		}
		out = append(out, t)
	}

	// PCIe/M.2: the gasket/apex driver creates /dev/apex_N.
	for _, dev := range s.List("/dev", "apex_*") {
		name := path.Base(dev)
		if !isDigits(strings.TrimPrefix(name, "apex_")) || !s.Exists(dev) {
			continue
		}
		t := EdgeTPU{Kind: "pcie", Path: dev, State: StateReady}
		class := path.Join("/sys/class/apex", name, "device")
		if v, ok := s.readValue(path.Join(class, "vendor"), notes); ok {
			t.VendorID = strings.ToLower(strings.TrimPrefix(v, "0x"))
		}
		if v, ok := s.readValue(path.Join(class, "device"), notes); ok {
			t.ProductID = strings.ToLower(strings.TrimPrefix(v, "0x"))
		}
		out = append(out, t)
	}

	if len(out) == 0 {
		*notes = append(*notes, NoteNoEdgeTPU)
	}
	return out
}

func isDigits(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}
