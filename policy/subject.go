package policy

import (
	"maps"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ztgate/ztgate/registry"
)

// NewSubject builds the subject of a verified identity id, enrolled as dev
// (nil when it is not enrolled), connected as client. Every enforcement
// point builds its subjects here, so an MQTT decision and an admin decision
// about the same identity see the same identity and device documents, and a
// policy written against one holds for the other.
//
// The subject owns what it holds: the labels are copied, because a subject
// must not change once decided on, and dev is the caller's, possibly a
// record the registry may still hand to others. A device without labels
// has an empty label set, never a nil one.
func NewSubject(id spiffeid.ID, dev *registry.Device, client Client) *Subject {
	return &Subject{Identity: identityOf(id), Device: deviceOf(dev), Client: client}
}

// identityOf is the policy's view of a verified SPIFFE ID.
func identityOf(id spiffeid.ID) Identity {
	path := id.Path()
	segments := []string{}
	if p := strings.TrimPrefix(path, "/"); p != "" {
		segments = strings.Split(p, "/")
	}
	return Identity{
		SPIFFEID:    id.String(),
		TrustDomain: id.TrustDomain().Name(),
		Path:        path,
		Segments:    segments,
	}
}

// deviceOf is the policy's view of a registry record; nil for nil.
func deviceOf(dev *registry.Device) *Device {
	if dev == nil {
		return nil
	}
	labels := maps.Clone(dev.Labels)
	if labels == nil {
		labels = map[string]string{}
	}
	return &Device{Name: dev.Name, Labels: labels, Status: string(dev.Status)}
}
