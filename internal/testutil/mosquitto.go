package testutil

import (
	"path/filepath"

	"github.com/ztgate/ztgate/identity"
	"github.com/ztgate/ztgate/internal/testclient"
)

// Result is the outcome of a finished command (testclient.Run).
type Result = testclient.Result

// MosquittoArgs are the connection flags of the README's quickstart for
// dev: host, port, the CA bundle, the SVID and its key.
func (e *Env) MosquittoArgs(dev *Device) []string {
	return testclient.MosquittoArgs(e.MQTTAddr,
		filepath.Join(dev.Dir, identity.BundleFile),
		filepath.Join(dev.Dir, identity.SVIDFile),
		filepath.Join(dev.Dir, identity.SVIDKeyFile))
}
