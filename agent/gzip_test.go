//go:build cgo

package agent_test

import (
	"bufio"
	"compress/gzip"
	"io"
)

// gzipReader undoes gzip when the stream has its magic, else reads as is.
func gzipReader(r io.Reader) (io.Reader, error) {
	br := bufio.NewReader(r)
	if b, err := br.Peek(2); err == nil && b[0] == 0x1f && b[1] == 0x8b {
		return gzip.NewReader(br)
	}
	return br, nil
}
