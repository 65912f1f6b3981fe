package identity

import "time"

// SetMinWaitForTest shortens the floor of the refresh interval and of the
// retry backoff (1s in production), so a test sees several fetches in a
// fraction of a second. Call it before Start.
func (f *Federation) SetMinWaitForTest(d time.Duration) { f.minWait = d }
