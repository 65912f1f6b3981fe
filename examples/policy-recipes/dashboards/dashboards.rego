# Read-only dashboards: an addition to the default policy (put this file
# next to authz.rego; it uses the default policy's helpers).
#
# A workload labelled role=dashboard may subscribe to and receive every
# device's telemetry and state (devices/+/telemetry/#, devices/+/state), and
# nothing else: no publish of any kind (not even a Last Will), no commands,
# no $SYS, no admin API. Everything it is not granted here stays denied by
# default.
package ztgate.authz

dashboard_filters := ["devices/+/telemetry/#", "devices/+/state"]

allow if {
	input.action == "subscribe"
	role(input) == "dashboard"
	some granted in dashboard_filters
	mqtt.filter_within(granted, input.filter)
}

allow if {
	input.action == "receive"
	role(input) == "dashboard"
	some granted in dashboard_filters
	mqtt.topic_matches(granted, input.topic)
}
