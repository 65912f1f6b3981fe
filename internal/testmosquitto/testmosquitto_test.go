package testmosquitto

import (
	"crypto/tls"
	"testing"
)

// The broker takes a client certificate of its CA and refuses one of
// another CA; it comes back on the same port after a restart.
func TestBroker(t *testing.T) {
	b := Start(t)
	dial := func(cert tls.Certificate) error {
		c, err := tls.Dial("tcp", b.Addr, b.TLSConfig(cert))
		if err != nil {
			return err
		}
		defer c.Close()
		// TLS 1.3 reports a refused client certificate on the first read.
		_, err = c.Write([]byte{0xC0, 0x00}) // PINGREQ before CONNECT: the broker closes
		if err == nil {
			buf := make([]byte, 1)
			_, err = c.Read(buf)
		}
		return err
	}
	if err := dial(b.ClientCert(t, "ok")); err != nil && !isEOF(err) {
		t.Fatalf("client of the broker's CA: %v", err)
	}
	other := Start(t)
	if err := dial(other.ClientCert(t, "stranger")); err == nil || isEOF(err) {
		t.Fatalf("client of another CA: %v, want a TLS refusal", err)
	}
	addr := b.Addr
	b.Restart(t)
	if b.Addr != addr {
		t.Fatalf("restarted on %s, want %s", b.Addr, addr)
	}
	if err := dial(b.ClientCert(t, "ok")); err != nil && !isEOF(err) {
		t.Fatalf("after restart: %v", err)
	}
}

func isEOF(err error) bool { return err != nil && err.Error() == "EOF" }
