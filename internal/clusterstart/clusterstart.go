// Package clusterstart starts the nodes of one ztgate cluster in one
// process, on loopback: what the tests' clusters (internal/testutil) and
// `ztgate bench --nodes` share. The nodes must start at once, because each
// waits in app.Start for a JetStream quorum of the others.
package clusterstart

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/ztgate/ztgate/internal/app"
)

// NodeName is the name of node i of a cluster started here.
func NodeName(i int) string { return "n" + strconv.Itoa(i) }

// Node is the cluster section of node i of the cluster called name whose
// nodes' route addresses are routes: it listens on routes[i] and routes to
// every other one.
func Node(name string, i int, routes []string, startTimeout time.Duration) *app.ClusterConfig {
	peers := make([]string, 0, len(routes)-1)
	for j, r := range routes {
		if j != i {
			peers = append(peers, r)
		}
	}
	return &app.ClusterConfig{
		Name:         name,
		Node:         NodeName(i),
		Listen:       routes[i],
		Peers:        peers,
		StartTimeout: startTimeout,
	}
}

// Start starts a gateway on each of cfgs, all at once, and returns them in
// the order of cfgs. If any fails, those that started are closed and the
// error names every node that failed.
func Start(ctx context.Context, cfgs []app.Config) ([]*app.App, error) {
	apps := make([]*app.App, len(cfgs))
	errs := make([]error, len(cfgs))
	var wg sync.WaitGroup
	for i := range cfgs {
		wg.Go(func() {
			var err error
			if apps[i], err = app.Start(ctx, cfgs[i]); err != nil {
				errs[i] = fmt.Errorf("node %s: %w", nodeOf(cfgs[i], i), err)
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		Close(apps)
		return nil, err
	}
	return apps, nil
}

func nodeOf(cfg app.Config, i int) string {
	if cfg.Cluster != nil && cfg.Cluster.Node != "" {
		return cfg.Cluster.Node
	}
	return NodeName(i)
}

// Close closes the gateways that are not nil, all at once: a node that
// waits for the quorum of the others while closing does not hold up theirs.
// It returns the errors of those that failed.
func Close(apps []*app.App) error {
	errs := make([]error, len(apps))
	var wg sync.WaitGroup
	for i, a := range apps {
		if a != nil {
			wg.Go(func() { errs[i] = a.Close() })
		}
	}
	wg.Wait()
	return errors.Join(errs...)
}
