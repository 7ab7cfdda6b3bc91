package command

import (
	"bufio"
	"bytes"
	"image"
	"image/color"
	"image/jpeg"
	"io"
	"slices"
	"strings"
	"testing"
)

func encodeJPEG(t *testing.T, w, h int, c color.Gray) []byte {
	t.Helper()
	img := image.NewGray(image.Rect(0, 0, w, h))
	for i := range img.Pix {
		img.Pix[i] = c.Y + uint8(i%7) // some texture so the entropy data has FF bytes now and then
	}
	var b bytes.Buffer
	if err := jpeg.Encode(&b, img, &jpeg.Options{Quality: 90}); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// withThumbnail puts a whole JPEG (with its own FF D9) in an APP1 segment, as EXIF does.
func withThumbnail(main, thumb []byte) []byte {
	payload := append([]byte("Exif\x00\x00"), thumb...)
	seg := []byte{0xFF, 0xE1, byte((len(payload) + 2) >> 8), byte(len(payload) + 2)}
	out := append([]byte{}, main[:2]...)
	out = append(out, seg...)
	out = append(out, payload...)
	return append(out, main[2:]...)
}

func TestNextJPEG(t *testing.T) {
	a := encodeJPEG(t, 32, 16, color.Gray{Y: 10})
	b := encodeJPEG(t, 8, 24, color.Gray{Y: 200})
	thumb := encodeJPEG(t, 4, 4, color.Gray{Y: 99})
	exif := withThumbnail(a, thumb)
	// FF FF fill bytes before the first marker after SOI are legal.
	filled := append([]byte{0xFF, 0xD8, 0xFF, 0xFF, 0xFF}, b[3:]...)

	tests := []struct {
		name    string
		stream  []byte
		want    []image.Point // sizes of the frames, in order
		wantErr string        // error after the frames ("" means clean EOF)
	}{
		{"two back to back", cat(a, b), []image.Point{{32, 16}, {8, 24}}, ""},
		{"junk before and between", cat([]byte("junk\xff\x00"), a, []byte("\n\n"), b), []image.Point{{32, 16}, {8, 24}}, ""},
		{"EXIF thumbnail is not the end", cat(exif, b), []image.Point{{32, 16}, {8, 24}}, ""},
		{"fill bytes", cat(filled, a), []image.Point{{8, 24}, {32, 16}}, ""},
		{"cut short then a new image", cat(a[:len(a)-40], b), []image.Point{{8, 24}}, ""},
		{"ends inside an image", cat(a, b[:len(b)-10]), []image.Point{{32, 16}}, "stream ended inside a JPEG image"},
		{"only junk", []byte("abc"), nil, "stream ended with 3 bytes that are not a JPEG"},
	}
	for _, tt := range tests {
		r := bufio.NewReaderSize(bytes.NewReader(tt.stream), 16) // tiny buffer: exercise ErrBufferFull
		var got []image.Point
		var err error
		var buf []byte
		for {
			buf, err = nextJPEG(r, 1<<20, buf[:0])
			if err != nil {
				break
			}
			img, derr := jpeg.Decode(bytes.NewReader(buf))
			if derr != nil {
				t.Errorf("%s: frame %d does not decode: %v", tt.name, len(got), derr)
				break
			}
			got = append(got, img.Bounds().Size())
		}
		if !slices.Equal(got, tt.want) {
			t.Errorf("%s: got frames %v; want %v", tt.name, got, tt.want)
		}
		if tt.wantErr == "" && err != io.EOF || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
			t.Errorf("%s: got error %v; want %q (EOF if empty)", tt.name, err, tt.wantErr)
		}
	}
}

func TestNextJPEGBounds(t *testing.T) {
	a := encodeJPEG(t, 64, 64, color.Gray{Y: 10})
	if _, err := nextJPEG(bufio.NewReader(bytes.NewReader(a)), 500, nil); err == nil || !strings.Contains(err.Error(), "larger than command.max_frame_bytes (500)") {
		t.Errorf("oversized frame: got %v; want the max_frame_bytes error", err)
	}
	junk := bytes.Repeat([]byte{0}, 2000)
	if _, err := nextJPEG(bufio.NewReader(bytes.NewReader(junk)), 500, nil); err == nil || !strings.Contains(err.Error(), "no JPEG start") {
		t.Errorf("no SOI: got %v; want the no JPEG start error", err)
	}
}

func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
