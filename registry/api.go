// Package registry is ztgate's device registry: which SPIFFE IDs are enrolled,
// under what name, with which labels and in which lifecycle state.
//
// Reads are served from an in-memory go-memdb database, so the lookup on the
// gateway's CONNECT path never touches the disk. The store of record is a
// bbolt file: every write is committed (and fsynced) there first and only then
// made visible in memory, so a write that returned nil survives a crash. On
// Open the memory database is rebuilt from the file.
//
// Every change is written together with its audit entry, in the same bbolt
// transaction: there is no change without its entry and no entry without its
// change. Devices may also be registered as pending and enroll themselves
// with a one-time bootstrap token (see CreateToken and RedeemToken).
package registry

import (
	"errors"
	"maps"
	"time"
)

// Status is a device's lifecycle state. pending becomes active only through
// RedeemToken; active and suspended are exchanged by SetStatus; every state
// may become revoked, which is final. Only an active device may connect or be
// issued an SVID.
type Status string

const (
	// StatusPending is a device registered for bootstrap enrollment that
	// has not redeemed its token yet, so it holds no SVID. It leaves this
	// state by redeeming its token (active) or by revocation.
	StatusPending   Status = "pending"
	StatusActive    Status = "active"
	StatusSuspended Status = "suspended"
	StatusRevoked   Status = "revoked"
)

// statusRule lists the defined states for error messages.
const statusRule = "must be pending, active, suspended or revoked"

// Valid reports whether st is one of the defined states.
func (st Status) Valid() bool {
	switch st {
	case StatusPending, StatusActive, StatusSuspended, StatusRevoked:
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
	// ErrPending is returned for a status change a pending device may not
	// undergo: it becomes active only by redeeming its bootstrap token.
	ErrPending = errors.New("registry: device is pending enrollment")
	// ErrTokenInvalid is the one answer to a bootstrap token that is
	// malformed, unknown, wrong, expired or used (but for a retry with the
	// key it was redeemed for; see RedeemTokenForKey), or whose device is
	// no longer pending: a caller learns nothing about which it was.
	ErrTokenInvalid = errors.New("registry: invalid bootstrap token")
	// ErrInvalidQuery is returned for a bad selector, cursor, limit or status
	// filter. It also matches ErrInvalid: it is bad input like any other.
	ErrInvalidQuery error = &kindError{msg: "registry: invalid query", kind: ErrInvalid}
)

// kindError is a sentinel that also matches a broader sentinel, so that a
// caller that only knows the broader one still classifies it right.
type kindError struct {
	msg  string
	kind error
}

func (e *kindError) Error() string { return e.msg }
func (e *kindError) Unwrap() error { return e.kind }

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
