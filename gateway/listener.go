package gateway

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	"github.com/mochi-mqtt/server/v2/listeners"
)

// listener is the broker's one listener: TCP with mutual TLS. It replaces
// mochi's own TCP listener to
//   - complete the TLS handshake before mochi sees the connection, so a
//     peer without a valid client certificate never reaches MQTT and its
//     refusal is logged as such;
//   - bound the handshake plus CONNECT with a deadline (mochi sets none
//     before CONNECT);
//   - bound the size of every packet, the first of which must be a
//     CONNECT, before mochi allocates it (see packetConn);
//   - keep accepting through transient errors (mochi's stops at the first);
//   - count its connections itself, before each one starts, so that Close
//     waits for them without racing mochi's own WaitGroup (mochi adds to it
//     inside the connection's goroutine).
type listener struct {
	id      string
	tcp     net.Listener
	tls     *tls.Config
	timeout time.Duration
	// maxConnect bounds the first packet, maxPacket every later one until
	// the CONNECT is admitted (see packetConn).
	maxConnect int
	maxPacket  int
	refused    func() // counts a connection refused in the handshake or before CONNECT
	// connRate bounds the new connections of a source address (nil: no
	// bound); rateHit and timeoutHit count and log its refusals and the
	// connections that ran out of time before CONNECT (limits_rate.go).
	connRate   *ipLimiter
	rateHit    func(net.Addr)
	timeoutHit func(net.Addr)
	// disconnectClients, if set, is used at Close instead of mochi's
	// closer (see Gateway.disconnectClients).
	disconnectClients func()
	log               *slog.Logger

	wg     sync.WaitGroup
	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
}

var _ listeners.Listener = (*listener)(nil)

func newListener(id string, tcp net.Listener, cfg *tls.Config, timeout time.Duration, refused func()) *listener {
	if refused == nil {
		refused = func() {}
	}
	return &listener{id: id, tcp: tcp, tls: cfg, timeout: timeout, refused: refused, conns: make(map[net.Conn]struct{})}
}

func (l *listener) ID() string       { return l.id }
func (l *listener) Address() string  { return l.tcp.Addr().String() }
func (l *listener) Protocol() string { return "tcp+mtls" }

func (l *listener) Init(log *slog.Logger) error {
	l.log = log
	return nil
}

// Serve accepts connections until Close.
func (l *listener) Serve(establish listeners.EstablishFn) {
	var backoff time.Duration
	for {
		c, err := l.tcp.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors and the like: wait and retry, as
			// net/http does.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			l.log.Warn("gateway: accept failed; retrying", "err", err, "in", backoff)
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		if !l.connRate.allow(c.RemoteAddr(), time.Now()) {
			// Before any TLS work: a flood costs an accept and a close.
			l.refused()
			if l.rateHit != nil {
				l.rateHit(c.RemoteAddr())
			}
			_ = c.Close()
			continue
		}
		if !l.track(c) {
			_ = c.Close()
			return
		}
		go func() {
			defer l.wg.Done()
			defer l.untrack(c)
			l.serveConn(c, establish)
		}()
	}
}

func (l *listener) serveConn(c net.Conn, establish listeners.EstablishFn) {
	// mochi replaces this deadline with one derived from the keepalive once
	// CONNECT is accepted.
	if err := c.SetDeadline(time.Now().Add(l.timeout)); err != nil {
		_ = c.Close()
		return
	}
	tc := tls.Server(c, l.tls)
	if err := tc.HandshakeContext(context.Background()); err != nil {
		l.refused()
		if isTimeout(err) && l.timeoutHit != nil {
			// Logged once a minute per address: a half-open flood must
			// not become a log flood.
			l.timeoutHit(c.RemoteAddr())
			_ = tc.Close()
			return
		}
		l.log.Info("gateway: TLS handshake refused", "remote_addr", c.RemoteAddr().String(), "err", err)
		_ = tc.Close()
		return
	}
	pc := newPacketConn(tc, l.maxConnect, l.maxPacket)
	err := establish(l.id, pc)
	switch {
	case err == nil, errors.Is(err, errConnectRefused):
	case errors.Is(err, errPreConnect):
		// The handshake verified the SVID: name the identity that sent it.
		l.log.Info("gateway: connection refused before CONNECT", "remote_addr", c.RemoteAddr().String(),
			"spiffe_id", peerURI(tc), "err", err)
		l.refused()
	case pc.first && isTimeout(err) && l.timeoutHit != nil:
		// No CONNECT within the deadline.
		l.refused()
		l.timeoutHit(c.RemoteAddr())
	default:
		l.log.Debug("gateway: connection ended", "remote_addr", c.RemoteAddr().String(), "err", err)
	}
}

// isTimeout reports whether err is a deadline running out.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, os.ErrDeadlineExceeded) || errors.As(err, &ne) && ne.Timeout()
}

// peerURI is the URI SAN of the peer's verified leaf certificate (its
// SPIFFE ID), for log lines written before OnConnect has checked it again.
func peerURI(tc *tls.Conn) string {
	cs := tc.ConnectionState()
	if len(cs.PeerCertificates) == 0 || len(cs.PeerCertificates[0].URIs) != 1 {
		return ""
	}
	return cs.PeerCertificates[0].URIs[0].String()
}

// track registers a new connection; false once the listener is closed.
func (l *listener) track(c net.Conn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return false
	}
	l.conns[c] = struct{}{}
	l.wg.Add(1)
	return true
}

func (l *listener) untrack(c net.Conn) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.conns, c)
}

// Close stops accepting, lets mochi disconnect its clients (closeClients
// sends them DISCONNECT), closes every connection still open (those not yet
// past CONNECT among them) and waits until all have been handled.
func (l *listener) Close(closeClients listeners.CloseFn) {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return
	}
	l.closed = true
	l.mu.Unlock()

	_ = l.tcp.Close()
	if l.disconnectClients != nil {
		l.disconnectClients()
	} else {
		closeClients(l.id)
	}
	l.mu.Lock()
	for c := range l.conns {
		_ = c.Close()
	}
	l.mu.Unlock()
	l.wg.Wait()
}
