// Package test holds ztgate's end-to-end security tests. Each test starts a
// real gateway (mTLS listener, registry, OPA engine with the default policy)
// on 127.0.0.1 and drives it with real MQTT clients and real certificates:
// paho for MQTT 5, the mosquitto command line clients for MQTT 3.1.1.
// Every negative assertion ("this message never arrives") stands next to a
// positive control showing that the same path delivers what is allowed.
package test
