// Package spec is the schema of a model's pre- and post-processing: how a frame becomes input
// tensors and how output tensors become classes, detections or values. The same schema is
// written in the agent's YAML config and (later) in a bundle's manifest.json, so it lives in
// models/ and imports nothing from agent/ or hal/. It holds data and validation only.
package spec

import (
	"errors"
	"fmt"
	"strings"
)

// Model is the processing spec of one model.
type Model struct {
	Input  Input  `yaml:"input,omitempty" json:"input,omitempty"`
	Output Output `yaml:"output,omitempty" json:"output,omitempty"`
}

// Input kinds.
const (
	InputImage  = "image"  // a decoded picture, resized and normalised
	InputVector = "vector" // named or positional numbers (sensor readings, CSV rows)
	InputTensor = "tensor" // a raw tensor (.npy, raw bytes) copied as is
)

// Input says how to turn a frame into the model's input tensor 0.
type Input struct {
	// Kind is image, vector or tensor; "" picks one from the frame.
	Kind   string `yaml:"kind,omitempty" json:"kind,omitempty"`
	Image  Image  `yaml:"image,omitempty" json:"image,omitempty"`
	Vector Vector `yaml:"vector,omitempty" json:"vector,omitempty"`
}

// Resize methods.
const (
	ResizeNearest  = "nearest"
	ResizeBilinear = "bilinear"
	ResizeArea     = "area"
)

// Image preprocessing: resize to the tensor's H×W, pick colour, normalise, quantise.
// The value fed for a pixel channel p (0..255) is (p - Mean[c]) / Std[c]; when the input
// tensor is quantised it is then mapped to q = round(value/scale + zero_point).
type Image struct {
	Resize string `yaml:"resize,omitempty" json:"resize,omitempty"` // nearest | bilinear | area (default bilinear)
	Color  string `yaml:"color,omitempty" json:"color,omitempty"`   // rgb | grey | bgr ("" = from the channel count)
	// Mean and Std are per channel (one value applies to all). Defaults 0 and 1, except for a
	// quantised uint8/int8 input with neither given: then the pixel bytes are fed as they are
	// (q = p, or p-128 for int8), which is what quantised image models expect.
	Mean []float64 `yaml:"mean,omitempty" json:"mean,omitempty"`
	Std  []float64 `yaml:"std,omitempty" json:"std,omitempty"`
	// Invert maps p to 255-p before normalising (white-on-black vs black-on-white digits).
	Invert bool `yaml:"invert,omitempty" json:"invert,omitempty"`
}

// Vector preprocessing: pick features in order and standardise (x - Mean[i]) / Std[i].
type Vector struct {
	// Features names the frame's fields in the model's input order; empty = frame order.
	Features []string  `yaml:"features,omitempty" json:"features,omitempty"`
	Mean     []float64 `yaml:"mean,omitempty" json:"mean,omitempty"`
	Std      []float64 `yaml:"std,omitempty" json:"std,omitempty"`
}

// Output kinds.
const (
	OutputRaw            = "raw"            // dequantised output tensors as numbers
	OutputClassification = "classification" // scores → top-k classes
	OutputDetection      = "detection"      // SSD: boxes, classes, scores, count
	OutputRegression     = "regression"     // named values
	OutputSegmentation   = "segmentation"   // per-pixel classes → a mask and areas
	OutputEmbedding      = "embedding"      // a vector, optionally normalised and matched against a gallery
	OutputKeypoints      = "keypoints"      // poses: named keypoints with scores
)

