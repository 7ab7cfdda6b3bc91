package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// capturedSample is the part of a sample record (agent/capture.go) edgectl reads.
type capturedSample struct {
	Capture string `json:"capture"`
	N       int    `json:"n"`
	Of      int    `json:"of"`
	Model   string `json:"model"`
	Frame   *struct {
		PNG string `json:"png"`
	} `json:"frame"`
}

// cmdCapture: edgectl capture TARGET [--model M] [--count N] --out DIR
//
// It subscribes to the targets' samples, sends the capture command, and writes every sample
// of this capture to DIR/<device>/<model>-<capture>-<n>.json (and .png when the frame was an
// image) until each device that sent samples has sent all of them, or --timeout.
func cmdCapture(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("capture", flag.ContinueOnError)
	fs.SetOutput(stderr)
	o := addSendFlags(fs)
	model := fs.String("model", "", "model to capture (default: the device's only model)")
	count := fs.Int("count", 10, "samples per device (1..1000)")
	out := fs.String("out", "", "folder for the samples (required)")
	pos, err := parseMixed(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 0 {
		return usageError{errors.New("capture takes no arguments")}
	}
	if *out == "" {
		return usageError{errors.New("capture needs --out DIR: the folder the samples are written to")}
	}
	if *count < 1 || *count > 1000 {
		return usageError{fmt.Errorf("--count %d: ask for 1..1000 samples", *count)}
	}
	ctx, stop := interruptContext()
	defer stop()
	s, _, cl, err := o.dial(ctx)
	if err != nil {
		return err
	}
	defer cl.Close()
	dev := o.target.device
	if dev == "" {
		dev = "+"
	}

	o.id = newID()
	var mu sync.Mutex
	got := map[string]map[int]bool{} // device → sample numbers written
	want := map[string]int{}         // device → samples in its capture
	var writeErr error
	changed := make(chan struct{}, 1)
	err = cl.Subscribe(s.Prefix+"/"+dev+"/samples", func(_ string, p []byte) {
		recs, device, err := decodeBatch("samples", p)
		if err != nil || strings.ContainsAny(device, `/\`) || device == "" || device == "." || device == ".." {
			return
		}
		for _, raw := range recs {
			var r capturedSample
			if json.Unmarshal(raw, &r) != nil || r.Capture != o.id || r.N < 1 || r.N > r.Of {
				continue
			}
			err := writeSample(*out, device, r, raw)
			mu.Lock()
			if err != nil && writeErr == nil {
				writeErr = err
			}
			if got[device] == nil {
				got[device] = map[int]bool{}
			}
			got[device][r.N] = true
			want[device] = r.Of
			mu.Unlock()
		}
		select {
		case changed <- struct{}{}:
		default:
		}
	})
	if err != nil {
		return err
	}
	a, _ := json.Marshal(map[string]any{"model": *model, "count": *count})
	sendErr := o.send("capture", a, true, stdout, stderr)

	// The done replies come after the samples are stored, not sent: wait for the samples.
	complete := func() bool {
		mu.Lock()
		defer mu.Unlock()
		for d, n := range want {
			if len(got[d]) < n {
				return false
			}
		}
		return len(want) > 0
	}
	deadline := time.NewTimer(o.timeout)
	defer deadline.Stop()
	for !complete() {
		select {
		case <-changed:
		case <-deadline.C:
			return summarize(stdout, *out, got, want, writeErr, errors.Join(sendErr, fmt.Errorf("not every sample arrived within --timeout %v", o.timeout)))
		case <-ctx.Done():
			return summarize(stdout, *out, got, want, writeErr, errors.Join(sendErr, context.Cause(ctx)))
		}
	}
	return summarize(stdout, *out, got, want, writeErr, sendErr)
}

func summarize(w io.Writer, dir string, got map[string]map[int]bool, want map[string]int, writeErr, err error) error {
	total := 0
	for d, n := range want {
		total += len(got[d])
		fmt.Fprintf(w, "%s: %d of %d samples\n", d, len(got[d]), n)
	}
	fmt.Fprintf(w, "wrote %d samples from %d devices to %s\n", total, len(want), dir)
	if writeErr != nil {
		return fmt.Errorf("write samples: %w", writeErr)
	}
	return err
}

// writeSample writes the record, and its frame as a PNG when it has one.
func writeSample(dir, device string, r capturedSample, raw []byte) error {
	d := filepath.Join(dir, device)
	if err := os.MkdirAll(d, 0o755); err != nil {
		return err
	}
	name := fmt.Sprintf("%s-%s-%04d", safeName(r.Model), r.Capture, r.N)
	if err := os.WriteFile(filepath.Join(d, name+".json"), raw, 0o644); err != nil {
		return err
	}
	if r.Frame != nil && r.Frame.PNG != "" {
		b, err := base64.StdEncoding.DecodeString(r.Frame.PNG)
		if err != nil {
			return fmt.Errorf("sample %s: frame is not base64: %w", name, err)
		}
		return os.WriteFile(filepath.Join(d, name+".png"), b, 0o644)
	}
	return nil
}

// safeName keeps a model name usable as part of a file name.
func safeName(s string) string {
	return strings.Map(func(r rune) rune {
		if r == '/' || r == '\\' || r == 0 {
			return '_'
		}
		return r
	}, s)
}
