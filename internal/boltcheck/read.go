package boltcheck

// Read walks a bbolt file without bbolt and without mapping it: every page is read with
// ReadAt and every offset is checked against the bytes read, so a damaged file yields fewer
// records, never a fault. It is how a moved-aside file is salvaged.
//
// The page layout it reads: a 16-byte header (page id, flags, element count, overflow pages),
// then the elements, 16 bytes each. A branch element is (key offset, key size, child page); a
// leaf element is (flags, key offset, key size, value size). Offsets count from the element
// itself; a leaf's value follows its key. A leaf element with the bucket flag holds a bucket:
// its root page and sequence (8 bytes each), and when the root is 0 the bucket's one leaf page
// inline after them.

import (
	"encoding/binary"
	"fmt"
	"io"
	"os"
)

const (
	flagBranch = 0x01
	flagLeaf   = 0x02
	elemLen    = 16
	elemBucket = 0x01 // a leaf element that is a nested bucket
	bucketLen  = 16   // root page, sequence
	maxDepth   = 64   // a deeper tree is a cycle or noise
)

// Visitor receives what Read finds, in key order within each bucket. Its slices are valid
// only during the call. An error from either stops Read and is returned.
type Visitor struct {
	// Bucket is called for each bucket reached, before what it holds, with its path of names
	// from the top and its sequence (what NextSequence counts from).
	Bucket func(path [][]byte, seq uint64) error
	// Pair is called for each key and value of a bucket.
	Pair func(path [][]byte, k, v []byte) error
	// Orphan, when set, is called after the walk for each key and value of the leaf pages
	// the tree does not reach (its parent page lost, or a page freed by a later transaction,
	// which may hold data since deleted): which bucket they were in is not known.
	Orphan func(k, v []byte) error
}

// ReadReport says how much of a file Read could reach.
type ReadReport struct {
	PageSize uint32
	// FromMeta: the tree's root came from a valid meta page. Without one, the root is the
	// page of buckets whose sequences add up highest (sequences only grow, so it is the
	// newest); records a later transaction acknowledged may then come back.
	FromMeta bool
	Pairs    int // keys and values handed to Pair
	Orphans  int // keys and values handed to Orphan
	// BadPages counts references to pages that could not be read: past the end of the file,
	// not naming themselves, referenced twice, or with elements that do not fit. What they
	// held is lost.
	BadPages int
}

// Whole reports whether Read reached everything the file's tree names.
func (r ReadReport) Whole() bool { return r.FromMeta && r.BadPages == 0 }

type reader struct {
	f     *os.File
	ps    int64
	pages int64 // whole pages in the file
	seen  map[uint64]bool
	v     Visitor
	rep   ReadReport
}

// Read walks every bucket and pair of the bbolt file at path that can be read. It fails only
// when the file cannot be opened or no tree can be found in it at all.
func Read(path string, v Visitor) (ReadReport, error) {
	f, err := os.Open(path)
	if err != nil {
		return ReadReport{}, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return ReadReport{}, err
	}
	m, _ := Preflight(path) // a truncated file still names its page size and root
	r := &reader{f: f, v: v, seen: map[uint64]bool{}}
	if v.Bucket == nil {
		r.v.Bucket = func([][]byte, uint64) error { return nil }
	}
	if v.Pair == nil {
		r.v.Pair = func([][]byte, []byte, []byte) error { return nil }
	}
	root := m.Root
	if m.PageSize != 0 {
		r.ps = int64(m.PageSize)
		r.rep.FromMeta = true
	} else {
		r.ps = r.guessPageSize(fi.Size())
	}
	r.pages = fi.Size() / r.ps
	r.rep.PageSize = uint32(r.ps)
	if root != 0 {
		if p := r.peek(root); p == nil || binary.LittleEndian.Uint16(p[8:]) != flagLeaf && binary.LittleEndian.Uint16(p[8:]) != flagBranch {
			root, r.rep.FromMeta = 0, false // the meta page is valid, its root page is not
		}
	}
	if root == 0 {
		root = r.findRoot()
	}
	if root == 0 && v.Orphan == nil {
		return r.rep, fmt.Errorf("%w: %s holds no readable bbolt tree", ErrDamaged, path)
	}
	if root == 0 {
		r.rep.BadPages++ // the top of the tree
	} else if err := r.walk(root, nil, 0); err != nil {
		return r.rep, err
	}
	if v.Orphan != nil {
		err = r.orphans()
	}
	return r.rep, err
}

// orphans hands Orphan the pairs of every leaf page the walk did not reach; leaves that hold
// buckets are old copies of the top of the tree, not data.
func (r *reader) orphans() error {
	for id := uint64(2); id < uint64(r.pages); id++ {
		var h [pageHeader]byte
		if _, err := r.f.ReadAt(h[:], int64(id)*r.ps); err != nil || binary.LittleEndian.Uint64(h[:]) != id {
			continue
		}
		over := uint64(binary.LittleEndian.Uint32(h[12:]))
		if r.seen[id] || binary.LittleEndian.Uint16(h[8:]) != flagLeaf {
			id += over
			continue
		}
		p := r.peek(id)
		if p == nil {
			continue
		}
		id += over
		buckets := false
		forElems(p, func(flags uint32, _, _ []byte) bool { buckets = flags&elemBucket != 0; return !buckets }, func() {})
		if buckets {
			continue
		}
		var err error
		forElems(p, func(_ uint32, k, v []byte) bool {
			r.rep.Orphans++
			err = r.v.Orphan(k, v)
			return err == nil
		}, func() {})
		if err != nil {
			return err
		}
	}
	return nil
}

