# Tests of the per-site isolation example, run together with the default
# policy: ztgate policy test DIR, with DIR holding both.
package ztgate.examples.site_isolation_test

import data.ztgate.authz

doc(segs, labels, action, fields) := object.union(
	{
		"action": action,
		"identity": {
			"spiffe_id": concat("/", array.concat(["spiffe://example.org"], segs)),
			"trust_domain": "example.org",
			"path": concat("/", array.concat([""], segs)),
			"segments": segs,
		},
		"device": {"name": segs[count(segs) - 1], "labels": labels, "status": "active"},
		"client": {"id": "c1", "remote_addr": "127.0.0.1:50412", "protocol_version": 5},
		"time": "2026-11-28T12:00:00Z",
	},
	fields,
)

publish(segs, labels, topic) := doc(segs, labels, "publish", {"topic": topic, "qos": 1, "retain": false, "will": false, "payload_size": 4})

subscribe(segs, labels, filter) := doc(segs, labels, "subscribe", {"filter": filter, "qos": 1})

receive(segs, labels, topic) := doc(segs, labels, "receive", {"topic": topic, "qos": 1, "retain": false, "will": false, "payload_size": 4})

allowed(d) if authz.allow with input as d

denied(d) if not authz.allow with input as d

s1 := ["device", "s1"]

berlin := {"site": "berlin"}

ctl := ["workload", "ctl-berlin"]

berlin_ctl := {"site": "berlin", "role": "site-controller"}

test_device_in_its_site if {
	allowed(publish(s1, berlin, "sites/berlin/devices/s1/telemetry"))
	allowed(publish(s1, berlin, "sites/berlin/devices/s1/telemetry/temp"))
	allowed(subscribe(s1, berlin, "sites/berlin/devices/s1/commands/#"))
	allowed(receive(s1, berlin, "sites/berlin/devices/s1/commands/reboot"))
}

test_device_outside_its_site_denied if {
	allowed(publish(s1, berlin, "sites/berlin/devices/s1/telemetry/temp"))
	denied(publish(s1, berlin, "sites/paris/devices/s1/telemetry/temp"))
	denied(publish(s1, berlin, "sites/berlin/devices/s2/telemetry/temp"))
	denied(publish(s1, berlin, "sites/+/devices/s1/telemetry/temp"))
	denied(subscribe(s1, berlin, "sites/paris/devices/s1/commands/#"))
	denied(subscribe(s1, berlin, "sites/+/devices/s1/commands/#"))
	denied(subscribe(s1, berlin, "sites/berlin/devices/+/commands/#"))
	denied(subscribe(s1, berlin, "sites/#"))
	denied(receive(s1, berlin, "sites/paris/devices/s1/commands/reboot"))
}

test_device_site_needs_the_label if {
	allowed(publish(s1, berlin, "sites/berlin/devices/s1/telemetry/temp"))
	denied(publish(s1, {}, "sites/berlin/devices/s1/telemetry/temp"))
	denied(publish(s1, {"Site": "berlin"}, "sites/berlin/devices/s1/telemetry/temp"))
}

test_unsafe_site_labels_grant_nothing if {
	allowed(subscribe(s1, berlin, "sites/berlin/devices/s1/commands/#"))
	every label in ["+", "#", "a/b", "..", ".", ""] {
		denied(subscribe(s1, {"site": label}, concat("/", ["sites", label, "devices/s1/commands/#"])))
		denied(publish(s1, {"site": label}, concat("/", ["sites", label, "devices/s1/telemetry/t"])))
	}
	denied(subscribe(s1, {"site": "+"}, "sites/paris/devices/s1/commands/#"))
	denied(subscribe(s1, {"site": "#"}, "sites/#"))
}

test_device_no_retain_no_will if {
	d := publish(s1, berlin, "sites/berlin/devices/s1/telemetry/temp")
	allowed(d)
	denied(object.union(d, {"retain": true}))
	denied(object.union(d, {"will": true}))
}

test_suspended_device_denied if {
	d := publish(s1, berlin, "sites/berlin/devices/s1/telemetry/temp")
	allowed(d)
	denied(object.union(d, {"device": {"name": "s1", "labels": berlin, "status": "suspended"}}))
}

test_site_controller_in_its_site if {
	allowed(subscribe(ctl, berlin_ctl, "sites/berlin/devices/+/telemetry/#"))
	allowed(subscribe(ctl, berlin_ctl, "sites/berlin/devices/s1/telemetry/temp"))
	allowed(receive(ctl, berlin_ctl, "sites/berlin/devices/s1/telemetry/temp"))
	allowed(publish(ctl, berlin_ctl, "sites/berlin/devices/s1/commands/reboot"))
}

test_site_controller_outside_its_site_denied if {
	allowed(subscribe(ctl, berlin_ctl, "sites/berlin/devices/+/telemetry/#"))
	denied(subscribe(ctl, berlin_ctl, "sites/paris/devices/+/telemetry/#"))
	denied(subscribe(ctl, berlin_ctl, "sites/+/devices/+/telemetry/#"))
	denied(subscribe(ctl, berlin_ctl, "sites/#"))
	denied(subscribe(ctl, berlin_ctl, "sites/berlin/#"))
	denied(subscribe(ctl, berlin_ctl, "sites/berlin/devices/+/commands/#"))
	denied(receive(ctl, berlin_ctl, "sites/paris/devices/s1/telemetry/temp"))
	denied(publish(ctl, berlin_ctl, "sites/paris/devices/s1/commands/reboot"))
	denied(publish(ctl, berlin_ctl, "sites/berlin/devices/+/commands/reboot"))
}

test_site_controller_needs_role_and_site if {
	allowed(subscribe(ctl, berlin_ctl, "sites/berlin/devices/+/telemetry/#"))
	denied(subscribe(ctl, berlin, "sites/berlin/devices/+/telemetry/#"))
	denied(subscribe(ctl, {"role": "site-controller"}, "sites/berlin/devices/+/telemetry/#"))
	denied(subscribe(ctl, {"site": "berlin", "role": "controller"}, "sites/berlin/devices/+/telemetry/#"))
}

test_trees_stay_apart if {
	# The default policy's controller gets nothing under sites/ ...
	allowed(subscribe(ctl, {"role": "controller"}, "devices/+/telemetry/#"))
	denied(subscribe(ctl, {"role": "controller"}, "sites/berlin/devices/+/telemetry/#"))

	# ... and a site controller nothing of the default tree.
	denied(subscribe(ctl, berlin_ctl, "devices/+/telemetry/#"))
}
