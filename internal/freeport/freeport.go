// Package freeport finds loopback ports for the nodes of clusters started
// in one process (the tests' and the bench's), and recognises the error of
// a port taken again before a node bound it.
package freeport

import (
	"errors"
	"fmt"
	"net"
	"strings"
	"syscall"
)

// Loopback returns n distinct loopback addresses whose ports were free a
// moment ago; a port may be taken again before it is bound, which
// IsAddrInUse recognises.
func Loopback(n int) ([]string, error) {
	addrs := make([]string, 0, n)
	ls := make([]net.Listener, 0, n)
	defer func() {
		for _, l := range ls {
			_ = l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("freeport: %w", err)
		}
		ls = append(ls, l)
		addrs = append(addrs, l.Addr().String())
	}
	return addrs, nil
}

// IsAddrInUse reports whether err comes from a port already taken.
func IsAddrInUse(err error) bool {
	// The embedded NATS server does not always wrap the listener's error.
	return errors.Is(err, syscall.EADDRINUSE) || (err != nil && strings.Contains(err.Error(), "address already in use"))
}
