package testclient

import (
	"net"
	"testing"
)

// ClosedAddr is a 127.0.0.1 address nothing listens on (its port was
// taken and given back a moment ago): where a client finds no server.
func ClosedAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return addr
}
