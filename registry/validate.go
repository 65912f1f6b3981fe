package registry

import (
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

const (
	nameRule = `1 to 63 characters of [a-z0-9._-], starting with a letter or digit, without ".."`

	maxLabels        = 64
	maxLabelKeyLen   = 63
	maxLabelValueLen = 253
	// maxSPIFFEIDLen is the URI length limit of the SPIFFE ID specification.
	maxSPIFFEIDLen = 2048
	// maxQuoted bounds how much of a rejected input is echoed in an error.
	maxQuoted = 80
)

// Device names end up in SPIFFE IDs and MQTT topic templates, so they may not
// contain anything with meaning there: no '/', '+', '#', no "..".
var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)

// ValidateName reports whether name is an acceptable device name:
// [a-z0-9][a-z0-9._-]{0,62} with no "..". The error wraps ErrInvalidName.
func ValidateName(name string) error {
	if !nameRE.MatchString(name) || strings.Contains(name, "..") {
		return fmt.Errorf("%w %s: must be %s", ErrInvalidName, quote(name), nameRule)
	}
	return nil
}

// validateSPIFFEID returns the ID in canonical form or an error wrapping ErrInvalid.
func validateSPIFFEID(s string) (string, error) {
	if s == "" {
		return "", fmt.Errorf("%w: spiffe_id is required", ErrInvalid)
	}
	if len(s) > maxSPIFFEIDLen {
		return "", fmt.Errorf("%w: spiffe_id is longer than %d bytes", ErrInvalid, maxSPIFFEIDLen)
	}
	id, err := spiffeid.FromString(s)
	if err != nil {
		return "", fmt.Errorf("%w: spiffe_id %s: %v", ErrInvalid, quote(s), err)
	}
	if id.Path() == "" {
		return "", fmt.Errorf("%w: spiffe_id %s has an empty path", ErrInvalid, quote(s))
	}
	return id.String(), nil
}

// validateLabels checks keys and values; errors wrap ErrInvalid. Keys are
// checked in sorted order so the error for a given map is always the same.
func validateLabels(labels map[string]string) error {
	if len(labels) > maxLabels {
		return fmt.Errorf("%w: %d labels, at most %d allowed", ErrInvalid, len(labels), maxLabels)
	}
	for _, k := range slices.Sorted(maps.Keys(labels)) {
		if err := validateLabelKey(k); err != nil {
			return err
		}
		v := labels[k]
		if len(v) > maxLabelValueLen {
			return fmt.Errorf("%w: label %s: value is longer than %d bytes", ErrInvalid, quote(k), maxLabelValueLen)
		}
		if !utf8.ValidString(v) || strings.ContainsFunc(v, unicode.IsControl) {
			return fmt.Errorf("%w: label %s: value must be UTF-8 text without control characters", ErrInvalid, quote(k))
		}
	}
	return nil
}

func validateLabelKey(k string) error {
	if k == "" {
		return fmt.Errorf("%w: empty label key", ErrInvalid)
	}
	if len(k) > maxLabelKeyLen {
		return fmt.Errorf("%w: label key %s is longer than %d characters", ErrInvalid, quote(k), maxLabelKeyLen)
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
			c == '.' || c == '_' || c == '/' || c == '-'
		if !ok {
			return fmt.Errorf("%w: label key %s: only [A-Za-z0-9._/-] allowed", ErrInvalid, quote(k))
		}
	}
	return nil
}

// quote quotes s for an error message, cut to a sane length.
func quote(s string) string {
	if len(s) <= maxQuoted {
		return fmt.Sprintf("%q", s)
	}
	return fmt.Sprintf("%q...", s[:maxQuoted])
}

// normalize validates d as a new record and returns the copy to store:
// canonical SPIFFE ID, default status, a labels map of its own.
func normalize(d Device) (*Device, error) {
	if err := ValidateName(d.Name); err != nil {
		return nil, err
	}
	id, err := validateSPIFFEID(d.SPIFFEID)
	if err != nil {
		return nil, err
	}
	if d.Status == "" {
		d.Status = StatusActive
	}
	if !d.Status.Valid() {
		return nil, fmt.Errorf("%w: status %s: %s", ErrInvalid, quote(string(d.Status)), statusRule)
	}
	if err := validateLabels(d.Labels); err != nil {
		return nil, err
	}
	out := d
	out.SPIFFEID = id
	out.Labels = cloneLabels(d.Labels)
	return &out, nil
}

// cloneLabels copies labels; the store always holds a non-nil map so that
// devices serialize with "labels": {} rather than null.
func cloneLabels(labels map[string]string) map[string]string {
	out := make(map[string]string, len(labels))
	maps.Copy(out, labels)
	return out
}
