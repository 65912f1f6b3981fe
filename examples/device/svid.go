package main

import (
	"crypto/tls"
	"sync/atomic"

	"github.com/ztgate/ztgate/identity/svidrenew"
)

// svidStore holds the device's current SVID. Every TLS handshake, to the
// gateway and to the API alike, asks it for the client certificate, so a
// renewed SVID is presented from the next handshake on without rebuilding
// any configuration.
type svidStore struct {
	dir string
	cur atomic.Pointer[svidrenew.SVID]
}

func (s *svidStore) current() *svidrenew.SVID { return s.cur.Load() }

func (s *svidStore) getClientCertificate(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	return &s.cur.Load().Cert, nil
}

// loadSVIDDir builds the client TLS config from DIR/svid.pem (leaf first,
// then intermediates), DIR/svid.key and DIR/bundle.pem, as svidrenew reads
// them (finishing a renewal a crash interrupted). The gateway is verified
// as any TLS server is: its certificate must chain to the bundle and name
// serverName. The certificate presented is the store's current one. The
// config has no session cache, so every reconnect is a full handshake that
// presents the current SVID.
func loadSVIDDir(dir, serverName string) (*tls.Config, *svidStore, error) {
	sv, err := svidrenew.LoadDir(dir)
	if err != nil {
		return nil, nil, err
	}
	store := &svidStore{dir: dir}
	store.cur.Store(sv)
	return &tls.Config{
		MinVersion:           tls.VersionTLS12,
		GetClientCertificate: store.getClientCertificate,
		RootCAs:              sv.Roots,
		ServerName:           serverName,
	}, store, nil
}
