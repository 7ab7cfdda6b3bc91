package deploy

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// pushOf makes random bundle bytes and the push spec that describes them.
func pushOf(t *testing.T, size, chunk int) ([]byte, PushSpec) {
	t.Helper()
	data := make([]byte, size)
	for i := range data {
		data[i] = byte(rand.IntN(256))
	}
	return data, specOf(t, data, chunk)
}

func specOf(t *testing.T, data []byte, chunk int) PushSpec {
	t.Helper()
	whole := sha256.Sum256(data)
	s := PushSpec{SHA256: hex.EncodeToString(whole[:]), Size: int64(len(data)), ChunkSize: chunk}
	for off := 0; off < len(data); off += chunk {
		h := sha256.Sum256(data[off:min(off+chunk, len(data))])
		s.Chunks = append(s.Chunks, hex.EncodeToString(h[:]))
	}
	s, err := s.Check(1 << 30)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func chunkOf(data []byte, s PushSpec, i int) []byte {
	return data[i*s.ChunkSize : min((i+1)*s.ChunkSize, len(data))]
}

func TestAssemblerTakesChunksInAnyOrder(t *testing.T) {
	data, s := pushOf(t, 100_000, MinChunkSize) // 25 chunks, the last one short
	dir := t.TempDir()
	a, err := OpenAssembler(dir, s)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	for _, i := range rand.Perm(len(s.Chunks)) {
		if fresh, err := a.Put(i, chunkOf(data, s, i)); !fresh || err != nil {
			t.Fatalf("Put(%d) = %v, %v; want a new chunk", i, fresh, err)
		}
	}
	if fresh, err := a.Put(3, chunkOf(data, s, 3)); fresh || err != nil {
		t.Errorf("Put of a chunk it has = %v, %v; want false, nil", fresh, err)
	}
	if n, b := a.Progress(); !a.Complete() || n != 25 || b != 100_000 || len(a.Missing()) != 0 {
		t.Fatalf("after every chunk: complete %v, %d chunks %d bytes, missing %v", a.Complete(), n, b, a.Missing())
	}
	path, err := a.Finish()
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(path); !bytes.Equal(got, data) {
		t.Fatalf("assembled %d bytes differ from the pushed %d", len(got), len(data))
	}
	if err := a.Remove(); err != nil {
		t.Fatal(err)
	}
	if left, _ := filepath.Glob(filepath.Join(dir, "*")); len(left) != 0 {
		t.Errorf("files left after Remove: %v", left)
	}
}

func TestAssemblerRefusesABadChunk(t *testing.T) {
	data, s := pushOf(t, 5*MinChunkSize, MinChunkSize)
	a, err := OpenAssembler(t.TempDir(), s)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	bad := bytes.Clone(chunkOf(data, s, 3))
	bad[100] ^= 1
	if _, err := a.Put(3, bad); !errors.Is(err, ErrChunkHash) {
		t.Errorf("a chunk with a flipped bit: %v; want ErrChunkHash", err)
	}
	if _, err := a.Put(3, chunkOf(data, s, 3)[:100]); !errors.Is(err, ErrChunkIndex) {
		t.Errorf("a short chunk: %v; want ErrChunkIndex", err)
	}
	for _, i := range []int{-1, 5} {
		if _, err := a.Put(i, chunkOf(data, s, 0)); !errors.Is(err, ErrChunkIndex) {
			t.Errorf("chunk %d of 5: %v; want ErrChunkIndex", i, err)
		}
	}
	if m := a.Missing(); !slices.Equal(m, []int{0, 1, 2, 3, 4}) {
		t.Errorf("missing %v after refusals; want every chunk", m)
	}
	part, _ := os.ReadFile(a.part)
	if !bytes.Equal(part[3*MinChunkSize:4*MinChunkSize], make([]byte, MinChunkSize)) {
		t.Error("a refused chunk was written to the partial file")
	}
}

// A transfer that stops (the agent crashed or was stopped) keeps its verified chunks: the
// next open lists only the others as missing. Another pusher choosing another chunk size for
// the same bundle finds the bytes already there too.
func TestAssemblerResumesAfterACrash(t *testing.T) {
	data, s := pushOf(t, 40*MinChunkSize+123, MinChunkSize)
	dir := t.TempDir()
	a, err := OpenAssembler(dir, s)
	if err != nil {
		t.Fatal(err)
	}
	var kept []int
	for i := 0; i < len(s.Chunks); i += 2 {
		if _, err := a.Put(i, chunkOf(data, s, i)); err != nil {
			t.Fatal(err)
		}
		kept = append(kept, i)
	}
	a.Close() // no Finish: as if the agent stopped

	b, err := OpenAssembler(dir, s)
	if err != nil {
		t.Fatal(err)
	}
	var want []int
	for i := 1; i < len(s.Chunks); i += 2 {
		want = append(want, i)
	}
	if m := b.Missing(); !slices.Equal(m, want) {
		t.Fatalf("missing after reopening %v; want only the odd chunks %v", m, want)
	}
	if n, _ := b.Progress(); n != len(kept) {
		t.Errorf("progress after reopening: %d chunks; want %d", n, len(kept))
	}
	b.Close()

	// Chunks of 8 KiB: chunk j covers old chunks 2j and 2j+1, so none is complete on disk,
	// except the last one (old chunk 40, 123 bytes, on its own in new chunk 20).
	s8 := specOf(t, data, 2*MinChunkSize)
	c, err := OpenAssembler(dir, s8)
	if err != nil {
		t.Fatal(err)
	}
	if m := c.Missing(); len(m) != 20 || slices.Contains(m, 20) {
		t.Errorf("missing with 8 KiB chunks %v; want 0..19 (chunk 20's bytes are on disk)", m)
	}
	for _, i := range c.Missing() {
		if _, err := c.Put(i, chunkOf(data, s8, i)); err != nil {
			t.Fatal(err)
		}
	}
	path, err := c.Finish()
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(path); !bytes.Equal(got, data) {
		t.Fatal("the bundle assembled across two chunk sizes differs")
	}
}

// Chunks that match their hashes but a whole file that does not match the command's sha256:
// the partial files are deleted and the error says so.
func TestAssemblerWholeFileMismatchDeletesThePartial(t *testing.T) {
	data, s := pushOf(t, 3*MinChunkSize, MinChunkSize)
	s.SHA256 = strings.Repeat("ab", 32)
	dir := t.TempDir()
	a, err := OpenAssembler(dir, s)
	if err != nil {
		t.Fatal(err)
	}
	for i := range s.Chunks {
		if _, err := a.Put(i, chunkOf(data, s, i)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := a.Finish(); !errors.Is(err, ErrChecksum) || !strings.Contains(err.Error(), "deleted") {
		t.Errorf("Finish: %v; want ErrChecksum saying the files were deleted", err)
	}
	if left, _ := filepath.Glob(filepath.Join(dir, "*")); len(left) != 0 {
		t.Errorf("files left after a whole-file mismatch: %v", left)
	}
}

func TestPushSpecBounds(t *testing.T) {
	_, good := pushOf(t, 10*MinChunkSize, MinChunkSize)
	for _, tc := range []struct {
		name string
		edit func(*PushSpec)
		max  int64
		want string
	}{
		{"empty", func(s *PushSpec) { s.Size = 0 }, 1 << 20, "size 0"},
		{"over the limit", func(s *PushSpec) {}, 5 * MinChunkSize, "out of range"},
		{"chunks too small", func(s *PushSpec) { s.ChunkSize = 1000 }, 1 << 20, "chunk_size 1000"},
		{"chunks too large", func(s *PushSpec) { s.ChunkSize = 2 << 20 }, 1 << 20, "chunk_size"},
		{"a hash too many", func(s *PushSpec) { s.Chunks = append(s.Chunks, s.Chunks[0]) }, 1 << 20, "11 chunk hashes"},
		{"a hash too few", func(s *PushSpec) { s.Chunks = s.Chunks[1:] }, 1 << 20, "9 chunk hashes"},
		{"too many chunks", func(s *PushSpec) { s.Size = (MaxChunks + 1) * MinChunkSize }, 1 << 30, "more than 1024"},
		{"bad chunk hash", func(s *PushSpec) { s.Chunks[4] = "xyz" }, 1 << 20, "chunk 4"},
		{"bad bundle hash", func(s *PushSpec) { s.SHA256 = s.SHA256[:60] }, 1 << 20, "64 hex digits"},
	} {
		s := good
		s.Chunks = slices.Clone(good.Chunks)
		tc.edit(&s)
		if _, err := s.Check(tc.max); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v; want an error with %q", tc.name, err, tc.want)
		}
	}
	up := good
	up.SHA256 = strings.ToUpper(good.SHA256)
	if s, err := up.Check(1 << 20); err != nil || s.SHA256 != good.SHA256 {
		t.Errorf("upper-case hex: %v, %s; want it taken in lower case", err, s.SHA256)
	}
}

// At most KeepPartial partial bundles stay in the folder: starting another removes the
// oldest, while resuming one that is there removes nothing.
func TestAssemblerKeepsAtMostTwoPartials(t *testing.T) {
	dir := t.TempDir()
	var specs []PushSpec
	for i := range 3 {
		_, s := pushOf(t, MinChunkSize, MinChunkSize)
		specs = append(specs, s)
		a, err := OpenAssembler(dir, s)
		if err != nil {
			t.Fatal(err)
		}
		a.Close()
		old := time.Now().Add(time.Duration(i-10) * time.Minute) // distinct ages, oldest first
		os.Chtimes(filepath.Join(dir, s.SHA256+".part"), old, old)
	}
	left, _ := filepath.Glob(filepath.Join(dir, "*"))
	slices.Sort(left)
	var want []string
	for _, s := range specs[1:] {
		want = append(want, filepath.Join(dir, s.SHA256+".have"), filepath.Join(dir, s.SHA256+".part"))
	}
	slices.Sort(want)
	if !slices.Equal(left, want) {
		t.Fatalf("files %v; want the two newest partial bundles %v", left, want)
	}
	a, err := OpenAssembler(dir, specs[1]) // resuming: nothing removed
	if err != nil {
		t.Fatal(err)
	}
	a.Close()
	if again, _ := filepath.Glob(filepath.Join(dir, "*")); len(again) != 4 {
		t.Errorf("resuming a kept bundle changed the folder to %v", again)
	}
}