// guessPageSize picks the page size at which the most of the first pages name themselves.
func (r *reader) guessPageSize(size int64) int64 {
	best, score := int64(os.Getpagesize()), -1
	for ps := int64(minPageSize); ps <= maxPageSize; ps *= 2 {
		n := 0
		for id := int64(2); id < 66 && (id+1)*ps <= size; id++ {
			var h [8]byte
			if _, err := r.f.ReadAt(h[:], id*ps); err == nil && binary.LittleEndian.Uint64(h[:]) == uint64(id) {
				n++
			}
		}
		if n > score || (n == score && ps == int64(os.Getpagesize())) {
			best, score = ps, n
		}
	}
	return best
}

// peek reads page id's header and elements without marking it seen; nil when it is not a
// page that names itself and fits in the file.
func (r *reader) peek(id uint64) []byte {
	if id < 2 || id >= uint64(r.pages) {
		return nil
	}
	var h [pageHeader]byte
	if _, err := r.f.ReadAt(h[:], int64(id)*r.ps); err != nil || binary.LittleEndian.Uint64(h[:]) != id {
		return nil
	}
	n := int64(binary.LittleEndian.Uint32(h[12:])) + 1
	if n > r.pages-int64(id) {
		return nil
	}
	b := make([]byte, n*r.ps)
	if _, err := r.f.ReadAt(b, int64(id)*r.ps); err != nil && err != io.EOF {
		return nil
	}
	return b
}

// findRoot scans for leaf pages that hold only buckets (the top of a bbolt tree holds
// nothing else) and returns the one whose bucket sequences add up highest.
func (r *reader) findRoot() uint64 {
	var best, bestScore uint64
	for id := uint64(2); id < uint64(r.pages); id++ {
		var h [pageHeader]byte
		if _, err := r.f.ReadAt(h[:], int64(id)*r.ps); err != nil || binary.LittleEndian.Uint64(h[:]) != id ||
			binary.LittleEndian.Uint16(h[8:]) != flagLeaf || binary.LittleEndian.Uint16(h[10:]) == 0 {
			continue
		}
		p := r.peek(id)
		if p == nil {
			continue
		}
		score, ok := uint64(1), true
		forElems(p, func(flags uint32, _, v []byte) bool {
			if flags&elemBucket == 0 || len(v) < bucketLen {
				ok = false
				return false
			}
			score += binary.LittleEndian.Uint64(v[8:])
			return true
		}, func() { ok = false })
		if ok && score >= bestScore {
			best, bestScore = id, score
		}
	}
	return best
}

// forElems calls fn with each leaf element of page p whose key and value fit in p, and bad
// for each that does not; fn returns false to stop.
func forElems(p []byte, fn func(flags uint32, k, v []byte) bool, bad func()) {
	le := binary.LittleEndian
	count := int(le.Uint16(p[10:]))
	for i := range count {
		at := pageHeader + i*elemLen
		if at+elemLen > len(p) {
			bad()
			return
		}
		e := p[at:]
		flags, pos, ksize, vsize := le.Uint32(e), int64(le.Uint32(e[4:])), int64(le.Uint32(e[8:])), int64(le.Uint32(e[12:]))
		k0 := int64(at) + pos
		if end := k0 + ksize + vsize; pos < elemLen || end > int64(len(p)) {
			bad()
			continue
		}
		if !fn(flags, p[k0:k0+ksize], p[k0+ksize:k0+ksize+vsize]) {
			return
		}
	}
}

// walk visits the subtree at page id, the root (or a part) of the bucket at path.
func (r *reader) walk(id uint64, path [][]byte, depth int) error {
	if depth > maxDepth || r.seen[id] {
		r.rep.BadPages++
		return nil
	}
	p := r.peek(id)
	if p == nil {
		r.rep.BadPages++
		return nil
	}
	r.seen[id] = true
	return r.node(p, path, depth)
}

// node visits one page (or an inline bucket's page) of the bucket at path.
func (r *reader) node(p []byte, path [][]byte, depth int) error {
	le := binary.LittleEndian
	if len(p) < pageHeader {
		r.rep.BadPages++
		return nil
	}
	switch le.Uint16(p[8:]) {
	case flagBranch:
		count := int(le.Uint16(p[10:]))
		for i := range count {
			at := pageHeader + i*elemLen
			if at+elemLen > len(p) {
				r.rep.BadPages++
				return nil
			}
			if err := r.walk(le.Uint64(p[at+8:]), path, depth+1); err != nil {
				return err
			}
		}
		return nil
	case flagLeaf:
		var err error
		bad := false
		forElems(p, func(flags uint32, k, v []byte) bool {
			if flags&elemBucket == 0 {
				r.rep.Pairs++
				err = r.v.Pair(path, k, v)
				return err == nil
			}
			if len(v) < bucketLen {
				bad = true
				return true
			}
			child := append(path[:len(path):len(path)], k)
			if err = r.v.Bucket(child, le.Uint64(v[8:])); err != nil {
				return false
			}
			if root := le.Uint64(v); root != 0 {
				err = r.walk(root, child, depth+1)
			} else if depth < maxDepth {
				err = r.node(v[bucketLen:], child, depth+1)
			}
			return err == nil
		}, func() { bad = true })
		if bad {
			r.rep.BadPages++
		}
		return err
	default:
		r.rep.BadPages++
		return nil
	}
}
