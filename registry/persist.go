package registry

import (
	"bytes"
	"encoding/hex"
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

// decodeStrict parses exactly one JSON value into v, refusing unknown
// fields and trailing data: a record this build does not fully understand
// is an error, never silently half-read.
func decodeStrict(val []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(val))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return errors.New("trailing data after record")
	}
	return nil
}

// decode parses and validates one stored record; key is the bbolt key.
func decode(key, val []byte) (*Device, error) {
	var r record
	if err := decodeStrict(val, &r); err != nil {
		return nil, err
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
		for _, name := range [][]byte{bucketTokens, bucketAudit} {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return err
			}
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

// load copies every device and token from bbolt into an empty memdb, in one
// memdb transaction, and returns the number of devices. Any bad record fails
// the whole load: the registry decides who may connect, so it does not start
// from a partial view. The audit log is not read: it is not needed to serve,
// and a cold start should not grow with its history.
func load(bdb *bbolt.DB, db *memdb.MemDB) (int, error) {
	txn := db.Txn(true)
	defer txn.Abort()
	n := 0
	err := bdb.View(func(tx *bbolt.Tx) error {
		err := tx.Bucket(bucketDevices).ForEach(func(k, v []byte) error {
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
		if err != nil {
			return err
		}
		return tx.Bucket(bucketTokens).ForEach(func(k, v []byte) error {
			if err := loadToken(txn, k, v); err != nil {
				return fmt.Errorf("token record %s: %w", quote(string(k)), err)
			}
			return nil
		})
	})
	if err != nil {
		return 0, fmt.Errorf("registry: load %s: %w", bdb.Path(), err)
	}
	txn.Commit()
	return n, nil
}

// loadToken decodes one token record and checks it against the devices
// already loaded: a token always belongs to a device under the same SPIFFE
// ID, and a device has at most one token.
func loadToken(txn *memdb.Txn, k, v []byte) error {
	t, err := decodeToken(k, v)
	if err != nil {
		return err
	}
	dev, err := lookup(txn, indexID, t.Device)
	if err != nil {
		return err
	}
	if dev == nil {
		return fmt.Errorf("device %s does not exist", quote(t.Device))
	}
	if dev.SPIFFEID != t.SPIFFEID {
		return fmt.Errorf("spiffe_id %s is not that of device %s", quote(t.SPIFFEID), quote(t.Device))
	}
	if other, err := tokenOf(txn, t.Device); err != nil {
		return err
	} else if other != nil {
		return fmt.Errorf("device %s also has token %s", quote(t.Device), quote(other.ID))
	}
	if err := txn.Insert(tableTokens, t); err != nil {
		return err
	}
	return nil
}

// tokenRecord is the on-disk form of a token (bucket "tokens", key = ID),
// its own type for the reason given at record. The secret is never stored.
type tokenRecord struct {
	ID        string     `json:"id"`
	Device    string     `json:"device"`
	SPIFFEID  string     `json:"spiffe_id"`
	SHA256    string     `json:"sha256"` // hex SHA-256 of the secret
	CreatedAt time.Time  `json:"created_at"`
	ExpiresAt time.Time  `json:"expires_at"`
	UsedAt    *time.Time `json:"used_at,omitempty"`
	CreatedBy string     `json:"created_by"`
	// KeySHA256 is the hex SHA-256 of the public key a used token was
	// redeemed for (absent when it was redeemed for none, and on a token
	// written before keys were kept).
	KeySHA256 string `json:"key_sha256,omitempty"`
}

func encodeToken(t *token) ([]byte, error) {
	r := tokenRecord{
		ID: t.ID, Device: t.Device, SPIFFEID: t.SPIFFEID, SHA256: hex.EncodeToString(t.Hash[:]),
		CreatedAt: t.CreatedAt, ExpiresAt: t.ExpiresAt, CreatedBy: t.CreatedBy,
	}
	if !t.UsedAt.IsZero() {
		used := t.UsedAt
		r.UsedAt = &used
	}
	if t.HasKey {
		r.KeySHA256 = hex.EncodeToString(t.KeySum[:])
	}
	b, err := json.Marshal(r)
	if err != nil {
		return nil, fmt.Errorf("registry: encode token %s: %w", quote(t.ID), err)
	}
	return b, nil
}

func decodeToken(key, val []byte) (*token, error) {
	var r tokenRecord
	if err := decodeStrict(val, &r); err != nil {
		return nil, err
	}
	if r.ID != string(key) || !isTokenID(r.ID) {
		return nil, fmt.Errorf("record id %s does not match its key or is malformed", quote(r.ID))
	}
	if err := ValidateName(r.Device); err != nil {
		return nil, err
	}
	if id, err := validateSPIFFEID(r.SPIFFEID); err != nil {
		return nil, err
	} else if id != r.SPIFFEID {
		return nil, fmt.Errorf("spiffe_id %s is not in canonical form", quote(r.SPIFFEID))
	}
	t := &token{
		ID: r.ID, Device: r.Device, SPIFFEID: r.SPIFFEID, CreatedBy: r.CreatedBy,
		CreatedAt: r.CreatedAt.UTC(), ExpiresAt: r.ExpiresAt.UTC(),
	}
	h, err := hex.DecodeString(r.SHA256)
	if err != nil || len(h) != len(t.Hash) {
		return nil, errors.New("sha256 is not 64 hex digits")
	}
	copy(t.Hash[:], h)
	if t.ExpiresAt.IsZero() {
		return nil, errors.New("record has no expiry")
	}
	if r.UsedAt != nil {
		if r.UsedAt.IsZero() {
			return nil, errors.New("used_at is the zero time")
		}
		t.UsedAt = r.UsedAt.UTC()
	}
	if r.KeySHA256 != "" {
		k, err := hex.DecodeString(r.KeySHA256)
		if err != nil || len(k) != len(t.KeySum) {
			return nil, errors.New("key_sha256 is not 64 hex digits")
		}
		if t.UsedAt.IsZero() {
			return nil, errors.New("key_sha256 on a token that was never used")
		}
		copy(t.KeySum[:], k)
		t.HasKey = true
	}
	return t, nil
}
