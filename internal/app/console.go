package app

import (
	"fmt"

	"github.com/ztgate/ztgate/api"
	"github.com/ztgate/ztgate/console"
)

// consoleParts are what the API needs to serve the web console: the
// sign-in and sessions (in memory: a restart signs everyone out), the
// sampler of the overview's decision rate (run by the API server from
// Start to Close), and the denial stream's source, the decision log (nil
// when it is off: the stream then answers 501). Nothing when the console
// is turned off.
func (a *App) consoleParts(on bool) (*console.Console, *console.Sampler, api.DenialSource, error) {
	if !on {
		return nil, nil, nil, nil
	}
	con, err := console.New(console.Options{})
	if err != nil {
		return nil, nil, nil, fmt.Errorf("app: %w", err)
	}
	sampler, err := console.NewSampler(a.m.DecisionTotals, 0, 0)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("app: %w", err)
	}
	var denials api.DenialSource
	if a.dlog != nil {
		// Not a.dlog itself when nil: a nil *Logger in the interface
		// would not be a nil DenialSource.
		denials = a.dlog
	}
	return con, sampler, denials, nil
}
