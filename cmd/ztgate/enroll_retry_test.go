package main

import (
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/ztgate/ztgate/identity"
	"github.com/ztgate/ztgate/internal/app"
	"github.com/ztgate/ztgate/registry"
)

// answerDropper is a TCP proxy to a's API that loses the API's answers
// once the device name is no longer pending: the enrollment reaches the
// API and is carried out, but its answer never reaches the device. TLS
// goes through it untouched, pin check included.
type answerDropper struct {
	ln   net.Listener
	wg   sync.WaitGroup
	done chan struct{}
}

func dropAnswersAfterEnrollment(t *testing.T, a *app.App, name string) *answerDropper {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &answerDropper{ln: ln, done: make(chan struct{})}
	enrolled := func() bool {
		d, err := a.Registry().Get(name)
		return err == nil && d.Status != registry.StatusPending
	}
	p.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.wg.Go(func() { p.serve(c, a.APIAddr().String(), enrolled) })
		}
	})
	t.Cleanup(func() {
		close(p.done)
		ln.Close()
		p.wg.Wait()
	})
	return p
}

func (p *answerDropper) serve(c net.Conn, upstream string, enrolled func() bool) {
	defer c.Close()
	u, err := net.Dial("tcp", upstream)
	if err != nil {
		return
	}
	defer u.Close()
	go func() {
		<-p.done
		c.Close()
		u.Close()
	}()
	go func() { _, _ = io.Copy(u, c) }()
	buf := make([]byte, 32<<10)
	for {
		n, err := u.Read(buf)
		// The API answers only after the redemption is committed: from
		// then on, nothing reaches the device.
		if n > 0 && enrolled() {
			return
		}
		if n > 0 {
			if _, werr := c.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func (p *answerDropper) url() string {
	_, port, _ := net.SplitHostPort(p.ln.Addr().String())
	return "https://localhost:" + port
}

// A device whose enrollment answer was lost enrolls by running the same
// command again: the key it sent was kept in --out, and the API gives the
// same key an SVID again. From another directory (another key) the used
// token is refused, with a message that says what works.
func TestEnrollRetryAfterLostAnswer(t *testing.T) {
	a := startApp(t)
	admin := apiFlagsOf(a)
	pin := identity.CAPin(a.CA().Certificate())
	token := keyValues(t, ok(t, append([]string{"device", "token", "sensor-5", "--ttl", "30m"}, admin...)...))["token"]
	out := filepath.Join(t.TempDir(), "sensor-5")

	lossy := dropAnswersAfterEnrollment(t, a, "sensor-5")
	r := ztgate(t, nil, "", "enroll", "--api", lossy.url(), "--token", token, "--ca-pin", pin, "--out", out)
	if r.code == 0 {
		t.Fatalf("enroll through a proxy that loses the answer succeeded: %+v", r)
	}
	if d, err := a.Registry().Get("sensor-5"); err != nil || d.Status != registry.StatusActive {
		t.Fatalf("the lost enrollment did not happen: %+v %v", d, err)
	}
	if _, err := os.Stat(filepath.Join(out, "svid.pem")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("an SVID was written without an answer (%v)", err)
	}

	// Another key (another directory): refused, and told what works.
	other := filepath.Join(t.TempDir(), "elsewhere")
	msg := failsWith(t, "the API refused the token", "enroll", "--api", localhostURL(a), "--token", token, "--ca-pin", pin, "--out", other)
	for _, want := range []string{"same --out", "ztgate device enroll"} {
		if !strings.Contains(msg, want) {
			t.Errorf("refusal %q does not mention %q", msg, want)
		}
	}

	// The same command again: enrolled, with the key it first sent.
	stdout := ok(t, "enroll", "--api", localhostURL(a), "--token", token, "--ca-pin", pin, "--out", out)
	if !strings.Contains(stdout, "enrolled as spiffe://example.org/device/sensor-5") {
		t.Fatalf("retry output:\n%s", stdout)
	}
	checkSVIDDir(t, a, out, "spiffe://example.org/device/sensor-5")
	entries, err := os.ReadDir(out)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if strings.Join(names, " ") != "api.url bundle.pem svid.key svid.pem" {
		t.Errorf("%s holds %v after the enrollment, want exactly the SVID files and the API's URL", out, names)
	}
	// Once done, the key is no longer kept for the token: running again
	// makes a new key, which the used token does not take.
	failsWith(t, "the API refused the token", "enroll", "--api", localhostURL(a), "--token", token, "--ca-pin", pin, "--out", out)
	checkSVIDDir(t, a, out, "spiffe://example.org/device/sensor-5")

	// An enrolled device gets no new token; the refusal says what works.
	msg = failsWith(t, "HTTP 409", append([]string{"device", "token", "sensor-5"}, admin...)...)
	for _, want := range []string{"same token and --out", "ztgate device enroll sensor-5"} {
		if !strings.Contains(msg, want) {
			t.Errorf("token refusal %q does not mention %q", msg, want)
		}
	}
}
