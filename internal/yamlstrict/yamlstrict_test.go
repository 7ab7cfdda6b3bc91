package yamlstrict

import (
	"strings"
	"testing"
	"time"

	"github.com/edge-agent/edge-agent/models/spec"
)

// A model spec file as a newcomer writes it: one number for a per-channel list is a list of
// one; an unknown key and a wrong value are named by their path and line, never by a Go type,
// and both are reported at once.
func TestSpecFile(t *testing.T) {
	var s spec.Model
	if err := Decode([]byte("input:\n  kind: image\n  image: {mean: 127.5, std: [127.5]}\n"), &s); err != nil {
		t.Fatal(err)
	}
	if len(s.Input.Image.Mean) != 1 || s.Input.Image.Mean[0] != 127.5 || s.Input.Image.Std[0] != 127.5 {
		t.Errorf("mean %v std %v; want [127.5] each", s.Input.Image.Mean, s.Input.Image.Std)
	}
	var bad spec.Model
	err := Decode([]byte("input:\n  image: {colour: rgb}\noutput:\n  classification: {top_k: many}\n"), &bad)
	msg := ""
	if err != nil {
		msg = err.Error()
	}
	for _, want := range []string{"input.image.colour (line 2): unknown key", `output.classification.top_k (line 4): "many" is not a whole number`} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q; want it to say %q", msg, want)
		}
	}
	if strings.Contains(msg, "int") || strings.Contains(msg, "spec.") || strings.Contains(msg, "unmarshal") {
		t.Errorf("error %q names Go types", msg)
	}
	var stamped struct {
		Expires time.Time `yaml:"expires"`
	}
	if err := Decode([]byte("expires: 2027-01-03T03:57:47Z\n"), &stamped); err != nil || stamped.Expires.Year() != 2027 {
		t.Errorf("a time: %v, %v", stamped.Expires, err)
	}
	if err := Decode([]byte("expires: someday\n"), &stamped); err == nil || !strings.Contains(err.Error(), "expires (line 1)") {
		t.Errorf("a bad time: %v; want an error naming expires", err)
	}
	var empty spec.Model
	if err := Decode([]byte("# nothing yet\n"), &empty); err != nil {
		t.Errorf("a comment-only spec: %v", err)
	}
}
