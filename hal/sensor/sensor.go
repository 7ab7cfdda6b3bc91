// Package sensor defines where frames come from: the Source interface, the Frame that moves
// forward into the pipeline, a registry of source kinds, and the bounded drop-oldest Queue
// every source writes into. Kinds live in sub-packages (synthetic, csv, file, command, http,
// mqtt, i2c) that register a factory from init; hal/sensor/all imports every kind.
//
// sensor imports nothing from agent/. A kind that needs a network client the agent owns
// (mqtt) declares the small interface it needs and gets it through Deps.
package sensor

import (
	"context"
	"errors"
	"fmt"
	"image"
	"time"

	"github.com/edge-agent/edge-agent/internal/registry"
)

// Frame is one reading from a source. Exactly one of Image, Values or Tensor is set.
type Frame struct {
	Source string    // source name from config
	Seq    uint64    // per-source sequence, from 1
	Time   time.Time // when it was read
	// Image is a decoded picture (PNG/JPEG); decoding is the source's cost.
	Image image.Image
	// Values are numbers (synthetic, csv, NDJSON, mqtt); Names label them when known.
	Values []float64
	Names  []string
	// Tensor is a raw tensor (.npy or raw bytes).
	Tensor *Raw
	// Ref points at the input for later retrieval (a file path, a URL); may be empty.
	Ref string
}

// Raw is a tensor as read from a file: dtype name ("float32", "uint8", ...), shape and
// little-endian element bytes.
type Raw struct {
	DType string
	Shape []int
	Data  []byte
}

// Emit hands a frame on. It never blocks: a full queue drops its oldest frame.
type Emit func(Frame)

// Source produces frames until ctx is cancelled (then it returns nil) or it fails (then it
// returns an error; the runner retries it with backoff). A Source must not emit after Run
// returns.
type Source interface {
	Run(ctx context.Context, emit Emit) error
}

// Spec is the configuration of one source, as written in YAML. Common fields first, then one
// block per kind; only the block for Kind is read.
type Spec struct {
	Name string `yaml:"name"`
	Kind string `yaml:"kind"`
	// Interval between frames (or Rate frames per second); kinds that are driven by their
	// input (file watch, command, mqtt) use it as a minimum spacing.
	Interval time.Duration `yaml:"interval,omitempty"`
	Rate     float64       `yaml:"rate,omitempty"`
	// Queue is the bound of frames waiting for the pipeline; older frames are dropped (counted).
	Queue int `yaml:"queue,omitempty"`

	Synthetic SyntheticSpec `yaml:"synthetic,omitempty"`
	CSV       CSVSpec       `yaml:"csv,omitempty"`
	File      FileSpec      `yaml:"file,omitempty"`
	Command   CommandSpec   `yaml:"command,omitempty"`
	HTTP      HTTPSpec      `yaml:"http,omitempty"`
	MQTT      MQTTSpec      `yaml:"mqtt,omitempty"`
	I2C       I2CSpec       `yaml:"i2c,omitempty"`
}

// SyntheticSpec: generated signals. Wave is sine | noise | walk.
type SyntheticSpec struct {
	Wave      string  `yaml:"wave,omitempty"`
	Channels  int     `yaml:"channels,omitempty"`  // values per frame (default 1)
	Amplitude float64 `yaml:"amplitude,omitempty"` // default 1
	Offset    float64 `yaml:"offset,omitempty"`
	Period    float64 `yaml:"period,omitempty"` // samples per sine period (default 64)
	Step      float64 `yaml:"step,omitempty"`   // random-walk step (default 0.1)
	Seed      int64   `yaml:"seed,omitempty"`
	// Phase emits the sine's phase x in [0, 2π) plus Offset as the value (the input of a model
	// of sin(x)) instead of sin(x).
	Phase bool `yaml:"phase,omitempty"`
	Count int  `yaml:"count,omitempty"` // stop after Count frames (0 = forever)
}

// CSVSpec: replay rows of a CSV file.
type CSVSpec struct {
	Path    string   `yaml:"path"`
	Columns []string `yaml:"columns,omitempty"` // columns to emit, in order (default: all numeric)
	Header  *bool    `yaml:"header,omitempty"`  // first row is a header (default true)
	Loop    bool     `yaml:"loop,omitempty"`    // start again at the end
}

