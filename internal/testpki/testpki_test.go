package testpki_test

import (
	"crypto/x509"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ztgate/ztgate/internal/testpki"
)

// TestLogBufferConcurrent writes from several goroutines while reading, so
// that -race sees any unlocked access, and checks no write is lost.
func TestLogBufferConcurrent(t *testing.T) {
	var b testpki.LogBuffer
	const writers, lines = 4, 100
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range lines {
				fmt.Fprintf(&b, "w%d line %d\n", w, i)
			}
		}()
	}
	for range lines {
		_ = b.String()
		_ = b.Bytes()
	}
	wg.Wait()
	if got := strings.Count(b.String(), "\n"); got != writers*lines {
		t.Fatalf("lines = %d, want %d", got, writers*lines)
	}
	// Bytes is a copy: changing it must not change the buffer.
	cp := b.Bytes()
	cp[0] = 'X'
	if b.String()[0] == 'X' {
		t.Fatal("Bytes shares memory with the buffer")
	}
}

// TestIssueVerifiesAgainstItsCAOnly is the contract the gateway tests rely
// on: a leaf from a CA verifies against that CA (positive control) and not
// against another CA of the same trust domain (ForeignCert's purpose).
func TestIssueVerifiesAgainstItsCAOnly(t *testing.T) {
	const id = "spiffe://example.org/device/d1"
	ca, other := testpki.NewCA(t, "example.org"), testpki.NewCA(t, "example.org")
	cert := ca.Issue(t, id)
	if got := cert.Leaf.URIs; len(got) != 1 || got[0].String() != id {
		t.Fatalf("URI SANs = %v, want [%s]", got, id)
	}
	if cert.Leaf.IsCA || len(cert.Certificate) != 2 {
		t.Fatalf("leaf IsCA=%v chain length=%d", cert.Leaf.IsCA, len(cert.Certificate))
	}
	verify := func(root *testpki.CA) error {
		pool := x509.NewCertPool()
		pool.AddCert(root.Cert)
		_, err := cert.Leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
		return err
	}
	if err := verify(ca); err != nil {
		t.Fatalf("leaf does not verify against its own CA: %v", err)
	}
	if err := verify(other); err == nil {
		t.Fatal("leaf verifies against a foreign CA")
	}
}

// TestSignLeafSignsTweaks: SignLeaf must sign what the template says, even
// when it breaks the SVID rules, or the negative tests test nothing.
func TestSignLeafSignsTweaks(t *testing.T) {
	ca := testpki.NewCA(t, "example.org")
	tmpl := testpki.LeafTemplate(t, "spiffe://example.org/device/d1")
	tmpl.IsCA = true
	tmpl.NotAfter = time.Now().Add(-time.Minute)
	tmpl.URIs = append(tmpl.URIs, tmpl.URIs[0])
	leaf := testpki.SignLeaf(t, tmpl, ca.Cert, ca.Key).Leaf
	if !leaf.IsCA || !leaf.NotAfter.Before(time.Now()) || len(leaf.URIs) != 2 {
		t.Fatalf("tweaks lost: IsCA=%v NotAfter=%v URIs=%v", leaf.IsCA, leaf.NotAfter, leaf.URIs)
	}
}
