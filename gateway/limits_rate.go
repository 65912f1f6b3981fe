package gateway

import (
	"log/slog"
	"math"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// epoch is the origin of bucket time: monotonic nanoseconds since it.
var epoch = time.Now()

func nanotime(t time.Time) int64 { return int64(t.Sub(epoch)) }

// bucket is a token bucket in GCRA form (the "virtual scheduling" of ATM
// cell rate policing): one atomic word, the theoretical arrival time of the
// next unit, instead of a count and a refill clock under a lock. Charging n
// units moves it n/rate ahead; a charge that leaves it more than the burst
// ahead of now must wait for the difference. Charges are never refused:
// the caller waits (see packetConn), so the bucket is also a queue.
//
// Every session of an identity charges the same bucket, lock-free and
// without allocating.
type bucket struct {
	tat    atomic.Int64 // ns since epoch
	params atomic.Pointer[bucketParams]
}

// bucketParams are the rate of a bucket; nil is no limit.
type bucketParams struct {
	per    float64 // ns per unit
	window int64   // ns: how far ahead of now tat may be without waiting
}

// set changes the rate of b to rate units per second, burst units at once;
// a rate of 0 (or one a nanosecond cannot express) is no limit.
func (b *bucket) set(rate, burst float64) {
	if rate <= 0 || 1e9/rate < 1e-3 {
		b.params.Store(nil)
		return
	}
	per := 1e9 / rate
	p := &bucketParams{per: per, window: int64(math.Min(per*burst, math.MaxInt64/4))}
	if cur := b.params.Load(); cur != nil && *cur == *p {
		return
	}
	b.params.Store(p)
}

// take charges n units at now and returns how long the caller must wait
// before it may go on (0: at once).
func (b *bucket) take(now int64, n float64) time.Duration {
	p := b.params.Load()
	if p == nil {
		return 0
	}
	cost := int64(n * p.per)
	for {
		old := b.tat.Load()
		next := max(old, now) + cost
		if b.tat.CompareAndSwap(old, next) {
			return time.Duration(max(next-p.window-now, 0))
		}
	}
}

// full reports whether b has its whole burst again at now (nothing to
// remember about it).
func (b *bucket) full(now time.Time) bool {
	return b.tat.Load() <= nanotime(now)
}

// ipLimiter is the per-source-address rate of new connections: one bucket
// per address (per /64 for IPv6, which hands a host a whole prefix), checked
// before the TLS handshake so that a flood costs an accept and a close.
type ipLimiter struct {
	rate, burst float64

	mu    sync.Mutex
	addrs map[netip.Addr]*ipEntry
}

type ipEntry struct {
	b   bucket
	log limitLog
}

// newIPLimiter returns the limiter of rate connections per second, burst
// at once; with a rate of 0 it limits nothing but still aggregates the log
// lines of per-address hits.
func newIPLimiter(rate float64, burst int) *ipLimiter {
	return &ipLimiter{rate: rate, burst: float64(max(burst, 1)), addrs: make(map[netip.Addr]*ipEntry)}
}

// addrKey is the key of a remote address: the IP, an IPv6 one reduced to
// its /64. ok is false for an address that is not IP.
func addrKey(a net.Addr) (netip.Addr, bool) {
	ta, ok := a.(*net.TCPAddr)
	if !ok {
		return netip.Addr{}, false
	}
	ip, ok := netip.AddrFromSlice(ta.IP)
	if !ok {
		return netip.Addr{}, false
	}
	ip = ip.Unmap()
	if ip.Is6() {
		ip = netip.PrefixFrom(ip, 64).Masked().Addr()
	}
	return ip, true
}

// allow reports whether a new connection from a may proceed now. A
// connection over the rate is refused, not delayed: holding it would be
// holding exactly what a flood is after.
func (l *ipLimiter) allow(a net.Addr, now time.Time) bool {
	if l == nil || l.rate <= 0 {
		return true
	}
	key, ok := addrKey(a)
	if !ok {
		return true
	}
	e := l.entry(key)
	n := nanotime(now)
	p := e.b.params.Load()
	for {
		old := e.b.tat.Load()
		next := max(old, n) + int64(p.per)
		if next-p.window > n {
			return false // over the rate; nothing charged
		}
		if e.b.tat.CompareAndSwap(old, next) {
			return true
		}
	}
}

func (l *ipLimiter) entry(key netip.Addr) *ipEntry {
	l.mu.Lock()
	defer l.mu.Unlock()
	e := l.addrs[key]
	if e == nil {
		e = &ipEntry{}
		e.b.set(l.rate, l.burst)
		l.addrs[key] = e
	}
	return e
}

// hit counts a refusal of the address and reports whether to log it (once
// a minute per address) with the number of hits since the last line.
func (l *ipLimiter) hit(a net.Addr, now time.Time) (log bool, hits int) {
	key, ok := addrKey(a)
	if l == nil || !ok {
		return true, 1
	}
	e := l.entry(key)
	l.mu.Lock()
	defer l.mu.Unlock()
	e.log.count++
	if !e.log.at.IsZero() && now.Sub(e.log.at) < limitLogInterval {
		return false, 0
	}
	hits = e.log.count
	e.log.at, e.log.count = now, 0
	return true, hits
}

// sweep forgets the addresses whose bucket is full again and that have no
// hit left to log, after logging those whose minute is over.
func (l *ipLimiter) sweep(now time.Time, g *Gateway) {
	if l == nil {
		return
	}
	type due struct {
		addr netip.Addr
		hits int
	}
	var dues []due
	l.mu.Lock()
	for k, e := range l.addrs {
		if e.log.count > 0 && now.Sub(e.log.at) >= limitLogInterval {
			dues = append(dues, due{k, e.log.count})
			e.log.at, e.log.count = now, 0
		}
		if e.log.count == 0 && e.b.full(now) && now.Sub(e.log.at) >= limitLogInterval {
			delete(l.addrs, k)
		}
	}
	l.mu.Unlock()
	for _, d := range dues {
		g.log.LogAttrs(g.ctx, slog.LevelWarn, "gateway: limit hit (repeated)", slog.String("limit", "per source address"),
			slog.String("source", d.addr.String()), slog.Int("hits", d.hits))
	}
}

// addrHit counts and logs a hit of a per-address limit (the connection rate,
// the handshake timeout): before the handshake there is no identity, so the
// line is once a minute per source address.
func (g *Gateway) addrHit(limit string, remote net.Addr) {
	g.metrics.LimitHit(limit)
	log, hits := g.limits.conns.hit(remote, time.Now())
	if !log {
		return
	}
	g.log.LogAttrs(g.ctx, slog.LevelWarn, "gateway: limit hit: connection refused before CONNECT",
		slog.String("limit", limit), slog.String("remote_addr", remote.String()), slog.Int("hits", hits))
}
