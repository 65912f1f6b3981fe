package app

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ztgate/ztgate/identity"
	"github.com/ztgate/ztgate/registry"
)

// FederationSubdir is where the fetched bundles of federated trust domains
// are kept, under the data dir, so that a restart does not depend on a
// partner's endpoint being reachable.
const FederationSubdir = "federation"

// openSource opens the identity source the configuration names. With the
// built-in source it also loads (or creates) the CA, which a.ca then holds;
// the other sources sign nothing and leave it nil.
func (a *App) openSource(ctx context.Context) error {
	idc := a.cfg.Identity
	switch idc.Source {
	case IdentityBuiltin:
		caDir := idc.CADir
		if caDir == "" {
			caDir = filepath.Join(a.cfg.DataDir, "ca")
		}
		ca, err := identity.LoadOrCreateCA(caDir, a.td)
		if err != nil {
			return fmt.Errorf("app: %w", err)
		}
		certs, err := identity.NewServingCertSource(ca, spiffeid.RequireFromPath(a.td, ServerIDPath), a.cfg.ServerNames, a.log)
		if err != nil {
			return fmt.Errorf("app: %w", err)
		}
		a.ca, a.src = ca, identity.NewBuiltinSource(ca, certs)
	case IdentityFiles:
		src, err := identity.NewFileSource(identity.FileSourceOptions{
			CertFile:    idc.CertFile,
			KeyFile:     idc.KeyFile,
			BundleFile:  idc.BundleFile,
			TrustDomain: a.td,
			Logger:      a.log.With("component", "identity"),
		})
		if err != nil {
			return fmt.Errorf("app: identity.source files: %w", err)
		}
		a.src = src
	case IdentityWorkloadAPI:
		src, err := identity.NewWorkloadSource(ctx, identity.WorkloadSourceOptions{
			Socket:      idc.WorkloadAPISocket,
			TrustDomain: a.td,
			Logger:      a.log.With("component", "identity"),
		})
		if err != nil {
			return fmt.Errorf("app: identity.source workload_api: %w", err)
		}
		a.src = src
	default:
		return fmt.Errorf("app: identity.source %q: want builtin, files or workload_api", idc.Source)
	}
	return a.checkServingSVID()
}

// checkServingSVID holds the serving SVID to trust_domain whatever the
// source: a gateway serving another trust domain's identity would be
// refused by every device that checks who it talks to, and its own bundle
// endpoint would hand out the wrong trust domain.
func (a *App) checkServingSVID() error {
	svid, err := a.src.GetX509SVID()
	if err != nil {
		return fmt.Errorf("app: identity.source %s: serving SVID: %w", a.cfg.Identity.Source, err)
	}
	if !svid.ID.MemberOf(a.td) {
		return fmt.Errorf("app: identity.source %s: the serving SVID %s is not in trust_domain %q",
			a.cfg.Identity.Source, svid.ID, a.td.Name())
	}
	leaf := svid.Certificates[0]
	a.log.Info("identity source", "source", a.cfg.Identity.Source, "serving_spiffe_id", svid.ID.String(),
		"serving_serial", fmt.Sprintf("%x", leaf.SerialNumber), "serving_expires", leaf.NotAfter.UTC())
	return nil
}

// watchIdentity re-verifies every session when a trust bundle changes: a
// CA gone from a bundle must end the connections it authenticated, not only
// refuse new ones. A change of the serving SVID alone (SPIRE rotates it at
// half its lifetime) changes nothing a session was admitted with, so it
// costs no pass: the sources report both kinds of change on one channel,
// and the bundles are compared here. The gateway coalesces the requests.
func (a *App) watchIdentity(ctx context.Context) {
	var srcUpdated, fedUpdated <-chan struct{}
	if a.src != nil {
		srcUpdated = a.src.Updated()
	}
	if a.fed != nil {
		fedUpdated = a.fed.Updated()
	}
	if srcUpdated == nil && fedUpdated == nil {
		return
	}
	last := a.bundlesDigest()
	for {
		select {
		case <-ctx.Done():
			return
		case <-srcUpdated:
		case <-fedUpdated:
		}
		d := a.bundlesDigest()
		if d == last {
			a.log.Debug("identity: serving SVID changed, trust bundles unchanged: sessions not re-verified")
			continue
		}
		last = d
		a.gw.Reevaluate("trust bundle changed")
	}
}

