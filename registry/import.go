package registry

import (
	"errors"
	"fmt"
	"maps"
	"strings"
)

// Outcomes of one imported row.
const (
	ImportCreated   = "created"
	ImportUnchanged = "unchanged"
	ImportError     = "error"
)

// importBatch is how many rows share one bbolt transaction (one fsync).
const importBatch = 500

// ImportResult is the outcome of one row of an Import.
type ImportResult struct {
	Row    int    `json:"row"` // index into the rows given to Import
	Name   string `json:"name"`
	Result string `json:"result"` // created | unchanged | error
	Error  string `json:"error,omitempty"`
}

// Import creates the devices of rows that do not exist yet, and is
// idempotent: importing the same rows again changes nothing. Each row is
// validated like Create (SPIFFEID required; an empty status means active).
// A row whose device exists is unchanged when it agrees with the stored
// device (same SPIFFE ID and labels, and the same status if the row sets
// one) and an error when it does not: Import never changes an existing
// device. A row that is invalid or conflicts is reported and the other rows
// are still applied.
//
// Rows are written in batches of 500 per bbolt transaction, each created
// device with its audit entry (actor, action device.create); a batch is
// durable before the next one starts. The error return is for a failure of
// the store itself (closed, disk): results then cover the rows of the
// batches written before it. On a replicated store a batch too large for
// one log record is split into smaller ones.
func (s *Store) Import(rows []Device, actor string, opts ...WriteOption) ([]ImportResult, error) {
	o, err := options(append(opts[:len(opts):len(opts)], WithActor(actor)))
	if err != nil {
		return nil, err
	}
	o.detail = strings.TrimPrefix(o.detail+"; import", "; ")
	results := make([]ImportResult, 0, len(rows))
	size := importBatch
	for start := 0; start < len(rows); {
		batch := rows[start:min(start+size, len(rows))]
		var res []ImportResult
		err := s.write(func(w *writeTxn) error {
			res = make([]ImportResult, len(batch))
			for i, row := range batch {
				res[i] = importRow(w, o, row)
				res[i].Row = start + i
			}
			return nil
		})
		// A replicated batch too large for one log record was not
		// written: halve it until it fits, down to a single row.
		if errors.Is(err, ErrRecordTooLarge) && len(batch) > 1 {
			size = len(batch) / 2
			continue
		}
		if err != nil {
			return results, err
		}
		results = append(results, res...)
		start += len(batch)
	}
	return results, nil
}

// importRow stages one row in w and returns its outcome. A refused row
// stages nothing.
func importRow(w *writeTxn, o writeOptions, row Device) ImportResult {
	res := ImportResult{Name: row.Name}
	fail := func(err error) ImportResult {
		res.Result, res.Error = ImportError, err.Error()
		return res
	}
	dev, err := normalize(row)
	if err != nil {
		return fail(err)
	}
	cur, err := lookup(w.mem, indexID, dev.Name)
	if err != nil {
		return fail(err)
	}
	if cur != nil {
		if diff := differs(cur, dev, row.Status != ""); diff != "" {
			return fail(fmt.Errorf("%w: device %s exists with a different %s; import does not change existing devices",
				ErrExists, quote(dev.Name), diff))
		}
		res.Result = ImportUnchanged
		return res
	}
	if err := checkNew(w.mem, dev); err != nil {
		return fail(err)
	}
	dev.CreatedAt, dev.UpdatedAt = w.now, w.now
	if err := w.putDevice(dev, true); err != nil {
		return fail(err)
	}
	w.record(o, ActionDeviceCreate, dev.Name, describe(dev))
	res.Result = ImportCreated
	return res
}

// differs names the first field in which the row disagrees with the stored
// device, "" if none.
func differs(cur, row *Device, statusSet bool) string {
	switch {
	case cur.SPIFFEID != row.SPIFFEID:
		return fmt.Sprintf("spiffe_id (%s, not %s)", quote(cur.SPIFFEID), quote(row.SPIFFEID))
	case !maps.Equal(cur.Labels, row.Labels):
		return fmt.Sprintf("labels ({%s}, not {%s})", formatLabels(cur.Labels), formatLabels(row.Labels))
	case statusSet && cur.Status != row.Status:
		return fmt.Sprintf("status (%s, not %s)", cur.Status, row.Status)
	}
	return ""
}
