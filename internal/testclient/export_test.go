package testclient

// Failure is failure, for the external tests.
var Failure = failure
