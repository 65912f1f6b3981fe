package bridge

import (
	"crypto/tls"
	"os"
	"path/filepath"
	"testing"

	"github.com/ztgate/ztgate/internal/testclient"
	"github.com/ztgate/ztgate/internal/testmosquitto"
)

// upstream is a real Mosquitto on loopback (internal/testmosquitto): a
// TLS listener that requires a client certificate of its own CA, the
// certificate's CN as the user name, restartable on the same port.
type upstream struct {
	*testmosquitto.Broker
	t   *testing.T
	dir string
}

func startUpstream(t *testing.T) *upstream {
	t.Helper()
	u := &upstream{Broker: testmosquitto.Start(t), t: t, dir: t.TempDir()}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("mosquitto log:\n%s", u.Log())
		}
	})
	return u
}

// newUpstream is an upstream that is down until start.
func newUpstream(t *testing.T) *upstream {
	u := startUpstream(t)
	u.Stop()
	return u
}

func (u *upstream) start() { u.Restart(u.t) }
func (u *upstream) stop()  { u.Stop() }

func (u *upstream) url() string    { return "mqtts://" + u.Addr }
func (u *upstream) caFile() string { return u.CAFile }

func (u *upstream) clientCert(cn string) tls.Certificate { return u.ClientCert(u.t, cn) }

func (u *upstream) clientFiles(cn string) (certFile, keyFile string) {
	return u.ClientCertFiles(u.t, cn, u.dir)
}

// client connects a paho MQTT 5 client with its own certificate, to watch
// or to publish upstream.
func (u *upstream) client(cn string) *testclient.Client {
	u.t.Helper()
	d := testclient.Dialer{Addr: u.Addr, TLS: u.TLSConfig(u.clientCert(cn)), Name: cn}
	return d.MustConnect(u.t, cn, nil)
}

func (u *upstream) write(name string, data []byte) string {
	p := filepath.Join(u.dir, name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		u.t.Fatal(err)
	}
	return p
}
