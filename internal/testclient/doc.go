// Package testclient is the middle layer of the project's test helpers:
// everything that talks to a running gateway from outside, given its
// address and a *tls.Config. A paho MQTT 5 client with a collector of what
// it receives, a raw packet client (MQTT 3.1.1, or MQTT 5 doing what paho
// will not), the mosquitto command line clients, and an mTLS HTTP client
// of the admin API.
//
// It knows nothing of how the gateway was started, so the in-package tests
// of gateway and api (which cannot import internal/app) use it as well as
// internal/testutil, which starts the whole app. It imports testing and is
// for tests only: nothing in the product imports it.
package testclient

import "time"

// Wait bounds every wait for something that must happen (a delivery, a
// disconnect, an answer). It is generous because it is only ever reached
// when a test fails.
const Wait = 10 * time.Second

// Quiet is how long a test watches for a message that must never arrive.
// It is only used after a positive control has shown, on the same path,
// that an allowed message arrives, so a short window suffices.
const Quiet = 300 * time.Millisecond

// MQTT 5 reason codes the tests assert on.
const (
	ReasonSuccess         byte = 0x00
	ReasonGrantedQoS1     byte = 0x01
	ReasonNotAuthorized   byte = 0x87
	ReasonUnspecifiedErr  byte = 0x80
	ReasonBadUserOrPasswd byte = 0x86
)
