package main

import (
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ztgate/ztgate/api"
	"github.com/ztgate/ztgate/identity"
	"github.com/ztgate/ztgate/internal/testpki"
	"github.com/ztgate/ztgate/registry"
)

func TestDeviceRegister(t *testing.T) {
	a := startApp(t)
	dev := func(args ...string) []string {
		return append(append([]string{"device"}, args...), "--api", a.APIURL(), "--admin-dir", a.AdminDir())
	}

	// An identity whose SVID comes from elsewhere is recorded, active,
	// with its labels; nothing is signed or written.
	out := ok(t, dev("register", "pump-7", "--spiffe-id", "spiffe://example.org/spire/pump-7", "--label", "role=controller", "--label", "site=lab")...)
	if !strings.Contains(out, "registered device pump-7") || !strings.Contains(out, "spiffe://example.org/spire/pump-7") {
		t.Errorf("register output:\n%s", out)
	}
	d, err := a.Registry().Get("pump-7")
	if err != nil || d.SPIFFEID != "spiffe://example.org/spire/pump-7" || d.Status != registry.StatusActive ||
		d.Labels["role"] != "controller" || d.Labels["site"] != "lab" {
		t.Fatalf("registry has %+v, %v", d, err)
	}

	// --json prints the device as the API returns it.
	var got api.Device
	if err := json.Unmarshal([]byte(ok(t, dev("register", "pump-8", "--spiffe-id", "spiffe://example.org/spire/pump-8", "--json")...)), &got); err != nil {
		t.Fatal(err)
	}
	if got.Name != "pump-8" || got.SPIFFEID != "spiffe://example.org/spire/pump-8" || got.Status != "active" {
		t.Fatalf("--json: %+v", got)
	}

	// The lifecycle is the enrolled devices': suspend works on it.
	ok(t, dev("suspend", "pump-7")...)
	if d, _ := a.Registry().Get("pump-7"); d.Status != registry.StatusSuspended {
		t.Fatalf("after suspend: %s", d.Status)
	}

	// One-line errors.
	failsWith(t, "device pump-7 is already registered (spiffe://example.org/spire/pump-7, suspended)",
		dev("register", "pump-7", "--spiffe-id", "spiffe://example.org/spire/pump-9")...)
	failsWith(t, "--spiffe-id is required", dev("register", "pump-9")...)
	failsWith(t, `--spiffe-id "example.org/pump-9"`, dev("register", "pump-9", "--spiffe-id", "example.org/pump-9")...)
	failsWith(t, `"partner.org"`, dev("register", "pump-9", "--spiffe-id", "spiffe://partner.org/pump-9")...)
	failsWith(t, "--label", dev("register", "pump-9", "--spiffe-id", "spiffe://example.org/spire/pump-9", "--label", "novalue")...)
	failsWith(t, "name", dev("register", "Pump-9", "--spiffe-id", "spiffe://example.org/spire/pump-9")...)
	if _, err := a.Registry().Get("pump-9"); err == nil {
		t.Fatal("a refused register created the device")
	}
}

// TestServeFilesSource runs `ztgate serve` with an existing PKI: the
// gateway signs nothing and writes no CA or dev admin; the bootstrap admin,
// an identity of that PKI, registers devices; enrolling through the
// gateway is refused with one clear line.
func TestServeFilesSource(t *testing.T) {
	dir := t.TempDir()
	ca := testpki.NewCA(t, "iot.example.com")
	pki := filepath.Join(dir, "pki")
	if err := os.MkdirAll(pki, 0o700); err != nil {
		t.Fatal(err)
	}
	chain, key := testpki.CertPEM(t, testpki.SignLeaf(t, testpki.ServingTemplate(t, "spiffe://iot.example.com/ztgate"), ca.Cert, ca.Key))
	testpki.WriteAtomic(t, filepath.Join(pki, "gateway.pem"), chain)
	testpki.WriteAtomic(t, filepath.Join(pki, "gateway.key"), key)
	testpki.WriteAtomic(t, filepath.Join(pki, "bundle.pem"), ca.BundlePEM())
	aliceDir := filepath.Join(dir, "alice")
	aliceChain, aliceKey := testpki.CertPEM(t, ca.Issue(t, "spiffe://iot.example.com/ops/alice"))
	if err := identity.WriteSVIDDir(aliceDir, aliceChain, aliceKey, ca.BundlePEM()); err != nil {
		t.Fatal(err)
	}
	cfgPath := filepath.Join(dir, "ztgate.yaml")
	writeFile(t, cfgPath, "data_dir: "+filepath.Join(dir, "data")+"\nmqtt_addr: 127.0.0.1:0\napi_addr: 127.0.0.1:0\n"+
		"trust_domain: iot.example.com\nlog_level: error\n"+
		"identity:\n  source: files\n  cert_file: "+filepath.Join(pki, "gateway.pem")+"\n  key_file: "+filepath.Join(pki, "gateway.key")+
		"\n  bundle_file: "+filepath.Join(pki, "bundle.pem")+"\n  bootstrap_admins: [spiffe://iot.example.com/ops/alice]\n")
	srv := runInBackground(t, "serve", "--config", cfgPath)
	srv.waitFor(t, "admin API on https://")
	for _, f := range []string{"ca", "admin"} {
		if _, err := os.Stat(filepath.Join(dir, "data", f)); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("serve with identity files made %s/ (%v)", f, err)
		}
	}
	api := []string{"--api", apiURLFromBanner(t, srv.out.String()), "--admin-dir", aliceDir}
	dev := func(args ...string) []string { return append(append([]string{"device"}, args...), api...) }

	ok(t, dev("register", "sensor-1", "--spiffe-id", "spiffe://iot.example.com/device/sensor-1")...)
	if out := ok(t, dev("list")...); !strings.Contains(out, "sensor-1") || !strings.Contains(out, "ops-alice") {
		t.Errorf("device list:\n%s", out)
	}
	// The 409 is not a token conflict: no re-enrollment hint.
	if stderr := failsWith(t, "this gateway signs no certificates (identity source files)", dev("token", "sensor-2")...); strings.Contains(stderr, "ztgate enroll") {
		t.Errorf("device token: %q gives the re-enrollment hint of a token conflict", stderr)
	}
	failsWith(t, "this gateway signs no certificates (identity source files)", dev("enroll", "sensor-1", "--out", filepath.Join(dir, "s1"))...)
	// A new name is left registered, which the error says, and it says so
	// without having claimed an enrollment on stdout.
	r := ztgate(t, nil, "", dev("enroll", "sensor-3", "--out", filepath.Join(dir, "s3"))...)
	if r.code != 1 || !strings.Contains(r.stderr, "device sensor-3 is registered as spiffe://iot.example.com/device/sensor-3, but this gateway signs no certificates") || strings.Contains(r.stdout, "enrolled") {
		t.Errorf("device enroll of a new name: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	srv.stop(t)
}
