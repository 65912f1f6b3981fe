package registry

import (
	"fmt"
	"maps"
	"slices"
)

// PatchLabels changes some labels of a device: the keys of set are added
// or replaced, the keys of remove deleted (a key the device does not carry
// is no error). The change is made under the writer lock against the
// stored record, so patches made at once never lose each other's keys, as
// a read followed by SetLabels would. The keys and values are checked as
// SetLabels checks them, on the result too (at most 64 labels); a key both
// set and removed is refused (ErrInvalid). A patch that changes nothing
// writes nothing.
func (s *Store) PatchLabels(name string, set map[string]string, remove []string, opts ...WriteOption) (*Device, error) {
	if err := validateLabels(set); err != nil {
		return nil, err
	}
	for _, k := range remove {
		if err := validateLabelKey(k); err != nil {
			return nil, err
		}
		if _, ok := set[k]; ok {
			return nil, fmt.Errorf("%w: label %s is both set and removed", ErrInvalid, quote(k))
		}
	}
	o, err := options(opts)
	if err != nil {
		return nil, err
	}
	set = cloneLabels(set)
	remove = slices.Clone(remove)
	return s.update(name, func(w *writeTxn, cur *Device) (*Device, error) {
		labels := cloneLabels(cur.Labels)
		maps.Copy(labels, set)
		for _, k := range remove {
			delete(labels, k)
		}
		if maps.Equal(cur.Labels, labels) {
			return nil, nil
		}
		if err := validateLabels(labels); err != nil {
			return nil, err
		}
		next := *cur
		next.Labels = labels
		w.record(o, ActionDeviceLabels, name, fmt.Sprintf("{%s} -> {%s}", formatLabels(cur.Labels), formatLabels(labels)))
		return &next, nil
	})
}
