package app

import (
	"crypto/x509"
	"fmt"
	"net/http"
	"os"
	"path/filepath"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ztgate/ztgate/identity"
)

// openFederation builds the bundle sources of the federated trust domains
// and the router the verifier asks: the own trust domain goes to the
// identity source, a partner with a bundle endpoint to the federation, one
// without (SPIRE federates it) to the Workload API source.
func (a *App) openFederation() (identity.BundleRouter, error) {
	router := identity.BundleRouter{a.td: a.src}
	var domains []identity.FederatedDomain
	for i, fc := range a.cfg.Federation.TrustDomains {
		td := spiffeid.RequireTrustDomainFromString(fc.TrustDomain)
		if fc.URL == "" {
			router[td] = a.src // validated: only with the workload_api source
			continue
		}
		fd, err := federatedDomain(fc, td)
		if err != nil {
			return nil, fmt.Errorf("app: federation.trust_domains[%d]: %w", i, err)
		}
		domains = append(domains, fd)
	}
	if len(domains) == 0 {
		return router, nil
	}
	fed, err := identity.NewFederation(identity.FederationOptions{
		Domains:  domains,
		StateDir: filepath.Join(a.cfg.DataDir, FederationSubdir),
		Logger:   a.log.With("component", "federation"),
	})
	if err != nil {
		return nil, fmt.Errorf("app: %w", err)
	}
	a.fed = fed
	for _, fd := range domains {
		router[fd.TrustDomain] = fed
	}
	return router, nil
}

// federatedDomain is one partner as the federation takes it, its files read.
func federatedDomain(fc FederatedDomainConfig, td spiffeid.TrustDomain) (identity.FederatedDomain, error) {
	fd := identity.FederatedDomain{
		TrustDomain:     td,
		URL:             fc.URL,
		Profile:         fc.Profile,
		RefreshInterval: fc.RefreshInterval,
	}
	if fc.EndpointSPIFFEID != "" {
		id, err := spiffeid.FromString(fc.EndpointSPIFFEID)
		if err != nil {
			return fd, fmt.Errorf("endpoint_spiffe_id: %w", err)
		}
		fd.EndpointID = id
	}
	if fc.BundleFile != "" {
		b, err := x509bundle.Load(td, fc.BundleFile)
		if err != nil {
			return fd, fmt.Errorf("bundle_file %s: %w", fc.BundleFile, err)
		}
		if b.Empty() {
			return fd, fmt.Errorf("bundle_file %s: no CA certificate", fc.BundleFile)
		}
		fd.Bundle = b
	}
	if fc.CAFile != "" {
		raw, err := os.ReadFile(fc.CAFile)
		if err != nil {
			return fd, fmt.Errorf("ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(raw) {
			return fd, fmt.Errorf("ca_file %s: no PEM certificate", fc.CAFile)
		}
		fd.WebRoots = pool
	}
	return fd, nil
}

// bundleEndpoint is the handler of GET /v1/bundle, nil when it is off.
func (a *App) bundleEndpoint() (http.Handler, error) {
	if !a.cfg.Federation.BundleEndpointOn() {
		return nil, nil
	}
	h, err := identity.BundleHandler(a.td, a.src, a.cfg.Federation.BundleRefreshHint)
	if err != nil {
		return nil, fmt.Errorf("app: bundle endpoint: %w", err)
	}
	return h, nil
}
