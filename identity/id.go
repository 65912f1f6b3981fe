package identity

import (
	"errors"
	"fmt"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// DeviceID is the default SPIFFE ID of a device: spiffe://TD/device/NAME.
// name must be a single valid SPIFFE path segment, so it can never add
// segments or climb out of /device.
func DeviceID(td spiffeid.TrustDomain, name string) (spiffeid.ID, error) {
	if td.IsZero() {
		return spiffeid.ID{}, errors.New("identity: device ID needs a trust domain")
	}
	id, err := spiffeid.FromSegments(td, "device", name)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("identity: device name %q: %w", name, err)
	}
	return id, nil
}

// checkID refuses the IDs ztgate never issues nor accepts: the zero ID and
// the bare trust domain ID, which names the trust domain rather than a
// workload.
func checkID(id spiffeid.ID) error {
	switch {
	case id.IsZero():
		return errors.New("identity: empty SPIFFE ID")
	case id.Path() == "":
		return fmt.Errorf("identity: SPIFFE ID %s has an empty path", id)
	}
	return nil
}
