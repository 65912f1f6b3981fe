package registry

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/hashicorp/go-memdb"
)

// memdb tables and indexes.
const (
	tableDevices = "devices"
	tableTokens  = "tokens"

	indexID       = "id" // the device name (token ID in tokens); memdb requires the primary index to be called "id"
	indexSPIFFEID = "spiffe_id"
	indexStatus   = "status"
	indexLabels   = "labels"
	indexDevice   = "device"  // tokens: the device a token enrolls, one token per device
	indexExpires  = "expires" // tokens: by expiry, for pruning
)

// bbolt buckets and keys of the store of record.
var (
	bucketDevices = []byte("devices") // device name -> JSON record
	bucketTokens  = []byte("tokens")  // token ID -> JSON token record (hash of the secret, never the secret)
	bucketAudit   = []byte("audit")   // big-endian sequence -> JSON audit entry
	bucketMeta    = []byte("meta")
	keyVersion    = []byte("schema_version")
	// keyAppliedSeq and keyAppliedID checkpoint a replicated store: the
	// sequence (big-endian) and record ID of the last log record applied.
	// A single-node store writes neither.
	keyAppliedSeq = []byte("applied_seq")
	keyAppliedID  = []byte("applied_id")
)

// schemaVersion is the on-disk format written to meta/schema_version. The
// tokens and audit buckets were added without a new version: they are
// created on Open when missing, and a build that predates them refuses a
// file holding a pending device (unknown status) rather than misreading it.
const schemaVersion = "1"

func dbSchema() *memdb.DBSchema {
	return &memdb.DBSchema{
		Tables: map[string]*memdb.TableSchema{
			tableDevices: {
				Name: tableDevices,
				Indexes: map[string]*memdb.IndexSchema{
					indexID: {
						Name:    indexID,
						Unique:  true,
						Indexer: &memdb.StringFieldIndex{Field: "Name"},
					},
					indexSPIFFEID: {
						Name:    indexSPIFFEID,
						Unique:  true,
						Indexer: &memdb.StringFieldIndex{Field: "SPIFFEID"},
					},
					indexStatus: {
						Name:    indexStatus,
						Indexer: statusIndexer{},
					},
					// One entry per key/value pair, for label selectors. Only
					// (key, value) lookups work, not keys alone.
					indexLabels: {
						Name:         indexLabels,
						AllowMissing: true,
						Indexer:      labelsIndexer{},
					},
				},
			},
			tableTokens: {
				Name: tableTokens,
				Indexes: map[string]*memdb.IndexSchema{
					indexID: {
						Name:    indexID,
						Unique:  true,
						Indexer: &memdb.StringFieldIndex{Field: "ID"},
					},
					indexDevice: {
						Name:    indexDevice,
						Unique:  true,
						Indexer: &memdb.StringFieldIndex{Field: "Device"},
					},
					indexExpires: {
						Name:    indexExpires,
						Indexer: expiresIndexer{},
					},
				},
			},
		},
	}
}

func newMemDB() (*memdb.MemDB, error) {
	db, err := memdb.NewMemDB(dbSchema())
	if err != nil {
		return nil, fmt.Errorf("registry: memdb schema: %w", err)
	}
	return db, nil
}

// Seekable device indexes.
//
// memdb keys an entry of a non-unique index by the indexed value followed by
// the primary key, here the device name and a NUL: "role\x00sensor\x00" +
// "dev-7\x00". The two indexers below take the device name of a page cursor
// as an optional last argument and append it without the NUL, so
// txn.LowerBound lands on the cursor's own entry (or the first name after
// it) instead of the start of the range: a deep page of a large selection
// costs what the first page costs. Names, label keys and values and
// statuses never contain a NUL (validate.go), so the separators are safe.

// labelsIndexer indexes each label pair as "key\x00value\x00".
// FromArgs(key, value) selects one pair; FromArgs(key, value, after) is the
// lower bound of the names after the cursor within that pair.
type labelsIndexer struct{}