// FileSpec: a file or a directory watched for new files (PNG, JPEG, .npy, .raw/.bin).
type FileSpec struct {
	Path    string `yaml:"path"`
	Pattern string `yaml:"pattern,omitempty"` // glob on the base name (default all supported)
	// Existing files are read first in name order, then new files as they appear.
	SkipExisting bool `yaml:"skip_existing,omitempty"`
	// Raw tensors (.raw/.bin) need their dtype and shape.
	DType string        `yaml:"dtype,omitempty"`
	Shape []int         `yaml:"shape,omitempty"`
	Loop  bool          `yaml:"loop,omitempty"` // re-read the files when all are done
	Poll  time.Duration `yaml:"poll,omitempty"` // directory scan period (default 500ms)
}

// CommandSpec: a program writing frames to stdout. Format is jpeg (a stream of JPEGs, as
// `rpicam-vid --codec mjpeg -o -` or ffmpeg -f mjpeg write), raw (fixed-size frames; give
// DType and Shape, as arecord or ffmpeg -f rawvideo write), or ndjson (one JSON array or
// object of numbers per line).
type CommandSpec struct {
	Argv   []string `yaml:"argv"`
	Format string   `yaml:"format"`
	DType  string   `yaml:"dtype,omitempty"`
	Shape  []int    `yaml:"shape,omitempty"`
	// MaxFrameBytes bounds one frame (default 16 MiB).
	MaxFrameBytes int `yaml:"max_frame_bytes,omitempty"`
}

// HTTPSpec: poll a JPEG/PNG snapshot URL (an IP camera).
type HTTPSpec struct {
	URL      string            `yaml:"url"`
	Headers  map[string]string `yaml:"headers,omitempty"`
	Timeout  time.Duration     `yaml:"timeout,omitempty"`   // default 5s
	MaxBytes int               `yaml:"max_bytes,omitempty"` // default 16 MiB
}

// MQTTSpec: JSON numeric arrays (or objects of numbers) from a topic of an existing bus.
type MQTTSpec struct {
	Broker   string `yaml:"broker"` // tcp://host:1883
	Topic    string `yaml:"topic"`
	ClientID string `yaml:"client_id,omitempty"`
	Username string `yaml:"username,omitempty"`
	Password string `yaml:"password,omitempty"`
	QoS      byte   `yaml:"qos,omitempty"`
}

// I2CSpec: a register read from an I2C device (Linux i2c-dev).
type I2CSpec struct {
	Bus      string `yaml:"bus"`      // /dev/i2c-1
	Address  uint16 `yaml:"address"`  // 7-bit address
	Register uint8  `yaml:"register"` // first register
	Length   int    `yaml:"length"`   // bytes to read
	// Scale turns each big-endian signed 16-bit word into a value: v = word * Scale.
	Scale float64 `yaml:"scale,omitempty"`
}

// Subscriber is what the mqtt kind needs from an MQTT client: the agent wires one from
// agent/link (the only paho importer). The handler gets each message payload; it must not
// block. Close disconnects; no handler call happens after Close returns.
type Subscriber interface {
	Subscribe(topic string, qos byte, handler func(payload []byte)) error
	Close() error
}

// Dialer connects a Subscriber for an MQTTSpec; name is the source name (for client ids).
type Dialer func(ctx context.Context, spec MQTTSpec, name string) (Subscriber, error)

// Deps are the things a kind may need from the agent.
type Deps struct {
	// MQTT dials an MQTT client for the mqtt kind; nil means the kind is unavailable.
	MQTT Dialer
	// Root prefixes device paths (/dev/i2c-1) so tests run against fixture trees.
	Root string
}

// Factory builds a Source from its spec.
type Factory func(spec Spec, deps Deps) (Source, error)

// Registry maps kind names to factories. Filled from init functions, read-only after.
type Registry struct{ *registry.Registry[Factory] }

// Kinds is the registry kinds add themselves to from init.
var Kinds = Registry{registry.New[Factory]("source kind")}

// ErrUnknownKind is returned for a kind no package registered.
var ErrUnknownKind = errors.New("unknown source kind")

// New builds a source.
func (r Registry) New(spec Spec, deps Deps) (Source, error) {
	f, ok := r.Lookup(spec.Kind)
	if !ok {
		return nil, fmt.Errorf("source %q: %w %q (known: %v)", spec.Name, ErrUnknownKind, spec.Kind, r.Names())
	}
	return f(spec, deps)
}

// Period is the spacing between frames the spec asks for (0 = as fast as input arrives).
func (s Spec) Period() time.Duration {
	if s.Interval > 0 {
		return s.Interval
	}
	if s.Rate > 0 {
		return time.Duration(float64(time.Second) / s.Rate)
	}
	return 0
}
