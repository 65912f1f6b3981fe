package svidrenew

import "time"

const (
	// Jitter moves a renewal up to this fraction of the half-life earlier,
	// so that a fleet enrolled at once does not renew at once.
	Jitter = 0.1
	// MinRetry and MaxRetry bound the wait between failed attempts.
	MinRetry = time.Second
	MaxRetry = 5 * time.Minute
)

// RenewalTime is when an SVID is renewed: half-way through the life it had
// left when its holder got it, up to Jitter of that half earlier (jitter is
// in [0, 1)). Counting from when it was obtained rather than from NotBefore
// matters for short lifetimes: ztgate's CA backdates NotBefore by a minute
// to absorb clock skew, which would put the nominal half-life of a
// 20-second SVID before the moment it arrives.
func RenewalTime(notBefore, notAfter, obtained time.Time, jitter float64) time.Time {
	start := notBefore
	if obtained.After(start) {
		start = obtained
	}
	if !start.Before(notAfter) {
		return start
	}
	half := notAfter.Sub(start) / 2
	return start.Add(half - time.Duration(jitter*Jitter*float64(half)))
}

// RetryDelay is the wait after a failed renewal: the backoff, but never
// more than half of the life the SVID has left (so attempts come closer
// together as expiry nears and the last one still comes before it), up to
// a fifth shorter (jitter in [0, 1)), and never below MinRetry.
func RetryDelay(backoff, left time.Duration, jitter float64) time.Duration {
	d := backoff
	if left > 0 && d > left/2 {
		d = left / 2
	}
	d -= time.Duration(jitter * 0.2 * float64(d))
	return max(d, MinRetry)
}

// NextBackoff is the backoff after one more failure: doubled, at most
// MaxRetry.
func NextBackoff(backoff time.Duration) time.Duration {
	return min(2*max(backoff, MinRetry), MaxRetry)
}
