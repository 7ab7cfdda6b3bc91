// Package result defines the Result record that flows from the pipeline to the sinks (stdout,
// the outbox, the status page). It is a plain data package: it imports nothing of agent/ or
// hal/, so every stage can share the type without importing another stage.
package result

import "time"

// Schema is the value of Result.Schema for this version of the record (docs/results.md).
const Schema = "edge-agent/result/v1"

// Result is one inference on one frame.
type Result struct {
	Schema  string `json:"schema"`
	Device  string `json:"device"`
	Model   string `json:"model"`
	Version string `json:"version"`
	Variant string `json:"variant,omitempty"`
	// Seq is assigned by the sink that stores the result (per device, increasing). It is
	// omitted while zero: the outbox stores records without it and the link inserts it.
	Seq uint64 `json:"seq,omitempty"`
	// Epoch is the outbox's numbering epoch when not 0 (a numbering that started again with
	// no record of the one before): (device, epoch, seq) is unique.
	Epoch     uint64    `json:"epoch,omitempty"`
	TS        time.Time `json:"ts"`
	LatencyUS int64     `json:"latency_us"`
	Source    string    `json:"source,omitempty"`
	FrameSeq  uint64    `json:"frame_seq,omitempty"`

	Outputs    [][]float64        `json:"outputs,omitempty"`
	Classes    []Class            `json:"classes,omitempty"`
	Detections []Detection        `json:"detections,omitempty"`
	Values     map[string]float64 `json:"values,omitempty"`
	// Segmentation is the mask of a segmentation model.
	Segmentation *Segmentation `json:"segmentation,omitempty"`
	// Embedding is the vector of an embedding model, and its nearest gallery entries.
	Embedding *Embedding `json:"embedding,omitempty"`
	// Poses of a keypoints model.
	Poses []Pose `json:"poses,omitempty"`

	InputRef string `json:"input_ref,omitempty"`
}

// Class is one scored class of a classification.
type Class struct {
	Index int     `json:"index"`
	Label string  `json:"label,omitempty"`
	Score float64 `json:"score"`
}

// Detection is one detected object; Box coordinates are fractions of the image in [0,1].
type Detection struct {
	Class int     `json:"class"`
	Label string  `json:"label,omitempty"`
	Score float64 `json:"score"`
	Box   Box     `json:"box"`
	// Keypoints of the object (a face's eyes, nose, mouth, ears), relative to the picture.
	Keypoints []Point `json:"keypoints,omitempty"`
}

// Segmentation is a per-pixel class mask: Mask is a PNG (8-bit grey, each pixel's value its
// class index), base64 in JSON; Areas give each class present, largest first.
type Segmentation struct {
	Width  int         `json:"width"`
	Height int         `json:"height"`
	Mask   []byte      `json:"mask_png"`
	Areas  []ClassArea `json:"areas"`
}

// Pose is one body's keypoints, relative to the picture, with the pose's score (the mean of
// its keypoints' when the model gives none) and, from multi-pose models, its box.
type Pose struct {
	Score     float64    `json:"score"`
	Box       *Box       `json:"box,omitempty"`
	Keypoints []Keypoint `json:"keypoints"`
}

// Keypoint is a named point of a pose with its score.
type Keypoint struct {
	Name  string  `json:"name,omitempty"`
	X     float64 `json:"x"`
	Y     float64 `json:"y"`
	Score float64 `json:"score"`
}

// Embedding is a model's vector and the gallery entries nearest to it.
type Embedding struct {
	Dim     int       `json:"dim"`
	Norm    float64   `json:"norm"` // the L2 norm before normalisation
	Vector  []float64 `json:"vector,omitempty"`
	Matches []Match   `json:"matches,omitempty"`
}

// Match is a gallery entry and its cosine similarity to the vector.
type Match struct {
	Label      string  `json:"label"`
	Similarity float64 `json:"similarity"`
}

// ClassArea is the share of the picture one class covers.
type ClassArea struct {
	Index    int     `json:"index"`
	Label    string  `json:"label,omitempty"`
	Pixels   int     `json:"pixels"`
	Fraction float64 `json:"fraction"`
}

// Point is a position relative to the picture (0..1), x from the left, y from the top.
type Point struct {
	X float64 `json:"x"`
	Y float64 `json:"y"`
}

// Box is ymin, xmin, ymax, xmax as TFLite_Detection_PostProcess orders them.
type Box struct {
	YMin float64 `json:"ymin"`
	XMin float64 `json:"xmin"`
	YMax float64 `json:"ymax"`
	XMax float64 `json:"xmax"`
}

// EventSchema is the value of Event.Schema (docs/mqtt.md).
const EventSchema = "edge-agent/event/v1"

// Event is something that happened on the device that the fleet should hear about: a health
// condition set or cleared, a model version installed or rolled back, results dropped by the
// outbox's caps. Events travel through the outbox like results, on their own stream.
type Event struct {
	Schema string `json:"schema"`
	Seq    uint64 `json:"seq,omitempty"`
	// Epoch is the outbox's numbering epoch when not 0 (a numbering that started again with
	// no record of the one before): (device, epoch, seq) is unique.
	Epoch     uint64    `json:"epoch,omitempty"`
	Device    string    `json:"device"`
	TS        time.Time `json:"ts"`
	Type      string    `json:"type"`     // health.set, health.cleared, deploy.<type>, outbox.dropped, agent.started, agent.stopping
	Severity  string    `json:"severity"` // info | warning | error
	Component string    `json:"component,omitempty"`
	Code      string    `json:"code,omitempty"`
	Model     string    `json:"model,omitempty"`
	Version   string    `json:"version,omitempty"`
	Message   string    `json:"message"`
	// Data carries type-specific figures (counts, caps) as numbers or strings.
	Data map[string]any `json:"data,omitempty"`
}