// Output says how to read the model's outputs.
type Output struct {
	Kind string `yaml:"kind,omitempty" json:"kind,omitempty"` // raw (default) | classification | detection | regression
	// Labels inline, or LabelsFile (one per line). LabelOffset is added to a class index
	// before looking up its label (1 for COCO label maps whose line 0 is "???").
	Labels      []string `yaml:"labels,omitempty" json:"labels,omitempty"`
	LabelsFile  string   `yaml:"labels_file,omitempty" json:"labels_file,omitempty"`
	LabelOffset int      `yaml:"label_offset,omitempty" json:"label_offset,omitempty"`

	Classification Classification `yaml:"classification,omitempty" json:"classification,omitempty"`
	Detection      Detection      `yaml:"detection,omitempty" json:"detection,omitempty"`
	Regression     Regression     `yaml:"regression,omitempty" json:"regression,omitempty"`
	Segmentation   Segmentation   `yaml:"segmentation,omitempty" json:"segmentation,omitempty"`
	Embedding      Embedding      `yaml:"embedding,omitempty" json:"embedding,omitempty"`
	Keypoints      Keypoints      `yaml:"keypoints,omitempty" json:"keypoints,omitempty"`
}

// Keypoints decodes pose models:
//
//	movenet  (default) single pose [1,1,K,3] (y, x, score per keypoint), or multi-pose [1,P,3K+5]
//	         (K keypoints, then ymin, xmin, ymax, xmax and the pose's score)
//	posenet  heatmaps [1,H,W,K] (logits) and offsets [1,H,W,2K] (y offsets, then x, in input
//	         pixels): one pose, each keypoint at its heatmap's peak plus the offset there
//
// Names label the keypoints in order (default: COCO's 17, nose to right ankle).
type Keypoints struct {
	Format string `yaml:"format,omitempty" json:"format,omitempty"`
	// Tensor is the output (movenet) or the heatmaps (posenet); Offsets the posenet offsets.
	Tensor  int `yaml:"tensor,omitempty" json:"tensor,omitempty"`
	Offsets int `yaml:"offsets,omitempty" json:"offsets,omitempty"` // default 1
	// OutputStride: input pixels per heatmap cell (posenet; default from the sizes).
	OutputStride int      `yaml:"output_stride,omitempty" json:"output_stride,omitempty"`
	Names        []string `yaml:"names,omitempty" json:"names,omitempty"`
	// ScoreThreshold drops poses (multi-pose) scoring below it (default 0.2).
	ScoreThreshold float64 `yaml:"score_threshold,omitempty" json:"score_threshold,omitempty"`
}

// Embedding sends output Tensor as a vector (faces, images, text, styles), L2-normalised when
// Normalize, and, with a Gallery (a JSON file of labelled vectors, shipped in the bundle), the
// TopK nearest entries by cosine similarity at or above MinSimilarity.
type Embedding struct {
	Tensor        int     `yaml:"tensor,omitempty" json:"tensor,omitempty"`
	Normalize     bool    `yaml:"normalize,omitempty" json:"normalize,omitempty"`
	Gallery       string  `yaml:"gallery,omitempty" json:"gallery,omitempty"`
	TopK          int     `yaml:"top_k,omitempty" json:"top_k,omitempty"` // default 1
	MinSimilarity float64 `yaml:"min_similarity,omitempty" json:"min_similarity,omitempty"`
	// OmitVector sends only the matches (the vector can be most of a record).
	OmitVector bool `yaml:"omit_vector,omitempty" json:"omit_vector,omitempty"`
}

// Segmentation turns a per-pixel score tensor ([1,H,W,C] or, with layout nchw, [1,C,H,W]) into
// a mask of class indexes (the best class of each pixel; with one channel, class 1 where the
// score passes Threshold) sent as a PNG, and the area of each class.
type Segmentation struct {
	Tensor int    `yaml:"tensor,omitempty" json:"tensor,omitempty"`
	Layout string `yaml:"layout,omitempty" json:"layout,omitempty"` // nhwc (default) | nchw
	// Threshold of a one-channel mask (default 0.5), after the sigmoid when declared.
	Threshold float64 `yaml:"threshold,omitempty" json:"threshold,omitempty"`
	Sigmoid   bool    `yaml:"sigmoid,omitempty" json:"sigmoid,omitempty"`
}

