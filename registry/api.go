// Package registry is ztgate's device registry: which SPIFFE IDs are enrolled,
// under what name, with which labels and in which lifecycle state.
//
// Reads are served from an in-memory go-memdb database, so the lookup on the
// gateway's CONNECT path never touches the disk. The store of record is a
// bbolt file: every write is committed (and fsynced) there first and only then
// made visible in memory, so a write that returned nil survives a crash. On
// Open the memory database is rebuilt from the file.
package registry

import (
	"errors"
	"maps"
	"time"
)

// Status is a device's lifecycle state.
type Status string

const (
	StatusActive    Status = "active"
	StatusSuspended Status = "suspended"
	StatusRevoked   Status = "revoked"
)

// Valid reports whether st is one of the defined states.
func (st Status) Valid() bool {
	switch st {
	case StatusActive, StatusSuspended, StatusRevoked:
		return true
	}
	return false
}

var (
	ErrNotFound    = errors.New("registry: device not found")
	ErrExists      = errors.New("registry: device already exists")
	ErrInvalidName = errors.New("registry: invalid device name")
	ErrInvalid     = errors.New("registry: invalid device")
	ErrClosed      = errors.New("registry: store closed")
	// ErrRevoked is returned for a change a revoked device may not undergo:
	// revocation is final, and a revoked record is kept so that its name and
	// SPIFFE ID can never be enrolled again (old SVIDs stay refused).
	ErrRevoked = errors.New("registry: device is revoked")
)

// Device is one enrolled identity.
type Device struct {
	Name      string            `json:"name"`
	SPIFFEID  string            `json:"spiffe_id"`
	Labels    map[string]string `json:"labels"`
	Status    Status            `json:"status"`
	CreatedAt time.Time         `json:"created_at"`
	UpdatedAt time.Time         `json:"updated_at"`
}

// Clone returns a deep copy of d (nil for nil).
func (d *Device) Clone() *Device {
	if d == nil {
		return nil
	}
	c := *d
	c.Labels = maps.Clone(d.Labels)
	return &c
}
