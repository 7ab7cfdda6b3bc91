//go:build !unix

package deploy

// freeBytes is unknown here: the size limits alone bound a download.
func freeBytes(string) (int64, bool) { return 0, false }