// Classification post-processing on output tensor Tensor.
type Classification struct {
	Tensor int `yaml:"tensor,omitempty" json:"tensor,omitempty"`
	TopK   int `yaml:"top_k,omitempty" json:"top_k,omitempty"` // default 1
	// Softmax applies softmax first; set it when the model outputs logits (declared, never guessed).
	Softmax bool `yaml:"softmax,omitempty" json:"softmax,omitempty"`
	// Sigmoid applies the sigmoid to each score on its own: a multi-label model's logits, where
	// several classes can hold at once (top_k and threshold then pick them).
	Sigmoid   bool    `yaml:"sigmoid,omitempty" json:"sigmoid,omitempty"`
	Threshold float64 `yaml:"threshold,omitempty" json:"threshold,omitempty"` // drop classes scoring below
}

// Detection post-processing. Format says what the outputs hold:
//
//	postprocess (default)  TFLite_Detection_PostProcess: boxes [1,N,4], classes [1,N], scores [1,N], count [1]
//	yolov5                 one raw head [1,N,5+C] (or [1,5+C,N]): cx, cy, w, h, objectness, C class scores
//	yolov8                 one raw head [1,4+C,N] (or [1,N,4+C]): cx, cy, w, h, C class scores (YOLOv8, YOLO11)
//	end2end                [1,K,6]: x1, y1, x2, y2, score, class, already suppressed (YOLOv10, NMS-free exports)
//	anchors                raw SSD heads: boxes [1,A,4+2K] relative to A generated anchors, scores [1,A,C]
//	                       (MediaPipe BlazeFace and BlazePose detectors, SSD models without the PostProcess op)
//
// The raw heads are decoded with a score threshold and non-maximum suppression.
type Detection struct {
	Format string `yaml:"format,omitempty" json:"format,omitempty"`
	// Output tensor indexes of the postprocess format; defaults 0,1,2,3 (boxes, classes, scores, count).
	Boxes   *int `yaml:"boxes,omitempty" json:"boxes,omitempty"`
	Classes *int `yaml:"classes,omitempty" json:"classes,omitempty"`
	Scores  *int `yaml:"scores,omitempty" json:"scores,omitempty"`
	Count   *int `yaml:"count,omitempty" json:"count,omitempty"`
	// Tensor is the output of the yolov5, yolov8 and end2end formats (default 0).
	Tensor int `yaml:"tensor,omitempty" json:"tensor,omitempty"`
	// BoxUnits of the yolo and end2end formats: normalized (0..1 of the model input, the
	// default; what TFLite exports give) or pixels of the model input (ONNX exports).
	BoxUnits string `yaml:"box_units,omitempty" json:"box_units,omitempty"`
	// Sigmoid: the class scores (and objectness) are logits (declared, never guessed).
	Sigmoid bool `yaml:"sigmoid,omitempty" json:"sigmoid,omitempty"`
	// IoUThreshold for non-maximum suppression (default 0.45); ClassAgnostic suppresses
	// overlapping boxes of different classes too.
	// Anchors of the anchors format.
	Anchors        Anchors `yaml:"anchors,omitempty" json:"anchors,omitempty"`
	IoUThreshold   float64 `yaml:"iou_threshold,omitempty" json:"iou_threshold,omitempty"`
	ClassAgnostic  bool    `yaml:"class_agnostic,omitempty" json:"class_agnostic,omitempty"`
	ScoreThreshold float64 `yaml:"score_threshold,omitempty" json:"score_threshold,omitempty"` // default 0.5 (0.25 for yolo formats)
	MaxDetections  int     `yaml:"max_detections,omitempty" json:"max_detections,omitempty"`   // 0 = all (100 for yolo formats)
}

