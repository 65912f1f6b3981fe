package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// The SVID directory, as `ztgate device enroll` and `ztgate enroll` write it.
const (
	svidFile   = "svid.pem"   // the X.509-SVID chain, leaf first
	keyFile    = "svid.key"   // its private key
	bundleFile = "bundle.pem" // the CA that signs the gateway's certificate
	// pendingSuffix marks a file written in full but not yet in place.
	pendingSuffix = ".new"
)

// svid is one X.509-SVID the device holds.
type svid struct {
	cert tls.Certificate // chain and key; Leaf is set
	id   spiffeid.ID
	// obtained is when the device got the SVID: when the API answered, or
	// for one read from disk, when svid.pem was written.
	obtained time.Time
}

func (s *svid) leaf() *x509.Certificate { return s.cert.Leaf }
func (s *svid) serial() string          { return s.cert.Leaf.SerialNumber.Text(16) }

// svidStore holds the device's current SVID. Every TLS handshake, to the
// gateway and to the API alike, asks it for the client certificate, so a
// renewed SVID is presented from the next handshake on without rebuilding
// any configuration.
type svidStore struct {
	dir string
	cur atomic.Pointer[svid]
}

func (s *svidStore) current() *svid { return s.cur.Load() }

func (s *svidStore) getClientCertificate(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	return &s.cur.Load().cert, nil
}

// loadSVIDDir builds the client TLS config from DIR/svid.pem (leaf first,
// then intermediates), DIR/svid.key and DIR/bundle.pem. The gateway is
// verified as any TLS server is: its certificate must chain to the bundle
// and name serverName. The certificate presented is the store's current
// one. The config has no session cache, so every reconnect is a full
// handshake that presents the current SVID.
func loadSVIDDir(dir, serverName string) (*tls.Config, *svidStore, error) {
	sv, err := loadSVID(dir)
	if err != nil {
		return nil, nil, err
	}
	bundle, err := os.ReadFile(filepath.Join(dir, bundleFile))
	if err != nil {
		return nil, nil, fmt.Errorf("load bundle: %w", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(bundle) {
		return nil, nil, fmt.Errorf("load bundle: no certificates in %s", filepath.Join(dir, bundleFile))
	}
	store := &svidStore{dir: dir}
	store.cur.Store(sv)
	return &tls.Config{
		MinVersion:           tls.VersionTLS12,
		GetClientCertificate: store.getClientCertificate,
		RootCAs:              roots,
		ServerName:           serverName,
	}, store, nil
}

// loadSVID reads the SVID and key of dir. If they do not belong together
// because a renewal was interrupted between putting the new key and the
// new certificate in place, it finishes that renewal first.
func loadSVID(dir string) (*svid, error) {
	certPath, keyPath := filepath.Join(dir, svidFile), filepath.Join(dir, keyFile)
	cert, err := tls.LoadX509KeyPair(certPath, keyPath)
	if err != nil {
		if cert, err = finishRenewal(dir, err); err != nil {
			return nil, fmt.Errorf("load SVID: %w", err)
		}
	}
	leaf := cert.Leaf
	if leaf == nil {
		if leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return nil, fmt.Errorf("load SVID: %w", err)
		}
		cert.Leaf = leaf
	}
	id, err := x509svid.IDFromCert(leaf)
	if err != nil {
		return nil, fmt.Errorf("load SVID: %w", err)
	}
	fi, err := os.Stat(certPath)
	if err != nil {
		return nil, fmt.Errorf("load SVID: %w", err)
	}
	return &svid{cert: cert, id: id, obtained: fi.ModTime()}, nil
}

// finishRenewal completes a renewal that stopped after the new key was put
// in place but before the new certificate was: svid.pem.new pairs with
// svid.key. Anything else returns loadErr, the error of the normal load.
func finishRenewal(dir string, loadErr error) (tls.Certificate, error) {
	certPath, keyPath := filepath.Join(dir, svidFile), filepath.Join(dir, keyFile)
	cert, err := tls.LoadX509KeyPair(certPath+pendingSuffix, keyPath)
	if err != nil {
		return tls.Certificate{}, loadErr
	}
	if err := os.Rename(certPath+pendingSuffix, certPath); err != nil {
		return tls.Certificate{}, errors.Join(loadErr, err)
	}
	if err := syncDir(dir); err != nil {
		return tls.Certificate{}, errors.Join(loadErr, err)
	}
	return cert, nil
}

// writeSVID replaces the SVID, its key and the bundle in dir so that a
// crash at any point leaves a usable pair: both new files are written and
// synced under temporary names first, then the key is renamed into place,
// then the certificate. A crash between the two renames leaves the new key
// with the old certificate and svid.pem.new beside them, which loadSVID
// completes.
func writeSVID(dir string, chainPEM, keyPEM, bundlePEM []byte) error {
	certPath, keyPath := filepath.Join(dir, svidFile), filepath.Join(dir, keyFile)
	if err := writeSynced(certPath+pendingSuffix, chainPEM, 0o644); err != nil {
		return err
	}
	if err := writeSynced(keyPath+pendingSuffix, keyPEM, 0o600); err != nil {
		return err
	}
	if err := os.Rename(keyPath+pendingSuffix, keyPath); err != nil {
		return err
	}
	if err := os.Rename(certPath+pendingSuffix, certPath); err != nil {
		return err
	}
	if len(bundlePEM) > 0 {
		bundlePath := filepath.Join(dir, bundleFile)
		if err := writeSynced(bundlePath+pendingSuffix, bundlePEM, 0o644); err != nil {
			return err
		}
		if err := os.Rename(bundlePath+pendingSuffix, bundlePath); err != nil {
			return err
		}
	}
	return syncDir(dir)
}

// writeSynced writes data to path and syncs it to disk.
func writeSynced(path string, data []byte, perm os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, perm)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		_ = f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		_ = f.Close()
		return err
	}
	return f.Close()
}

// syncDir makes the renames in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}
