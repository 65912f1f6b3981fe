# A small policy with the default policy's shape, for the gateway's own tests:
# a device spiffe://TD/device/NAME, enrolled and active, publishes its
# telemetry and state, subscribes to and receives its commands, and may leave
# its state topic as Last Will; a controller reads every device's telemetry
# and state and publishes commands.
package ztgate.authz

default allow := false

active if input.device.status == "active"

name := input.device.name if {
	active
	input.identity.segments == ["device", input.device.name]
}

controller if {
	active
	input.device.labels.role == "controller"
}

allow if {
	input.action == "connect"
	active
}

allow if {
	input.action == "publish"
	not input.will
	some f in [sprintf("devices/%s/telemetry/#", [name]), sprintf("devices/%s/state", [name])]
	mqtt.topic_matches(f, input.topic)
}

allow if {
	input.action == "publish"
	input.will
	input.topic == sprintf("devices/%s/state", [name])
}

allow if {
	input.action == "subscribe"
	mqtt.filter_within(sprintf("devices/%s/commands/#", [name]), input.filter)
}

allow if {
	input.action == "receive"
	mqtt.topic_matches(sprintf("devices/%s/commands/#", [name]), input.topic)
}

controller_reads := ["devices/+/telemetry/#", "devices/+/state"]

allow if {
	input.action == "subscribe"
	controller
	some f in controller_reads
	mqtt.filter_within(f, input.filter)
}

allow if {
	input.action == "receive"
	controller
	some f in controller_reads
	mqtt.topic_matches(f, input.topic)
}

allow if {
	input.action == "publish"
	controller
	not input.will
	mqtt.topic_matches("devices/+/commands/#", input.topic)
}

reasons contains "device not enrolled" if input.device == null

reasons contains "device not active" if {
	input.device != null
	not active
}
