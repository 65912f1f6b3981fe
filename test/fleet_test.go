package test

import (
	"testing"

	"github.com/ztgate/ztgate/internal/testutil"
)

// Shorthands for the bounds of waits.
const (
	wait  = testutil.Wait
	quiet = testutil.Quiet
)

type msg = testutil.Msg

// fleet is a gateway with the cast most tests need: two devices, a
// controller and a spy. The spy (role=spy, from testutil.SpyPolicy, which
// grants nothing but connect, subscribe and receive to that role) can read
// every topic, so a test can show that a refused message reached no one.
type fleet struct {
	env    *testutil.Env
	s1, s2 *testutil.Device // devices sensor-1 and sensor-2
	ctl    *testutil.Device // role=controller
	spy    *testutil.Device // role=spy
}

func newFleet(t *testing.T, opts ...testutil.Option) *fleet {
	t.Helper()
	opts = append([]testutil.Option{testutil.WithExtraPolicy("zz_spy.rego", testutil.SpyPolicy)}, opts...)
	env := testutil.Start(t, opts...)
	return &fleet{
		env: env,
		s1:  env.Enroll(t, "sensor-1", map[string]string{"role": "sensor"}),
		s2:  env.Enroll(t, "sensor-2", map[string]string{"role": "sensor"}),
		ctl: env.EnrollID(t, "ctl", "spiffe://example.org/controller/ctl", map[string]string{"role": "controller"}),
		spy: env.EnrollID(t, "spy", "spiffe://example.org/observer/spy", map[string]string{"role": "spy"}),
	}
}

// spyOn connects the spy subscribed to "#".
func (f *fleet) spyOn(t *testing.T) *testutil.Client {
	t.Helper()
	c := f.env.MustConnect(t, f.spy, "spy", nil)
	c.Sub(t, "#")
	return c
}
