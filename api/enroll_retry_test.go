package api

import (
	"crypto"
	"crypto/ecdsa"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/ztgate/ztgate/internal/testpki"
	"github.com/ztgate/ztgate/registry"
)

// csrFor returns a fresh PEM CSR for an existing key.
func csrFor(t *testing.T, key *ecdsa.PrivateKey) []byte {
	t.Helper()
	return testpki.CSRPEM(t, key, nil)
}

// A device whose answer was lost retries with the key it sent: within the
// token's life it gets an SVID again, for the same ID and key. Anyone
// else holding the token gets the one 401, as does the device itself once
// the token has expired.
func TestEnrollRetryWithTheSameKey(t *testing.T) {
	e := newEnv(t)
	tr := e.createToken("meter-1", "10m", nil)
	key, csrPEM := newCSR(t, nil)
	enroll := func(csr []byte) response {
		t.Helper()
		return e.postJSON(e.anon, "/v1/enroll", EnrollRequest{Token: tr.Token, CSR: string(csr)})
	}
	check := func(r response) {
		t.Helper()
		if r.Status != http.StatusOK {
			t.Fatalf("%d %s, want 200", r.Status, r.Body)
		}
		var sv SVIDResponse
		r.DecodeJSON(t, &sv)
		chain := parseChain(t, []byte(sv.SVIDPEM))
		id, err := e.v.Verify(chain)
		if err != nil || id.String() != tr.SPIFFEID || sv.SPIFFEID != tr.SPIFFEID {
			t.Fatalf("SVID for %s (%v), want %s", id, err, tr.SPIFFEID)
		}
		if !chain[0].PublicKey.(interface{ Equal(crypto.PublicKey) bool }).Equal(key.Public()) {
			t.Fatal("the SVID does not carry the key of the first redemption")
		}
	}

	check(enroll(csrPEM))
	check(enroll(csrPEM))         // the same CSR again
	check(enroll(csrFor(t, key))) // a new CSR for the same key

	_, otherCSR := newCSR(t, nil)
	if r := enroll(otherCSR); r.Status != http.StatusUnauthorized || strings.TrimSpace(string(r.Body)) != `{"error":"invalid token"}` {
		t.Fatalf("used token, another key: %d %s, want 401 invalid token", r.Status, r.Body)
	}

	// The retries are audited as such, beside the one redemption.
	var redeems, reissues int
	for _, a := range e.auditEntries() {
		switch {
		case a.Action == "token.redeem" && a.Result == registry.ResultOK && strings.Contains(a.Detail, "retry"):
			reissues++
		case a.Action == "token.redeem" && a.Result == registry.ResultOK:
			redeems++
		}
	}
	if redeems != 1 || reissues != 2 {
		t.Fatalf("audit: %d redemptions and %d re-issues, want 1 and 2", redeems, reissues)
	}

	// A device that is no longer active gets nothing, whatever its key.
	if _, err := e.reg.SetStatus("meter-1", registry.StatusSuspended); err != nil {
		t.Fatal(err)
	}
	if r := enroll(csrFor(t, key)); r.Status != http.StatusUnauthorized {
		t.Fatalf("suspended device, same key: %d %s, want 401", r.Status, r.Body)
	}
	if _, err := e.reg.SetStatus("meter-1", registry.StatusActive); err != nil {
		t.Fatal(err)
	}
	check(enroll(csrFor(t, key))) // control: resumed

	// The token's life bounds the retries.
	e.clock.Advance(11 * time.Minute)
	if r := enroll(csrFor(t, key)); r.Status != http.StatusUnauthorized {
		t.Fatalf("expired token, same key: %d %s, want 401", r.Status, r.Body)
	}
}
