package registry

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/hashicorp/go-memdb"
	"go.etcd.io/bbolt"
)

// lockTimeout bounds the wait for bbolt's file lock, so a second process
// opening the same file fails with a clear error instead of hanging.
var lockTimeout = 2 * time.Second

// record is the on-disk form of a Device (bucket "devices", key = name). It is
// its own type so that changes to the API type cannot silently change the
// format of the store of record: encode converts between the two, so a field
// added to Device does not compile until the on-disk format is decided.
type record struct {
	Name      string            `json:"name"`
	SPIFFEID  string            `json:"spiffe_id"`
	Labels    map[string]string `json:"labels"`
	Status    Status            `json:"status"`
	CreatedAt time.Time         `json:"created_at"`
	UpdatedAt time.Time         `json:"updated_at"`
}

func encode(d *Device) ([]byte, error) {
	b, err := json.Marshal(record(*d))
	if err != nil {
		return nil, fmt.Errorf("registry: encode %s: %w", quote(d.Name), err)
	}
	return b, nil
}

// decode parses and validates one stored record; key is the bbolt key.
func decode(key, val []byte) (*Device, error) {
	var r record
	dec := json.NewDecoder(bytes.NewReader(val))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&r); err != nil {
		return nil, err
	}
	if dec.More() {
		return nil, errors.New("trailing data after record")
	}
	if r.Status == "" {
		return nil, errors.New("record has no status")
	}
	if r.Name != string(key) {
		return nil, fmt.Errorf("record name %s does not match its key", quote(r.Name))
	}
	d, err := normalize(Device(r))
	if err != nil {
		return nil, err
	}
	if d.SPIFFEID != r.SPIFFEID {
		return nil, fmt.Errorf("spiffe_id %s is not in canonical form", quote(r.SPIFFEID))
	}
	d.CreatedAt = r.CreatedAt.UTC()
	d.UpdatedAt = r.UpdatedAt.UTC()
	return d, nil
}

// openBolt opens (creating if needed) the bbolt file and makes sure its
// buckets exist and its schema version is one we understand.
func openBolt(path string) (*bbolt.DB, error) {
	if path == "" {
		return nil, errors.New("registry: empty database path")
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("registry: create directory: %w", err)
	}
	// NoSync stays false: bbolt fsyncs every committed Update, which is what
	// makes "returned nil" mean "on disk".
	bdb, err := bbolt.Open(path, 0o600, &bbolt.Options{Timeout: lockTimeout})
	if errors.Is(err, bbolt.ErrTimeout) {
		return nil, fmt.Errorf("registry: open %s: file is locked by another process", path)
	}
	if err != nil {
		return nil, fmt.Errorf("registry: open %s: %w", path, err)
	}
	err = bdb.Update(func(tx *bbolt.Tx) error {
		devices, err := tx.CreateBucketIfNotExists(bucketDevices)
		if err != nil {
			return err
		}
		meta, err := tx.CreateBucketIfNotExists(bucketMeta)
		if err != nil {
			return err
		}
		switch v := meta.Get(keyVersion); {
		case v == nil:
			if k, _ := devices.Cursor().First(); k != nil {
				return errors.New("devices present but no schema version")
			}
			return meta.Put(keyVersion, []byte(schemaVersion))
		case string(v) != schemaVersion:
			return fmt.Errorf("unsupported schema version %s (this build reads %s)", quote(string(v)), schemaVersion)
		}
		return nil
	})
	if err != nil {
		_ = bdb.Close()
		return nil, fmt.Errorf("registry: open %s: %w", path, err)
	}
	return bdb, nil
}

// load copies every device from bbolt into an empty memdb, in one memdb
// transaction. Any bad record fails the whole load: the registry decides who
// may connect, so it does not start from a partial view.
func load(bdb *bbolt.DB, db *memdb.MemDB) (int, error) {
	txn := db.Txn(true)
	defer txn.Abort()
	n := 0
	err := bdb.View(func(tx *bbolt.Tx) error {
		return tx.Bucket(bucketDevices).ForEach(func(k, v []byte) error {
			d, err := decode(k, v)
			if err != nil {
				return fmt.Errorf("record %s: %w", quote(string(k)), err)
			}
			other, err := txn.First(tableDevices, indexSPIFFEID, d.SPIFFEID)
			if err != nil {
				return fmt.Errorf("record %s: %w", quote(string(k)), err)
			}
			if other != nil {
				return fmt.Errorf("record %s: spiffe_id %s is also used by %s",
					quote(string(k)), quote(d.SPIFFEID), quote(other.(*Device).Name))
			}
			if err := txn.Insert(tableDevices, d); err != nil {
				return fmt.Errorf("record %s: %w", quote(string(k)), err)
			}
			n++
			return nil
		})
	})
	if err != nil {
		return 0, fmt.Errorf("registry: load %s: %w", bdb.Path(), err)
	}
	txn.Commit()
	return n, nil
}
