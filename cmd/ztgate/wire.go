package main

import "github.com/ztgate/ztgate/api"

// The API's own wire types, under the names the commands use, so that the
// command line and the server cannot drift apart.
type (
	tokenRequest   = api.TokenRequest
	tokenResponse  = api.TokenResponse
	enrollRequest  = api.EnrollRequest
	svidResponse   = api.SVIDResponse
	deviceList     = api.DeviceList
	importDevice   = api.ImportDevice
	importRequest  = api.ImportRequest
	importResponse = api.ImportResponse
	auditPage      = api.AuditList
	policyStatus   = api.PolicyStatus
)
