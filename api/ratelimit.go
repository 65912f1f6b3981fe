package api

import (
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/hashicorp/golang-lru/simplelru"
	"golang.org/x/time/rate"
)

const (
	// DefaultEnrollRate and DefaultEnrollBurst limit enrollment attempts
	// per remote address: a device enrolls once, so a handful of attempts
	// covers retries, while guessing at tokens stays pointless.
	DefaultEnrollRate  rate.Limit = 1
	DefaultEnrollBurst            = 5

	// maxLimitedAddrs bounds the addresses the enrollment limiter tracks
	// (a few hundred bytes each), however many addresses a flood uses.
	maxLimitedAddrs = 10_000

	// DefaultRenewBurst renewals per SPIFFE ID, then one per 20 seconds
	// (DefaultRenewRate): a device renews about once per half SVID
	// lifetime, so this covers retries and restarts, while a device that
	// loops can no longer turn renewals into a stream of signatures and
	// synced audit writes.
	DefaultRenewRate  = rate.Limit(1.0 / 20)
	DefaultRenewBurst = 3

	// maxLimitedIDs bounds the identities the renewal limiter tracks. An
	// identity dropped from it starts again with a full burst, which only
	// a valid SVID of its own can spend.
	maxLimitedIDs = 10_000
)

// addrLimiter is a token bucket per key (a remote address, or a SPIFFE ID
// for renewals), held in a bounded LRU.
//
// An address idle for longer than a full refill has a full bucket again, so
// dropping its entry loses nothing; such entries are dropped as the limiter
// is used. When the LRU is full of addresses active within that time, the
// least recently seen one is dropped: memory stays bounded, and an attacker
// who cycles through more addresses than the LRU holds gains no more than
// the addresses themselves already give.
type addrLimiter struct {
	mu    sync.Mutex
	limit rate.Limit
	burst int
	idle  time.Duration
	lru   *simplelru.LRU // key -> *addrEntry
}

type addrEntry struct {
	lim  *rate.Limiter
	seen time.Time
}

func newAddrLimiter(limit rate.Limit, burst, size int) (*addrLimiter, error) {
	idle := time.Minute
	if limit > 0 && limit != rate.Inf {
		if full := time.Duration(float64(burst) / float64(limit) * float64(time.Second)); full > idle {
			idle = full
		}
	}
	lru, err := simplelru.NewLRU(size, nil)
	if err != nil {
		return nil, fmt.Errorf("api: rate limiter: %w", err)
	}
	return &addrLimiter{limit: limit, burst: burst, idle: idle, lru: lru}, nil
}

// allow reports whether one more request from the address key may proceed at now.
func (l *addrLimiter) allow(key string, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	// Drop a bounded number of idle entries, oldest first: the LRU's oldest
	// entry is the one seen longest ago.
	for range 16 {
		_, v, ok := l.lru.GetOldest()
		if !ok || now.Sub(v.(*addrEntry).seen) < l.idle {
			break
		}
		l.lru.RemoveOldest()
	}
	var e *addrEntry
	if v, ok := l.lru.Get(key); ok {
		e = v.(*addrEntry)
	} else {
		e = &addrEntry{lim: rate.NewLimiter(l.limit, l.burst)}
		l.lru.Add(key, e)
	}
	e.seen = now
	return e.lim.AllowN(now, 1)
}

func (l *addrLimiter) len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lru.Len()
}

// limitKey is the rate-limit key of a remote address (host:port): the IPv4
// address, or the /64 prefix of an IPv6 address, since one host usually
// holds a whole /64. Anything that does not parse shares one key, so it is
// limited rather than let through.
func limitKey(remoteAddr string) string {
	host, _, err := net.SplitHostPort(remoteAddr)
	if err != nil {
		host = remoteAddr
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return "unparsed"
	}
	ip = ip.Unmap().WithZone("")
	if ip.Is4() {
		return ip.String()
	}
	p, err := ip.Prefix(64)
	if err != nil {
		return "unparsed"
	}
	return p.String()
}
