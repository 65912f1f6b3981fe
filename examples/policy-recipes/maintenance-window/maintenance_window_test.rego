# Tests of the maintenance window example, run together with the default
# policy: ztgate policy test DIR, with DIR holding both.
package ztgate.examples.maintenance_window_test

import data.ztgate.authz

publish(labels, status, topic, time) := {
	"action": "publish",
	"identity": {
		"spiffe_id": "spiffe://example.org/workload/updater",
		"trust_domain": "example.org",
		"path": "/workload/updater",
		"segments": ["workload", "updater"],
	},
	"device": {"name": "updater", "labels": labels, "status": status},
	"client": {"id": "updater-1", "remote_addr": "127.0.0.1:50412", "protocol_version": 5},
	"topic": topic,
	"qos": 1,
	"retain": false,
	"will": false,
	"payload_size": 512,
	"time": time,
}

updater := {"role": "updater"}

update(time) := publish(updater, "active", "devices/s1/commands/firmware", time)

allowed(d) if authz.allow with input as d

denied(d) if not authz.allow with input as d

test_inside_the_window if {
	allowed(update("2026-11-28T02:00:00Z"))
	allowed(update("2026-11-28T03:30:00Z"))
	allowed(update("2026-11-28T03:59:59Z"))
	allowed(publish(updater, "active", "devices/s1/commands/firmware/v2", "2026-11-28T02:00:00Z"))
}

test_outside_the_window if {
	allowed(update("2026-11-28T02:00:00Z"))
	denied(update("2026-11-28T01:59:59Z"))
	denied(update("2026-11-28T04:00:00Z"))
	denied(update("2026-11-28T12:00:00Z"))
	"outside the maintenance window" in authz.reasons with input as update("2026-11-28T12:00:00Z")
}

test_only_firmware_commands if {
	allowed(update("2026-11-28T03:00:00Z"))
	every topic in ["devices/s1/commands/reboot", "devices/+/commands/firmware", "devices/s1/telemetry/t", "devices/s1/commands/firmware2", "$SYS/x"] {
		denied(publish(updater, "active", topic, "2026-11-28T03:00:00Z"))
	}
}

test_not_retained_not_a_will if {
	allowed(update("2026-11-28T03:00:00Z"))
	denied(object.union(update("2026-11-28T03:00:00Z"), {"retain": true}))
	denied(object.union(update("2026-11-28T03:00:00Z"), {"will": true}))
}

test_only_active_updaters if {
	allowed(update("2026-11-28T03:00:00Z"))
	denied(publish({"role": "controller2"}, "active", "devices/s1/commands/firmware", "2026-11-28T03:00:00Z"))
	denied(publish({}, "active", "devices/s1/commands/firmware", "2026-11-28T03:00:00Z"))
	denied(publish(updater, "suspended", "devices/s1/commands/firmware", "2026-11-28T03:00:00Z"))

	# Not in the window, not an updater: the default reasons, not the window's.
	not "outside the maintenance window" in authz.reasons with input as publish({}, "active", "devices/s1/commands/firmware", "2026-11-28T12:00:00Z")
}
