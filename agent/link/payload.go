package link

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"slices"
	"strconv"
	"time"
)

// StatusSchema is the schema of the retained status message and of the last will.
const StatusSchema = "edge-agent/status/v1"

// Status states on the wire.
const (
	wireOnline  = "online"
	wireOffline = "offline"
)

// statusBase is the part of every status message the link owns; Options.Status adds fields.
type statusBase struct {
	Schema  string    `json:"schema"`
	Device  string    `json:"device"`
	State   string    `json:"state"`
	Session string    `json:"session"`
	TS      time.Time `json:"ts"`
}

// statusPayload builds a status message. extra (from Options.Status) is merged at the top
// level in key order; keys the link owns are not overridden. A malformed extra is reported
// and left out rather than withholding the status.
func statusPayload(base statusBase, extra json.RawMessage) ([]byte, error) {
	b, err := json.Marshal(base)
	if err != nil || len(extra) == 0 {
		return b, err
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(extra, &fields); err != nil {
		return b, err
	}
	keys := make([]string, 0, len(fields))
	for k := range fields {
		switch k {
		case "schema", "device", "state", "session", "ts":
		default:
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	out := bytes.NewBuffer(b[:len(b)-1]) // drop the closing brace
	for _, k := range keys {
		kb, _ := json.Marshal(k)
		out.WriteByte(',')
		out.Write(kb)
		out.WriteByte(':')
		if err := json.Compact(out, fields[k]); err != nil {
			return b, err
		}
	}
	out.WriteByte('}')
	return out.Bytes(), nil
}

// record is one queued record ready for an envelope: the stored JSON object with "seq"
// spliced in as its first member, or nil data when the stored bytes are not a JSON object.
type record struct {
	seq  uint64
	size int // stored size, counted against BatchBytes
	data []byte
}

// spliceSeq copies a stored JSON object with "seq":seq (and "epoch":epoch when not 0)
// inserted as its first members. The outbox stores results without them because the number
// is only known once stored. ok is false when data is not one JSON object.
func spliceSeq(seq, epoch uint64, data []byte) ([]byte, bool) {
	data = bytes.TrimSpace(data)
	if len(data) < 2 || data[0] != '{' || !json.Valid(data) {
		return nil, false
	}
	rest := bytes.TrimSpace(data[1:])
	out := make([]byte, 0, len(data)+48)
	out = append(out, `{"seq":`...)
	out = strconv.AppendUint(out, seq, 10)
	if epoch != 0 {
		out = append(out, `,"epoch":`...)
		out = strconv.AppendUint(out, epoch, 10)
	}
	if rest[0] != '}' {
		out = append(out, ',')
	}
	return append(out, rest...), true
}

// envelope writes one stream message:
//
//	{"schema":…,"device":…,"first_seq":N,"last_seq":M,"count":k,"sent_at":…,"<stream>":[records]}
//
// and gzips it when zw is not nil.
type envelope struct {
	schema, device, key []byte // JSON-encoded once per stream
	buf                 bytes.Buffer
	zbuf                bytes.Buffer
	zw                  *gzip.Writer
}

func newEnvelope(schema, device, name string, gz bool) *envelope {
	enc := func(s string) []byte { b, _ := json.Marshal(s); return b }
	e := &envelope{schema: enc(schema), device: enc(device), key: enc(name)}
	if gz {
		e.zw = gzip.NewWriter(&e.zbuf)
	}
	return e
}

// build returns a new payload for recs (all well-formed).
func (e *envelope) build(recs []record, sentAt time.Time) []byte {
	b := &e.buf
	b.Reset()
	b.WriteString(`{"schema":`)
	b.Write(e.schema)
	b.WriteString(`,"device":`)
	b.Write(e.device)
	b.WriteString(`,"first_seq":`)
	b.WriteString(strconv.FormatUint(recs[0].seq, 10))
	b.WriteString(`,"last_seq":`)
	b.WriteString(strconv.FormatUint(recs[len(recs)-1].seq, 10))
	b.WriteString(`,"count":`)
	b.WriteString(strconv.Itoa(len(recs)))
	b.WriteString(`,"sent_at":"`)
	b.WriteString(sentAt.UTC().Format(time.RFC3339Nano))
	b.WriteString(`",`)
	b.Write(e.key)
	b.WriteString(`:[`)
	for i, r := range recs {
		if i > 0 {
			b.WriteByte(',')
		}
		b.Write(r.data)
	}
	b.WriteString(`]}`)
	if e.zw == nil {
		return bytes.Clone(b.Bytes())
	}
	e.zbuf.Reset()
	e.zw.Reset(&e.zbuf)
	e.zw.Write(b.Bytes()) // writes to a bytes.Buffer do not fail
	e.zw.Close()
	return bytes.Clone(e.zbuf.Bytes())
}
