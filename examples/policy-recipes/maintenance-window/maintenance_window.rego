# A maintenance window: an addition to the default policy (put this file
# next to authz.rego; it uses the default policy's helpers).
#
# Firmware updates go out at night only. A workload labelled role=updater may
# publish devices/+/commands/firmware and below (not retained, not as a Last
# Will) while the time of the decision, input.time (RFC 3339, UTC), is in
# the window 02:00 to 04:00 UTC; outside it the same publish is denied with
# the reason "outside the maintenance window". Devices receive firmware
# commands under the default policy (devices/NAME/commands/#).
package ztgate.authz

maintenance_window := {"from_hour": 2, "to_hour": 4}

in_maintenance_window(t) if {
	[hour, _, _] := time.clock(time.parse_rfc3339_ns(t))
	hour >= maintenance_window.from_hour
	hour < maintenance_window.to_hour
}

firmware_command(topic) if mqtt.topic_matches("devices/+/commands/firmware/#", topic)

allow if {
	input.action == "publish"
	role(input) == "updater"
	input.will == false
	input.retain == false
	firmware_command(input.topic)
	in_maintenance_window(input.time)
}

reasons contains "outside the maintenance window" if {
	not allow
	input.action == "publish"
	role(input) == "updater"
	firmware_command(input.topic)
	not in_maintenance_window(input.time)
}
