package cluster_test

import (
	"maps"
	"testing"

	"github.com/ztgate/ztgate/internal/testcluster"
	"github.com/ztgate/ztgate/policy"
)

// A module removed on one node is gone from every node, from the policy in
// force and from each node's directory, by the path an upload takes; the
// upload before it reached the other node first (positive control).
func TestPolicySyncReplicatesRemoval(t *testing.T) {
	tc := testcluster.Start(t, 3)
	a := newPolicyNode(t, psBase(), policy.Options{})
	b := newPolicyNode(t, psBase(), policy.Options{})
	a.start(t, tc.Nodes[0])
	b.start(t, tc.Nodes[1])

	if err := a.eng.PutModule("admin.rego", []byte(psAdmin)); err != nil {
		t.Fatal(err)
	}
	psWaitSet(t, a.set(), b)
	if got := b.files(t); !maps.Equal(got, psWith(psBase(), "admin.rego", psAdmin)) {
		t.Fatalf("B's directory after the upload holds %q", got)
	}

	if err := a.eng.RemoveModule("admin.rego"); err != nil {
		t.Fatal(err)
	}
	psWaitSet(t, a.set(), b)
	if got := b.files(t); !maps.Equal(got, psBase()) {
		t.Errorf("B's directory after the removal holds %q, want %q", got, psBase())
	}
	if st := b.eng.Status(); st.Revision != a.eng.Revision() {
		t.Errorf("B's revision %s, A's %s", st.Revision, a.eng.Revision())
	}
}
