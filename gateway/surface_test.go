package gateway

import "testing"

// The gateway has exactly one listener, the mTLS one: no other listener
// (plaintext, websocket) exists that could skip identity or policy. (That
// its hook is the only auth hook is shown by behaviour: every refused
// SUBSCRIBE in the tests would be granted if mochi ORed an allow-all hook.)
func TestOneListener(t *testing.T) {
	e := newEnv(t, allowAll)
	if _, ok := e.gw.server.Listeners.Get(listenerID); !ok {
		t.Fatalf("listener %q missing", listenerID)
	}
	if n := e.gw.server.Listeners.Len(); n != 1 {
		t.Fatalf("%d listeners, want exactly the mTLS one", n)
	}
}
