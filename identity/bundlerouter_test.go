package identity_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ztgate/ztgate/identity"
)

// Each trust domain is answered by its own source alone; a source is
// never asked for a domain it is not routed, so a source holding several
// bundles (the Workload API's federated ones) cannot widen what a domain
// trusts.
func TestBundleRouter(t *testing.T) {
	ownCA, partnerCA := newCA(t, td), newCA(t, partnerTD)
	own := &swapSource{bundle: ownCA.Bundle()}
	partner := &swapSource{bundle: partnerCA.Bundle()}
	router := identity.BundleRouter{td: own, partnerTD: partner}

	for _, tc := range []struct {
		name  string
		td    spiffeid.TrustDomain
		setup func()
		want  *x509bundle.Bundle // nil: an error containing wantErr
		err   string
	}{
		{"own domain", td, nil, ownCA.Bundle(), ""},
		{"partner", partnerTD, nil, partnerCA.Bundle(), ""},
		{"unrouted domain", otherTD, nil, nil, `identity: trust domain "other.example" is not configured`},
		{"source error passed on", partnerTD, func() { partner.set(nil, errors.New("no bundle fetched yet")) }, nil, "no bundle fetched yet"},
		{"source returns another domain's bundle", partnerTD, func() { partner.set(ownCA.Bundle(), nil) }, nil, "returned no bundle for it"},
		{"source returns nil", partnerTD, func() { partner.set(nil, nil) }, nil, "returned no bundle for it"},
		{"source returns an empty bundle", partnerTD, func() { partner.set(x509bundle.New(partnerTD), nil) }, nil, "has no authorities"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.setup != nil {
				tc.setup()
			}
			b, err := router.GetX509BundleForTrustDomain(tc.td)
			if tc.want != nil {
				if err != nil || !b.Equal(tc.want) {
					t.Fatalf("bundle %v, err %v", b, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("err = %v, want %q", err, tc.err)
			}
		})
	}
	if own.calls == 0 {
		t.Error("the own source was never asked")
	}

	// A nil entry is as good as none: it must not panic.
	if _, err := (identity.BundleRouter{partnerTD: nil}).GetX509BundleForTrustDomain(partnerTD); err == nil {
		t.Error("a nil source served a bundle")
	}
	// The router is what the verifier is built over: a partner's device
	// verifies against the partner's bundle, not the own one.
	v, err := identity.NewVerifierFromSource(identity.BundleRouter{td: own, partnerTD: &swapSource{bundle: partnerCA.Bundle()}}, td, partnerTD)
	if err != nil {
		t.Fatal(err)
	}
	partnerDevice := spiffeid.RequireFromString("spiffe://partner.example/device/p-1")
	good, _ := signLeaf(t, leafTemplate(partnerDevice), partnerCA.Certificate(), partnerCA.SignerForTest())
	if _, err := v.Verify(good); err != nil {
		t.Fatalf("partner device signed by the partner CA: %v", err)
	}
	forged, _ := signLeaf(t, leafTemplate(partnerDevice), ownCA.Certificate(), ownCA.SignerForTest())
	if _, err := v.Verify(forged); err == nil {
		t.Fatal("a partner ID signed by the own CA verified")
	}
}