// Anchors generates SSD anchors as MediaPipe's SSD anchor options describe them, over the
// model's input picture, layer by layer (layers with the same stride share one feature map),
// and says how the boxes tensor encodes a box against its anchor. The zero value is
// BlazeFace short range's: strides 8, 16, 16, 16, scales 0.1484375..0.75, one aspect ratio
// 1 plus an interpolated one, fixed size, boxes x, y, w, h in input pixels. Values after the
// first 4 of a box are keypoints, an x and a y each.
type Anchors struct {
	Strides      []int     `yaml:"strides,omitempty" json:"strides,omitempty"`
	MinScale     float64   `yaml:"min_scale,omitempty" json:"min_scale,omitempty"`
	MaxScale     float64   `yaml:"max_scale,omitempty" json:"max_scale,omitempty"`
	Offset       *float64  `yaml:"offset,omitempty" json:"offset,omitempty"`               // anchor centre within its cell (0.5)
	AspectRatios []float64 `yaml:"aspect_ratios,omitempty" json:"aspect_ratios,omitempty"` // [1]
	// InterpolatedAspectRatio adds one anchor per cell at the scale between this layer's and
	// the next's (1; negative: none).
	InterpolatedAspectRatio float64 `yaml:"interpolated_aspect_ratio,omitempty" json:"interpolated_aspect_ratio,omitempty"`
	// VariableSize: anchors have their scale's width and height (TF SSD); otherwise 1 × 1.
	VariableSize bool `yaml:"variable_size,omitempty" json:"variable_size,omitempty"`
	// Order of the box values: xywh (MediaPipe, default) or yxhw (TF SSD's box coder).
	Order string `yaml:"order,omitempty" json:"order,omitempty"`
	// Scale divides x, y, w, h before they are applied to the anchor (default the input
	// picture's width, height, width, height; TF SSD: 10, 10, 5, 5).
	Scale []float64 `yaml:"scale,omitempty" json:"scale,omitempty"`
	// ExpSize: w and h are log-encoded (TF SSD).
	ExpSize bool `yaml:"exp_size,omitempty" json:"exp_size,omitempty"`
}

// Detection formats.
const (
	DetectAnchors     = "anchors"
	DetectPostprocess = "postprocess"
	DetectYOLOv5      = "yolov5"
	DetectYOLOv8      = "yolov8"
	DetectEnd2End     = "end2end"
)

// Regression names the elements of output tensor Tensor.
type Regression struct {
	Tensor int      `yaml:"tensor,omitempty" json:"tensor,omitempty"`
	Names  []string `yaml:"names,omitempty" json:"names,omitempty"`
}

