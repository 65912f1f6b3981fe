// Package testpki is the bottom layer of the project's test helpers: a log
// buffer tests can read while servers write it, and the minting of test
// certificates (a throwaway CA, X.509-SVIDs, deliberately broken leaves).
//
// It is a non-test package so that the tests of every other package can
// import it, and it imports only the standard library so that any package,
// including the low ones, can use it without an import cycle. It is for
// tests only: nothing in the product imports it.
package testpki
