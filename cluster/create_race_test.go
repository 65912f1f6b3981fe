package cluster_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/ztgate/ztgate/cluster"
	"github.com/ztgate/ztgate/internal/testcluster"
)

// Every node creates the cluster's streams at start, all at once: each
// must get them within a bounded time.
func TestConcurrentStreamCreation(t *testing.T) {
	tc := testcluster.Start(t, 3)
	var wg sync.WaitGroup
	errs := make([]error, 3)
	took := make([]time.Duration, 3)
	for i := range 3 {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			start := time.Now()
			_, errs[i] = cluster.NewRegistryLog(ctx, tc.Nodes[i].JetStream(), 3)
			took[i] = time.Since(start)
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("node %d: %v (after %s)", i, err, took[i])
		}
	}
	t.Logf("took %v", took)
}