// Validate checks the spec on its own (shapes are checked against the model at load).
// Errors name the field, relative to the spec: "input.image.resize".
func (m Model) Validate() error {
	var errs []error
	add := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", field, fmt.Sprintf(format, args...)))
	}
	switch m.Input.Kind {
	case "", InputImage, InputVector, InputTensor:
	default:
		add("input.kind", "unknown kind %q (want image, vector or tensor)", m.Input.Kind)
	}
	im := m.Input.Image
	switch im.Resize {
	case "", ResizeNearest, ResizeBilinear, ResizeArea:
	default:
		add("input.image.resize", "unknown method %q (want nearest, bilinear or area)", im.Resize)
	}
	switch strings.ToLower(im.Color) {
	case "", "rgb", "grey", "gray", "bgr":
	default:
		add("input.image.color", "unknown colour %q (want rgb, bgr or grey)", im.Color)
	}
	for i, s := range im.Std {
		if s == 0 {
			add(fmt.Sprintf("input.image.std[%d]", i), "must not be 0")
		}
	}
	if len(im.Mean) > 3 || len(im.Std) > 3 {
		add("input.image", "mean and std take 1 or 3 values")
	}
	v := m.Input.Vector
	for i, s := range v.Std {
		if s == 0 {
			add(fmt.Sprintf("input.vector.std[%d]", i), "must not be 0")
		}
	}
	if len(v.Features) > 0 {
		if len(v.Mean) > 0 && len(v.Mean) != len(v.Features) {
			add("input.vector.mean", "has %d values for %d features", len(v.Mean), len(v.Features))
		}
		if len(v.Std) > 0 && len(v.Std) != len(v.Features) {
			add("input.vector.std", "has %d values for %d features", len(v.Std), len(v.Features))
		}
	}
	o := m.Output
	switch o.Kind {
	case "", OutputRaw, OutputClassification, OutputDetection, OutputRegression, OutputSegmentation, OutputEmbedding, OutputKeypoints:
	default:
		add("output.kind", "unknown kind %q (want raw, classification, detection, regression, segmentation, embedding or keypoints)", o.Kind)
	}
	switch k := o.Keypoints; {
	case k.Format != "" && k.Format != "movenet" && k.Format != "posenet":
		add("output.keypoints.format", "unknown format %q (want movenet or posenet)", k.Format)
	case k.ScoreThreshold < 0 || k.ScoreThreshold > 1 || k.OutputStride < 0:
		add("output.keypoints", "score_threshold must be within 0..1 and output_stride ≥ 0")
	}
	if g := o.Segmentation; g.Tensor < 0 || g.Threshold < 0 || g.Threshold > 1 {
		add("output.segmentation", "tensor must be ≥ 0 and threshold within 0..1")
	} else if g.Layout != "" && g.Layout != "nhwc" && g.Layout != "nchw" {
		add("output.segmentation.layout", "unknown layout %q (want nhwc or nchw)", g.Layout)
	}
	if len(o.Labels) > 0 && o.LabelsFile != "" {
		add("output.labels", "give labels or labels_file, not both")
	}
	c := o.Classification
	if c.TopK < 0 {
		add("output.classification.top_k", "must be ≥ 0")
	}
	if c.Tensor < 0 {
		add("output.classification.tensor", "must be ≥ 0")
	}
	if c.Threshold < 0 {
		add("output.classification.threshold", "must be ≥ 0")
	}
	if c.Softmax && c.Sigmoid {
		add("output.classification", "softmax and sigmoid exclude each other: softmax for one class among many, sigmoid for several that can hold at once")
	}
	if e := o.Embedding; e.Tensor < 0 || e.TopK < 0 || e.MinSimilarity < -1 || e.MinSimilarity > 1 {
		add("output.embedding", "tensor and top_k must be ≥ 0 and min_similarity within -1..1")
	}
	d := o.Detection
	if d.ScoreThreshold < 0 || d.ScoreThreshold > 1 {
		add("output.detection.score_threshold", "must be within 0..1")
	}
	switch d.Format {
	case "", DetectPostprocess, DetectYOLOv5, DetectYOLOv8, DetectEnd2End, DetectAnchors:
	default:
		add("output.detection.format", "unknown format %q (want postprocess, yolov5, yolov8, end2end or anchors)", d.Format)
	}
	if a := d.Anchors; a.Order != "" && a.Order != "xywh" && a.Order != "yxhw" {
		add("output.detection.anchors.order", "unknown order %q (want xywh or yxhw)", a.Order)
	} else if len(a.Scale) != 0 && len(a.Scale) != 4 {
		add("output.detection.anchors.scale", "has %d values; want 4 (x, y, w, h)", len(a.Scale))
	} else if a.MinScale < 0 || a.MaxScale < a.MinScale && a.MaxScale != 0 {
		add("output.detection.anchors", "want 0 ≤ min_scale ≤ max_scale")
	}
	switch d.BoxUnits {
	case "", "normalized", "pixels":
	default:
		add("output.detection.box_units", "unknown units %q (want normalized or pixels)", d.BoxUnits)
	}
	if d.IoUThreshold < 0 || d.IoUThreshold > 1 {
		add("output.detection.iou_threshold", "must be within 0..1")
	}
	if d.Tensor < 0 || d.MaxDetections < 0 {
		add("output.detection", "tensor and max_detections must be ≥ 0")
	}
	for name, p := range map[string]*int{"boxes": d.Boxes, "classes": d.Classes, "scores": d.Scores, "count": d.Count} {
		if p != nil && *p < 0 {
			add("output.detection."+name, "must be ≥ 0")
		}
	}
	return errors.Join(errs...)
}

// DetectionIndexes returns the output tensor indexes for boxes, classes, scores, count.
func (d Detection) DetectionIndexes() (boxes, classes, scores, count int) {
	pick := func(p *int, def int) int {
		if p != nil {
			return *p
		}
		return def
	}
	return pick(d.Boxes, 0), pick(d.Classes, 1), pick(d.Scores, 2), pick(d.Count, 3)
}
