// Package decisionchain builds the one Decider the gateway and the admin
// API call: the policy engine inside the decision cache, inside the
// metrics, inside the decision log. Each layer is correct only in its
// place, so the order lives here, once, instead of at every caller:
//
//   - the cache directly around the engine: it keeps a decision with the
//     engine revision that made it and reuses it only while that revision
//     is in force, and it keeps only decisions no logger gave an id, so a
//     logger inside it would leave no deny cacheable;
//   - the metrics around the cache: they count and time every decision,
//     cached or not (a metrics layer inside the cache would miss every
//     hit), and, inside the log, time the decision alone, not the log's
//     encoding;
//   - the decision log outermost: it logs every decision the gateway and
//     the API make, hits included (a cached deny is a deny like any other
//     and must be audited), and gives every deny the decision_id the
//     enforcement point logs.
package decisionchain

import (
	"errors"

	"github.com/ztgate/ztgate/decisionlog"
	"github.com/ztgate/ztgate/metrics"
	"github.com/ztgate/ztgate/policy"
)

// Options are the layers of a chain.
type Options struct {
	// Engine decides. Required.
	Engine *policy.Engine
	// Cache bounds the decision cache; the zero value means its defaults.
	Cache policy.CacheOptions
	// Metrics counts and times every decision and exports the cache's and
	// the decision log's counters. Nil: no metrics.
	Metrics *metrics.Metrics
	// DecisionLog logs decisions. Nil: no decision log.
	DecisionLog *decisionlog.Logger
}

var errNoEngine = errors.New("decisionchain: no policy engine")

// New returns the Decider to enforce with, log(metrics(cache(engine))), and
// its cache, whose counters it has handed to the metrics (as it has the
// decision log's).
func New(opts Options) (policy.Decider, *policy.Cache, error) {
	if opts.Engine == nil {
		return nil, nil, errNoEngine
	}
	cache := policy.NewCache(opts.Engine, nil, opts.Cache)
	opts.Metrics.SetDecisionCacheStats(cache.Stats)
	if l := opts.DecisionLog; l != nil {
		opts.Metrics.SetDecisionLogStats(func() metrics.DecisionLogStats {
			// The same fields in the same order: a field added to one
			// and not the other stops this conversion from compiling.
			return metrics.DecisionLogStats(l.Stats())
		})
	}
	return opts.DecisionLog.Wrap(opts.Metrics.Wrap(cache)), cache, nil
}
