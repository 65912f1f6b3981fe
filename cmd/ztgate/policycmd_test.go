package main

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
)

// `ztgate policy test` compiles a policy as the gateway does: a test that
// would reach the network (here a loopback server that counts requests) is
// refused with an error naming the builtin, and sends nothing, unless
// --allow-builtin names it.
func TestPolicyTestRefusesNetworkBuiltins(t *testing.T) {
	var hits atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		hits.Add(1)
		w.WriteHeader(http.StatusOK)
	}))
	t.Cleanup(srv.Close)

	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "p.rego"), "package ztgate.authz\n\ndefault allow := false\n")
	writeFile(t, filepath.Join(dir, "p_test.rego"), fmt.Sprintf(
		"package ztgate.authz_test\n\ntest_reaches_out if http.send({\"method\": \"GET\", \"url\": %q}).status_code == 200\n", srv.URL))
	failsWith(t, "builtin http.send is not allowed", "policy", "test", dir)

	dns := t.TempDir()
	writeFile(t, filepath.Join(dns, "p.rego"), "package ztgate.authz\n\nallow if count(net.lookup_ip_addr(\"localhost\")) > 0\n")
	writeFile(t, filepath.Join(dns, "p_test.rego"), "package ztgate.authz_test\n\ntest_a if data.ztgate.authz.allow\n")
	failsWith(t, "builtin net.lookup_ip_addr is not allowed", "policy", "test", dns)
	failsWith(t, "builtin net.lookup_ip_addr is not allowed", "policy", "eval", "--input", "-", "--policy-dir", dns)
	if n := hits.Load(); n != 0 {
		t.Fatalf("the loopback server got %d requests from a refused policy", n)
	}

	// Control: allowed, the same test runs, and does reach the server.
	if out := ok(t, "policy", "test", "--allow-builtin", "http.send", dir); !strings.Contains(out, "PASS: 1/1") {
		t.Errorf("policy test --allow-builtin http.send:\n%s", out)
	}
	if hits.Load() == 0 {
		t.Fatal("the allowed http.send reached nothing: the refusal above proves nothing")
	}
	failsWith(t, "not a builtin", "policy", "test", "--allow-builtin", "http.sned", dir)
}
