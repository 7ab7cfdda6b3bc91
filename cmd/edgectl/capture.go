package main

import (
	"errors"
	"io"
)

func cmdCapture(args []string, stdout, stderr io.Writer) error {
	return errors.New("not built yet")
}
