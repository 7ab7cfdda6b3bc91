package link

import "testing"

// seq (and epoch, when not 0) go in as the first members of each record, whatever spacing
// the stored object has; anything but one JSON object is refused.
func TestSpliceSeq(t *testing.T) {
	for _, c := range []struct {
		seq, epoch uint64
		in, want   string
	}{
		{7, 0, `{}`, `{"seq":7}`},
		{7, 0, ` { "a" : 1 } `, `{"seq":7,"a" : 1 }`},
		{7, 9007199254740991, `{"a":1}`, `{"seq":7,"epoch":9007199254740991,"a":1}`},
		{1, 42, `{}`, `{"seq":1,"epoch":42}`},
	} {
		got, ok := spliceSeq(c.seq, c.epoch, []byte(c.in))
		if !ok || string(got) != c.want {
			t.Errorf("spliceSeq(%d, %d, %s) = %s, %v; want %s", c.seq, c.epoch, c.in, got, ok, c.want)
		}
	}
	for _, in := range []string{`[1]`, `not json`, `{"a":`, ``} {
		if _, ok := spliceSeq(1, 2, []byte(in)); ok {
			t.Errorf("spliceSeq(%q) accepted", in)
		}
	}
}