func (labelsIndexer) FromObject(obj any) (bool, [][]byte, error) {
	d, ok := obj.(*Device)
	if !ok {
		return false, nil, fmt.Errorf("labels index: %T is not a *Device", obj)
	}
	if len(d.Labels) == 0 {
		return false, nil, nil
	}
	vals := make([][]byte, 0, len(d.Labels))
	for k, v := range d.Labels {
		vals = append(vals, labelKey(k, v, ""))
	}
	return true, vals, nil
}

func (labelsIndexer) FromArgs(args ...any) ([]byte, error) {
	s, err := stringArgs(args, 2, 3)
	if err != nil {
		return nil, fmt.Errorf("labels index: %w", err)
	}
	if len(s) == 2 {
		return labelKey(s[0], s[1], ""), nil
	}
	return labelKey(s[0], s[1], s[2]), nil
}

// labelKey is "k\x00v\x00" followed by after, which is not terminated.
func labelKey(k, v, after string) []byte {
	b := make([]byte, 0, len(k)+len(v)+len(after)+2)
	b = append(b, k...)
	b = append(b, 0)
	b = append(b, v...)
	b = append(b, 0)
	return append(b, after...)
}

// statusIndexer indexes a device's status as "status\x00". FromArgs(status)
// selects one status; FromArgs(status, after) is the lower bound of the names
// after the cursor within it.
type statusIndexer struct{}

func (statusIndexer) FromObject(obj any) (bool, []byte, error) {
	d, ok := obj.(*Device)
	if !ok {
		return false, nil, fmt.Errorf("status index: %T is not a *Device", obj)
	}
	return true, append([]byte(d.Status), 0), nil
}

func (statusIndexer) FromArgs(args ...any) ([]byte, error) {
	s, err := stringArgs(args, 1, 2)
	if err != nil {
		return nil, fmt.Errorf("status index: %w", err)
	}
	b := append([]byte(s[0]), 0)
	if len(s) == 2 {
		b = append(b, s[1]...)
	}
	return b, nil
}

func stringArgs(args []any, min, max int) ([]string, error) {
	if len(args) < min || len(args) > max {
		return nil, fmt.Errorf("want %d to %d arguments, got %d", min, max, len(args))
	}
	out := make([]string, len(args))
	for i, a := range args {
		s, ok := a.(string)
		if !ok {
			return nil, fmt.Errorf("argument %d is a %T, not a string", i, a)
		}
		out[i] = s
	}
	return out, nil
}

// expiresIndexer orders tokens by expiry (big-endian Unix nanoseconds, so
// byte order is time order), for pruning without a scan of every token.
type expiresIndexer struct{}

func (expiresIndexer) FromObject(obj any) (bool, []byte, error) {
	t, ok := obj.(*token)
	if !ok {
		return false, nil, fmt.Errorf("expires index: %T is not a *token", obj)
	}
	return true, timeKey(t.ExpiresAt), nil
}

func (expiresIndexer) FromArgs(args ...any) ([]byte, error) {
	if len(args) != 1 {
		return nil, errors.New("expires index: want one time.Time argument")
	}
	t, ok := args[0].(time.Time)
	if !ok {
		return nil, fmt.Errorf("expires index: argument is a %T, not a time.Time", args[0])
	}
	return timeKey(t), nil
}

// timeKey encodes t so that byte order is time order; times before 1970 or
// after 2262 (outside UnixNano) are clamped.
func timeKey(t time.Time) []byte {
	var n uint64
	switch {
	case t.Before(time.Unix(0, 0)):
		n = 0
	case t.After(time.Unix(0, math.MaxInt64)):
		n = math.MaxInt64
	default:
		n = uint64(t.UnixNano())
	}
	return binary.BigEndian.AppendUint64(make([]byte, 0, 8), n)
}
