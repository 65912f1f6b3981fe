package registry

import (
	"fmt"

	"github.com/hashicorp/go-memdb"
)

// memdb tables and indexes.
const (
	tableDevices = "devices"

	indexID       = "id" // the device name; memdb requires the primary index to be called "id"
	indexSPIFFEID = "spiffe_id"
	indexStatus   = "status"
	indexLabels   = "labels"
)

// bbolt buckets and keys of the store of record.
var (
	bucketDevices = []byte("devices") // device name -> JSON record
	bucketMeta    = []byte("meta")
	keyVersion    = []byte("schema_version")
)

// schemaVersion is the on-disk format written to meta/schema_version.
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
						Indexer: &memdb.StringFieldIndex{Field: "Status"},
					},
					// One entry per key/value pair, for label selectors. Only
					// (key, value) lookups work: memdb's StringMapFieldIndex
					// does not index keys alone.
					indexLabels: {
						Name:         indexLabels,
						AllowMissing: true,
						Indexer:      &memdb.StringMapFieldIndex{Field: "Labels"},
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
