package registry

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/hashicorp/go-memdb"
)

// Query selects a page of devices for ListDevices.
type Query struct {
	// Selector lists labels a device must all carry (key=value, exact).
	Selector map[string]string
	// Status, when set, keeps only devices in that state.
	Status Status
	// After is the cursor: the page starts after the device of that name.
	// It is the next value of the previous page ("" for the first page).
	After string
	// Limit is the page size: 0 means 100, at most 1000.
	Limit int
}

// ListDevices returns a page of the devices that match q, sorted by name,
// and the cursor of the next page ("" when this is the last page).
//
// It is served from memdb indexes, never a scan of the whole table: with a
// selector, the label index range of its first pair (in key order) is
// walked from the cursor and the other pairs and the status are checked on
// each device; with only a status, the status index; otherwise the name
// index. A page costs what the first page costs, however deep it is.
func (s *Store) ListDevices(q Query) ([]*Device, string, error) {
	limit, err := checkQuery(q)
	if err != nil {
		return nil, "", err
	}
	if s.closed.Load() {
		return nil, "", ErrClosed
	}
	txn := s.db.Txn(false)
	defer txn.Abort()

	var (
		it memdb.ResultIterator
		// inRange reports whether d still belongs to the walked range, given
		// the name of the previous device of the range (or the cursor).
		inRange func(d *Device, prev string) bool
		// rest are the conditions the index range does not ensure.
		restSel    map[string]string
		restStatus Status
	)
	switch {
	case len(q.Selector) > 0:
		k := slices.Min(slices.Collect(maps.Keys(q.Selector)))
		v := q.Selector[k]
		it, err = txn.LowerBound(tableDevices, indexLabels, k, v, q.After)
		// One device has an entry per label, so leaving the (k, v) range
		// can land on an entry of a device that also carries k=v. Within
		// the range names strictly increase, and a device with k=v whose
		// name is greater than the previous one has not been seen yet, so
		// its k=v entry lies ahead: the walk is still in the range exactly
		// when the device carries k=v and its name has not been passed.
		inRange = func(d *Device, prev string) bool {
			val, ok := d.Labels[k]
			return ok && val == v && d.Name > prev
		}
		restSel = maps.Clone(q.Selector)
		delete(restSel, k)
		restStatus = q.Status
	case q.Status != "":
		// One entry per device: the range ends where the status changes.
		it, err = txn.LowerBound(tableDevices, indexStatus, string(q.Status), q.After)
		inRange = func(d *Device, _ string) bool { return d.Status == q.Status }
	default:
		it, err = txn.LowerBound(tableDevices, indexID, q.After)
		inRange = func(*Device, string) bool { return true }
	}
	if err != nil {
		return nil, "", fmt.Errorf("registry: list: %w", err)
	}

	out := make([]*Device, 0, min(limit, s.Len()))
	prev := q.After
	for raw := it.Next(); raw != nil; raw = it.Next() {
		d := raw.(*Device)
		if d.Name == q.After && q.After != "" {
			continue // the lower bound includes the cursor itself
		}
		if !inRange(d, prev) {
			break
		}
		prev = d.Name
		if restStatus != "" && d.Status != restStatus || !hasLabels(d, restSel) {
			continue
		}
		if len(out) == limit {
			// One more match exists: this page is not the last.
			return out, out[len(out)-1].Name, nil
		}
		out = append(out, d.Clone())
	}
	return out, "", nil
}

func hasLabels(d *Device, sel map[string]string) bool {
	for k, v := range sel {
		if got, ok := d.Labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}

// checkQuery validates q and returns its effective page size.
func checkQuery(q Query) (int, error) {
	if q.Limit < 0 {
		return 0, fmt.Errorf("%w: limit %d is negative", ErrInvalidQuery, q.Limit)
	}
	limit := q.Limit
	if limit == 0 {
		limit = defaultPageSize
	}
	limit = min(limit, maxPageSize)
	if q.Status != "" && !q.Status.Valid() {
		return 0, fmt.Errorf("%w: status %s: %s", ErrInvalidQuery, quote(string(q.Status)), statusRule)
	}
	if q.After != "" {
		if err := ValidateName(q.After); err != nil {
			return 0, fmt.Errorf("%w: cursor %s is not a device name", ErrInvalidQuery, quote(q.After))
		}
	}
	if err := checkSelector(q.Selector); err != nil {
		return 0, err
	}
	return limit, nil
}

func checkSelector(sel map[string]string) error {
	if len(sel) > maxLabels {
		return fmt.Errorf("%w: selector has %d terms, at most %d allowed", ErrInvalidQuery, len(sel), maxLabels)
	}
	// A label that could never be stored can never match; refusing it says
	// so instead of answering with an empty page.
	if err := validateLabels(sel); err != nil {
		return fmt.Errorf("%w: selector: %s", ErrInvalidQuery, strings.TrimPrefix(err.Error(), ErrInvalid.Error()+": "))
	}
	return nil
}

// ParseSelector parses a label selector such as "site=plant-a,role=sensor":
// comma-separated key=value terms that a device must all match. Space around
// keys and values is ignored; "" selects everything. Only equality is
// supported, and a key may appear once. Errors wrap ErrInvalidQuery (and so
// ErrInvalid).
func ParseSelector(s string) (map[string]string, error) {
	sel := map[string]string{}
	if strings.TrimSpace(s) == "" {
		return sel, nil
	}
	for i, term := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(term, "=")
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		switch {
		case strings.TrimSpace(term) == "":
			return nil, fmt.Errorf("%w: selector term %d is empty (stray comma?)", ErrInvalidQuery, i+1)
		case !ok:
			return nil, fmt.Errorf("%w: selector term %s is not key=value", ErrInvalidQuery, quote(term))
		case strings.HasPrefix(v, "=") || strings.HasSuffix(k, "!"):
			return nil, fmt.Errorf("%w: selector term %s: only key=value is supported", ErrInvalidQuery, quote(term))
		case k == "":
			return nil, fmt.Errorf("%w: selector term %s has no key", ErrInvalidQuery, quote(term))
		}
		if _, dup := sel[k]; dup {
			return nil, fmt.Errorf("%w: selector key %s appears twice", ErrInvalidQuery, quote(k))
		}
		sel[k] = v
	}
	if err := checkSelector(sel); err != nil {
		return nil, err
	}
	return sel, nil
}
