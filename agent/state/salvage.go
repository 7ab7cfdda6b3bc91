package state

// Salvage: a damaged state file is moved aside and a new one opened with Salvage, which reads
// the old file with boltcheck.Read (no bbolt, no mapping, so damage cannot fault) and keeps
// every command id it can still read, with its expiry. An id found on a page the tree no
// longer reaches is kept too: remembering an id that was already forgotten only refuses a
// replay of a command that has expired anyway.

import (
	"bytes"
	"fmt"

	bolt "go.etcd.io/bbolt"

	"github.com/edge-agent/edge-agent/internal/boltcheck"
)

// Recovered says what Salvage read from a damaged state file.
type Recovered struct {
	From string `json:"from"`
	IDs  int    `json:"ids"` // command ids kept
	// Whole: everything the damaged file's tree names was read, so no id was forgotten.
	// Otherwise a replay of a command issued before the recovery cannot be told apart.
	Whole    bool   `json:"whole"`
	BadPages int    `json:"bad_pages"`
	Err      string `json:"error,omitempty"`
}

// Salvage opens (creating) the state file at path and stores in it the command ids that can
// be read from the damaged file from. A failed read is reported, not returned: the new
// store is usable either way.
func Salvage(path, from string) (*Store, Recovered, error) {
	s, err := Open(path)
	if err != nil {
		return nil, Recovered{}, err
	}
	rec := Recovered{From: from}
	ids := map[string][]byte{}
	keep := func(k, v []byte) error {
		if len(v) == 8 && len(k) > 0 && len(k) <= 1024 {
			if old, ok := ids[string(k)]; !ok || bytes.Compare(v, old) > 0 {
				ids[string(k)] = bytes.Clone(v)
			}
		}
		return nil
	}
	r, rerr := boltcheck.Read(from, boltcheck.Visitor{
		Pair: func(p [][]byte, k, v []byte) error {
			if len(p) == 1 && bytes.Equal(p[0], bucketIDs) {
				return keep(k, v)
			}
			return nil
		},
		Orphan: keep, // cmd-ids holds 8-byte values; the index's values are empty
	})
	rec.Whole, rec.BadPages = rerr == nil && r.Whole(), r.BadPages
	if rerr != nil {
		rec.Err = rerr.Error()
	}
	err = s.update(func(tx *bolt.Tx) error {
		idb, exp := tx.Bucket(bucketIDs), tx.Bucket(bucketExp)
		for id, until := range ids {
			if idb.Get([]byte(id)) != nil {
				continue
			}
			if err := idb.Put([]byte(id), until); err != nil {
				return err
			}
			if err := exp.Put(expKey(until, []byte(id)), nil); err != nil {
				return err
			}
			rec.IDs++
		}
		return nil
	})
	if err != nil {
		rec.Err, rec.IDs, rec.Whole = fmt.Sprintf("store the salvaged ids: %v", err), 0, false
	}
	s.mu.Lock()
	s.ids += rec.IDs
	s.mu.Unlock()
	return s, rec, nil
}
