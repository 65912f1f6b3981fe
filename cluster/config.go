package cluster

import (
	"errors"
	"fmt"
	"net"
	"strconv"
)

// validate reports the first problem of cfg as a one-line error.
func (cfg NodeConfig) validate() error {
	if cfg.Name == "" {
		return errors.New("cluster: name is empty")
	}
	if cfg.Node == "" {
		return errors.New("cluster: node is empty")
	}
	if cfg.DataDir == "" {
		// JetStream would silently fall back to a temporary directory and
		// lose the replicated state on restart.
		return errors.New("cluster: data dir is empty")
	}
	secure := cfg.TLS != nil
	listen, err := routeAddr("listen", cfg.Listen, secure)
	if err != nil {
		return err
	}
	if len(cfg.Peers) == 0 {
		// nats-server refuses clustered JetStream without routes.
		return errors.New("cluster: peers is empty, a cluster node needs at least one peer")
	}
	seen := map[string]bool{listen: true}
	for i, p := range cfg.Peers {
		peer, err := routeAddr(fmt.Sprintf("peers[%d]", i), p, secure)
		if err != nil {
			return err
		}
		if peer == listen {
			return fmt.Errorf("cluster: peers[%d] %q is this node's own listen address", i, p)
		}
		if seen[peer] {
			return fmt.Errorf("cluster: peers[%d] %q is listed twice", i, p)
		}
		seen[peer] = true
	}
	if cfg.ClientListen != "" {
		if _, _, err := loopbackHostPort("client listen", cfg.ClientListen); err != nil {
			return err
		}
	}
	return nil
}

// routeAddr checks a route address and returns it in a canonical form so
// that "[::1]:6222" and "[0:0::1]:6222" spellings of the same IP compare
// equal. Routes need a fixed port because peers dial it. Without route TLS
// only literal loopback IPs are taken; with it, any host, names included,
// since a peer is then admitted by its SVID, not by where it is.
func routeAddr(field, addr string, secure bool) (string, error) {
	if secure {
		host, port, err := splitHostPort(addr)
		if err != nil {
			return "", fmt.Errorf("cluster: %s %q: %w", field, addr, err)
		}
		if port == 0 {
			return "", fmt.Errorf("cluster: %s %q needs a fixed port, not 0", field, addr)
		}
		if ip := net.ParseIP(host); ip != nil {
			host = ip.String()
		}
		return net.JoinHostPort(host, strconv.Itoa(port)), nil
	}
	ip, port, err := loopbackHostPort(field, addr)
	if err != nil {
		return "", err
	}
	if port == 0 {
		return "", fmt.Errorf("cluster: %s %q needs a fixed port, not 0", field, addr)
	}
	return net.JoinHostPort(ip.String(), strconv.Itoa(port)), nil
}

// loopbackHostPort parses host:port and insists on a literal loopback IP:
// routes and the client port carry no authentication yet, so exposing them
// beyond the host would let anyone read and rewrite the cluster's state.
// Host names are refused because their resolution can change under us.
func loopbackHostPort(field, addr string) (net.IP, int, error) {
	host, port, err := splitHostPort(addr)
	if err != nil {
		return nil, 0, fmt.Errorf("cluster: %s %q: %w", field, addr, err)
	}
	ip := net.ParseIP(host)
	if ip == nil || !ip.IsLoopback() {
		return nil, 0, fmt.Errorf("cluster: %s %q: host must be a loopback IP unless the routes have TLS", field, addr)
	}
	return ip, port, nil
}

func splitHostPort(addr string) (string, int, error) {
	host, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, errors.New("not host:port")
	}
	if host == "" {
		return "", 0, errors.New("empty host")
	}
	port, err := strconv.Atoi(p)
	if err != nil || port < 0 || port > 65535 {
		return "", 0, fmt.Errorf("bad port %q", p)
	}
	return host, port, nil
}
