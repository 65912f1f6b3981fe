package identity_test

import (
	"crypto/tls"
	"crypto/x509"
	"strings"
	"testing"
	"time"

	"github.com/ztgate/ztgate/identity"
)

// Moved from internal/app (TestServingCertRenews) with the source.
func TestServingCertRenews(t *testing.T) {
	s, err := identity.NewServingCertSource(newCA(t, td), gatewayID, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	first, err := s.GetCertificate(nil)
	if err != nil {
		t.Fatal(err)
	}
	if again, _ := s.GetCertificate(nil); again != first {
		t.Fatal("certificate renewed although it is fresh")
	}
	s.SetNowForTest(func() time.Time { return time.Now().Add(identity.ServingCertTTL * 3 / 4) })
	renewed, err := s.GetCertificate(nil)
	if err != nil {
		t.Fatal(err)
	}
	if renewed == first || renewed.Leaf.SerialNumber.Cmp(first.Leaf.SerialNumber) == 0 {
		t.Fatal("certificate not renewed after two thirds of its lifetime")
	}
}

// TestServingCertTLSConfigs checks that both listener configs serve the
// renewing source rather than a fixed certificate, keep their client
// authentication mode, and end the served chain with the CA.
func TestServingCertTLSConfigs(t *testing.T) {
	ca := newCA(t, td)
	s, err := identity.NewServingCertSource(ca, gatewayID, []string{"gw.example.test", "192.0.2.7"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	v := identity.NewVerifier(ca.Bundle())
	for _, tc := range []struct {
		name string
		cfg  *tls.Config
		auth tls.ClientAuthType
	}{
		{"MQTT", s.ServerTLSConfig(v), tls.RequireAnyClientCert},
		{"API", s.APIServerTLSConfig(v), tls.RequestClientCert},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if len(tc.cfg.Certificates) != 0 || tc.cfg.GetCertificate == nil {
				t.Fatal("config serves a fixed certificate, which would never be renewed")
			}
			if tc.cfg.ClientAuth != tc.auth || tc.cfg.VerifyConnection == nil {
				t.Fatalf("ClientAuth = %v (want %v), VerifyConnection set = %v", tc.cfg.ClientAuth, tc.auth, tc.cfg.VerifyConnection != nil)
			}
			cert, err := tc.cfg.GetCertificate(nil)
			if err != nil {
				t.Fatal(err)
			}
			if id, err := v.Verify([]*x509.Certificate{cert.Leaf}); err != nil || id != gatewayID {
				t.Errorf("served leaf verifies as %v, %v; want %s", id, err, gatewayID)
			}
			if err := cert.Leaf.VerifyHostname("gw.example.test"); err != nil {
				t.Errorf("configured DNS name missing: %v", err)
			}
			if err := cert.Leaf.VerifyHostname("192.0.2.7"); err != nil {
				t.Errorf("configured IP missing: %v", err)
			}
			if last := cert.Certificate[len(cert.Certificate)-1]; string(last) != string(ca.Certificate().Raw) {
				t.Error("served chain does not end with the CA certificate")
			}
		})
	}
}

func TestServingCertNeedsCA(t *testing.T) {
	_, err := identity.NewServingCertSource(nil, gatewayID, nil, nil)
	if err == nil || !strings.HasPrefix(err.Error(), "identity: ") {
		t.Fatalf("err = %v, want an identity: error", err)
	}
}
