package command

import (
	"bufio"
	"errors"
	"fmt"
	"io"
)

// nextJPEG reads the next JPEG image (SOI … EOI) from r, appending it to buf. It follows the
// marker segments instead of searching for FF D9, because an EXIF thumbnail inside APP1
// carries its own FF D9. Bytes before SOI are skipped (up to max), fill bytes (FF FF …) are
// dropped, and a new SOI before EOI starts over: the truncated frame is lost, the stream not.
// io.EOF means the stream ended cleanly between images.
func nextJPEG(r *bufio.Reader, max int, buf []byte) ([]byte, error) {
	if err := findSOI(r, max); err != nil {
		return buf, err
	}
	buf = append(buf[:0], 0xFF, 0xD8)
	next := -1 // a marker already read at the end of entropy-coded data
	for {
		var m byte
		if next >= 0 {
			m, next = byte(next), -1
		} else {
			var err error
			if m, err = marker(r); err != nil {
				return buf, err
			}
		}
		buf = append(buf, 0xFF, m)
		switch {
		case m == 0xD9: // EOI
			return buf, nil
		case m == 0xD8: // SOI again: the previous frame was cut short
			buf = append(buf[:0], 0xFF, 0xD8)
			continue
		case m >= 0xD0 && m <= 0xD7, m == 0x01: // RSTn, TEM: no length
			continue
		}
		var l [2]byte
		if _, err := io.ReadFull(r, l[:]); err != nil {
			return buf, truncated(err)
		}
		n := int(l[0])<<8 | int(l[1])
		if n < 2 {
			return buf, fmt.Errorf("JPEG marker FF%02X has bad length %d", m, n)
		}
		if len(buf)+n > max {
			return buf, tooBig(max)
		}
		buf = append(buf, l[0], l[1])
		var err error
		if buf, err = appendN(r, buf, n-2); err != nil {
			return buf, err
		}
		if m != 0xDA { // not SOS: next is another marker
			continue
		}
		// Entropy-coded data follows SOS. FF 00 is a stuffed FF and FF D0..D7 are restart
		// markers, both part of the data; any other FF xx is the next marker.
		for {
			chunk, err := r.ReadSlice(0xFF)
			if len(buf)+len(chunk) > max {
				return buf, tooBig(max)
			}
			buf = append(buf, chunk...)
			if err == bufio.ErrBufferFull {
				continue
			}
			if err != nil {
				return buf, truncated(err)
			}
			b, err := r.ReadByte()
			for err == nil && b == 0xFF { // fill bytes before a marker
				b, err = r.ReadByte()
			}
			if err != nil {
				return buf, truncated(err)
			}
			if b == 0x00 || b >= 0xD0 && b <= 0xD7 {
				buf = append(buf, b)
				continue
			}
			buf = buf[:len(buf)-1] // this FF starts the next marker; it is appended with it
			next = int(b)
			break
		}
	}
}

// findSOI skips to just after the next FF D8.
func findSOI(r *bufio.Reader, max int) error {
	skipped := 0
	for {
		b, err := r.ReadByte()
		if err != nil {
			if err == io.EOF && skipped > 0 {
				return fmt.Errorf("stream ended with %d bytes that are not a JPEG", skipped)
			}
			return err
		}
		if b == 0xFF {
			next, err := r.ReadByte()
			if err != nil {
				return truncated(err)
			}
			if next == 0xD8 {
				return nil
			}
			r.UnreadByte() // it may be the FF of FF D8
			skipped++
			continue
		}
		if skipped++; skipped > max {
			return fmt.Errorf("no JPEG start (FF D8) in %d bytes: is the program writing MJPEG (command.format)?", skipped)
		}
	}
}

// marker reads FF xx (skipping fill bytes) and returns xx.
func marker(r *bufio.Reader) (byte, error) {
	b, err := r.ReadByte()
	if err != nil {
		return 0, truncated(err)
	}
	if b != 0xFF {
		return 0, fmt.Errorf("JPEG stream corrupt: want a marker, got byte %02X", b)
	}
	for b == 0xFF {
		if b, err = r.ReadByte(); err != nil {
			return 0, truncated(err)
		}
	}
	return b, nil
}

func appendN(r *bufio.Reader, buf []byte, n int) ([]byte, error) {
	start := len(buf)
	buf = append(buf, make([]byte, n)...)
	if _, err := io.ReadFull(r, buf[start:]); err != nil {
		return buf, truncated(err)
	}
	return buf, nil
}

func truncated(err error) error {
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		return errors.New("stream ended inside a JPEG image")
	}
	return err
}

func tooBig(max int) error {
	return fmt.Errorf("JPEG frame larger than command.max_frame_bytes (%d)", max)
}
