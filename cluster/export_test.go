package cluster

import "github.com/nats-io/nats.go/jetstream"

// UseSessionStream makes d read its records through st: a test binds st
// at the moment a node's start could have bound it.
func UseSessionStream(d *SessionDirectory, st jetstream.Stream) { d.stream = st }