// bundlesDigest sums up the authorities of every served trust domain as the
// verifier would find them now, in an order that does not depend on the
// order a source lists them in. A trust domain without a bundle counts as
// such, so gaining or losing one is a change too.
func (a *App) bundlesDigest() [sha256.Size]byte {
	h := sha256.New()
	for _, td := range a.cfg.ServedTrustDomains() {
		h.Write([]byte(td.IDString()))
		h.Write([]byte{0})
		b, err := a.bundles.GetX509BundleForTrustDomain(td)
		if err != nil || b == nil {
			h.Write([]byte("no bundle\x00"))
			continue
		}
		var sums [][sha256.Size]byte
		for _, c := range b.X509Authorities() {
			sums = append(sums, sha256.Sum256(c.Raw))
		}
		slices.SortFunc(sums, func(x, y [sha256.Size]byte) int { return bytes.Compare(x[:], y[:]) })
		for _, s := range sums {
			h.Write(s[:])
		}
		h.Write([]byte{0})
	}
	var out [sha256.Size]byte
	h.Sum(out[:0])
	return out
}

// ensureBootstrapAdmins registers each identity.bootstrap_admins entry that
// no device has yet: active, role=admin, under a name made from its path.
// One that exists is left as it is: an operator may have suspended or
// revoked it, and a restart must not undo that.
func (a *App) ensureBootstrapAdmins() error {
	for _, raw := range a.cfg.Identity.BootstrapAdmins {
		id := spiffeid.RequireFromString(raw) // validated
		d, err := a.reg.GetBySPIFFEID(id.String())
		switch {
		case err == nil:
			a.log.Info("bootstrap admin already registered; left as it is", "device", d.Name,
				"spiffe_id", id.String(), "status", string(d.Status))
			continue
		case !errors.Is(err, registry.ErrNotFound):
			return fmt.Errorf("app: bootstrap admin %s: %w", id, err)
		}
		name, err := AdminName(id)
		if err != nil {
			return fmt.Errorf("app: identity.bootstrap_admins: %w", err)
		}
		if other, err := a.reg.Get(name); err == nil {
			return fmt.Errorf("app: identity.bootstrap_admins: %s would be registered as device %q, which is %s's name",
				id, name, other.SPIFFEID)
		} else if !errors.Is(err, registry.ErrNotFound) {
			return fmt.Errorf("app: bootstrap admin %s: %w", id, err)
		}
		if _, err := a.reg.Create(registry.Device{
			Name:     name,
			SPIFFEID: id.String(),
			Labels:   map[string]string{"role": "admin"},
			Status:   registry.StatusActive,
		}); errors.Is(err, registry.ErrExists) {
			// Another node of the cluster, starting at the same time,
			// registered it first.
			continue
		} else if err != nil {
			return fmt.Errorf("app: bootstrap admin %s: %w", id, err)
		}
		a.log.Info("bootstrap admin registered", "device", name, "spiffe_id", id.String())
	}
	return nil
}

// AdminName is the device name a bootstrap admin is registered under: the
// segments of its SPIFFE ID's path joined with '-'
// (spiffe://example.org/ops/alice: ops-alice), which must be a valid
// device name.
func AdminName(id spiffeid.ID) (string, error) {
	name := strings.ReplaceAll(strings.TrimPrefix(id.Path(), "/"), "/", "-")
	if err := registry.ValidateName(name); err != nil {
		return "", fmt.Errorf("no device name can be made from %s (tried %q): %w", id, name, err)
	}
	return name, nil
}
