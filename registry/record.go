package registry

import (
	"encoding/json"
	"errors"
	"fmt"
)

// changeRecord is one change in the replicated log: the resulting records
// (what the bbolt half of a writeTxn holds), never "do X now", so replaying
// the log yields the same state on every node. Audit entries carry no ID:
// each node numbers them from its own audit bucket, in log order.
type changeRecord struct {
	Format int           `json:"format"`
	ID     string        `json:"id"`
	Ops    []opRecord    `json:"ops,omitempty"`
	Audit  []auditRecord `json:"audit,omitempty"`
}

// opRecord is one diskOp. Val is the JSON record stored under Key (the
// same bytes as on disk); absent means delete.
type opRecord struct {
	Bucket string          `json:"bucket"`
	Key    string          `json:"key"`
	Val    json.RawMessage `json:"val,omitempty"`
	New    bool            `json:"new,omitempty"`
}

func encodeChange(w *writeTxn) ([]byte, error) {
	c := changeRecord{Format: recordFormat, ID: w.id, Ops: make([]opRecord, len(w.ops))}
	for i, op := range w.ops {
		c.Ops[i] = opRecord{Bucket: string(op.bucket), Key: string(op.key), Val: op.val, New: op.mustBeNew}
	}
	for _, e := range w.audit {
		c.Audit = append(c.Audit, auditRecord(e))
	}
	b, err := json.Marshal(c)
	if err != nil {
		return nil, fmt.Errorf("registry: encode log record: %w", err)
	}
	return b, nil
}

// decodeChange parses a log record strictly: a record this build does not
// fully understand is an error, never half-applied.
func decodeChange(rec []byte) (*changeRecord, error) {
	var c changeRecord
	if err := decodeStrict(rec, &c); err != nil {
		return nil, fmt.Errorf("decode: %w", err)
	}
	if c.Format != recordFormat {
		return nil, fmt.Errorf("record format %d is unknown to this build (it reads %d)", c.Format, recordFormat)
	}
	if c.ID == "" {
		return nil, errors.New("record has no id")
	}
	return &c, nil
}

// replay stages a record from the log in w, checking it against the local
// state: a record that does not fit (a new record that exists, a delete of
// nothing, a duplicate SPIFFE ID) means this node diverged, and is an error.
func (w *writeTxn) replay(c *changeRecord) error {
	for i, op := range c.Ops {
		var err error
		switch op.Bucket {
		case string(bucketDevices):
			err = w.replayDevice(op)
		case string(bucketTokens):
			err = w.replayToken(op)
		default:
			err = fmt.Errorf("unknown bucket %s", quote(op.Bucket))
		}
		if err != nil {
			return fmt.Errorf("op %d (%s %s): %w", i, op.Bucket, quote(op.Key), err)
		}
	}
	for i, a := range c.Audit {
		e := AuditEntry(a)
		if e.ID != 0 || e.Action == "" || !validResult(e.Result) {
			return fmt.Errorf("audit entry %d is malformed", i)
		}
		e.Time = e.Time.UTC()
		w.audit = append(w.audit, e)
	}
	return nil
}

func validResult(r string) bool {
	return r == ResultOK || r == ResultDenied || r == ResultError
}

func (w *writeTxn) replayDevice(op opRecord) error {
	cur, err := lookup(w.mem, indexID, op.Key)
	if err != nil {
		return err
	}
	if op.Val == nil {
		if cur == nil {
			return errors.New("deletes a device that is not here")
		}
		if err := w.mem.Delete(tableDevices, cur); err != nil {
			return fmt.Errorf("delete: %w", err)
		}
		w.ops = append(w.ops, diskOp{bucket: bucketDevices, key: []byte(op.Key)})
		w.devices = true
		w.delta--
		return nil
	}
	d, err := decode([]byte(op.Key), op.Val)
	if err != nil {
		return err
	}
	if op.New && cur != nil {
		return errors.New("creates a device that is already here")
	}
	if other, err := lookup(w.mem, indexSPIFFEID, d.SPIFFEID); err != nil {
		return err
	} else if other != nil && other.Name != d.Name {
		return fmt.Errorf("spiffe_id %s is used by %s here", quote(d.SPIFFEID), quote(other.Name))
	}
	if err := w.mem.Insert(tableDevices, d); err != nil {
		return fmt.Errorf("insert: %w", err)
	}
	w.ops = append(w.ops, diskOp{bucket: bucketDevices, key: []byte(op.Key), val: op.Val, mustBeNew: op.New})
	w.devices = true
	if cur == nil {
		w.delta++
	}
	return nil
}

func (w *writeTxn) replayToken(op opRecord) error {
	raw, err := w.mem.First(tableTokens, indexID, op.Key)
	if err != nil {
		return fmt.Errorf("lookup token: %w", err)
	}
	if op.Val == nil {
		if raw == nil {
			return errors.New("deletes a token that is not here")
		}
		return w.deleteToken(raw.(*token))
	}
	t, err := decodeToken([]byte(op.Key), op.Val)
	if err != nil {
		return err
	}
	if op.New && raw != nil {
		return errors.New("creates a token that is already here")
	}
	dev, err := lookup(w.mem, indexID, t.Device)
	if err != nil {
		return err
	}
	if dev == nil || dev.SPIFFEID != t.SPIFFEID {
		return fmt.Errorf("device %s with spiffe_id %s is not here", quote(t.Device), quote(t.SPIFFEID))
	}
	if other, err := tokenOf(w.mem, t.Device); err != nil {
		return err
	} else if other != nil && other.ID != t.ID {
		return fmt.Errorf("device %s also has token %s", quote(t.Device), quote(other.ID))
	}
	if err := w.mem.Insert(tableTokens, t); err != nil {
		return fmt.Errorf("insert token: %w", err)
	}
	w.ops = append(w.ops, diskOp{bucket: bucketTokens, key: []byte(op.Key), val: op.Val, mustBeNew: op.New})
	return nil
}
