# Tests of the federation example, run together with the default policy:
# ztgate policy test DIR, with DIR holding both. The gateway puts its own
# trust domain in data.ztgate.config.trust_domain; the tests do the same.
package ztgate.examples.federation_test

import data.ztgate.authz

own := "example.org"

partner := "partner.example"

doc(td, segs, labels, action, fields) := object.union(
	{
		"action": action,
		"identity": {
			"spiffe_id": concat("/", array.concat([concat("", ["spiffe://", td])], segs)),
			"trust_domain": td,
			"path": concat("/", array.concat([""], segs)),
			"segments": segs,
		},
		"device": {"name": concat("-", [td, segs[count(segs) - 1]]), "labels": labels, "status": "active"},
		"client": {"id": "c1", "remote_addr": "127.0.0.1:50412", "protocol_version": 5},
		"time": "2026-11-28T12:00:00Z",
	},
	fields,
)

connect(td, segs, labels) := doc(td, segs, labels, "connect", {})

publish(td, segs, labels, topic) := doc(td, segs, labels, "publish", {"topic": topic, "qos": 1, "retain": false, "will": false, "payload_size": 4})

subscribe(td, segs, labels, filter) := doc(td, segs, labels, "subscribe", {"filter": filter, "qos": 1})

receive(td, segs, labels, topic) := doc(td, segs, labels, "receive", {"topic": topic, "qos": 1, "retain": false, "will": false, "payload_size": 4})

admin(td, segs, labels) := doc(td, segs, labels, "admin", {"request": {"method": "GET", "path": "/v1/devices"}})

allowed(d) if authz.allow with input as d with data.ztgate.config.trust_domain as own

denied(d) if not authz.allow with input as d with data.ztgate.config.trust_domain as own

p1 := ["device", "p1"]

ctl := ["workload", "partner-ctl"]

partner_ctl := {"role": "partner-controller"}

test_partner_device_in_its_space if {
	allowed(connect(partner, p1, {}))
	allowed(publish(partner, p1, {}, "partners/partner.example/p1/telemetry"))
	allowed(publish(partner, p1, {}, "partners/partner.example/p1/telemetry/temp"))
	allowed(subscribe(partner, p1, {}, "partners/partner.example/p1/commands/#"))
	allowed(subscribe(partner, p1, {}, "partners/partner.example/p1/commands/reboot"))
	allowed(receive(partner, p1, {}, "partners/partner.example/p1/commands/reboot"))
}

test_partner_device_outside_its_space_denied if {
	allowed(publish(partner, p1, {}, "partners/partner.example/p1/telemetry/temp"))
	denied(publish(partner, p1, {}, "partners/partner.example/p2/telemetry/temp"))
	denied(publish(partner, p1, {}, "partners/other.example/p1/telemetry/temp"))
	denied(publish(partner, p1, {}, "partners/partner.example/p1/commands/x"))
	denied(publish(partner, p1, {}, "partners/+/p1/telemetry/temp"))
	denied(subscribe(partner, p1, {}, "partners/partner.example/+/commands/#"))
	denied(subscribe(partner, p1, {}, "partners/partner.example/p1/telemetry/#"))
	denied(subscribe(partner, p1, {}, "partners/#"))
	denied(subscribe(partner, p1, {}, "#"))
	denied(receive(partner, p1, {}, "partners/partner.example/p2/commands/reboot"))
}

test_partner_device_gets_nothing_of_the_own_tree if {
	allowed(publish(partner, p1, {}, "partners/partner.example/p1/telemetry/temp"))
	denied(publish(partner, p1, {}, "devices/p1/telemetry/temp"))
	denied(publish(partner, p1, {}, "devices/p1/state"))
	denied(subscribe(partner, p1, {}, "devices/p1/commands/#"))
	denied(receive(partner, p1, {}, "devices/p1/commands/x"))

	# Not even with the labels that grant own identities more.
	denied(subscribe(partner, ["device", "p1"], {"role": "controller"}, "devices/+/telemetry/#"))
	denied(subscribe(partner, ["device", "p1"], partner_ctl, "partners/+/+/telemetry/#"))
	denied(admin(partner, p1, {"role": "admin"}))
}

test_partner_device_no_retain_no_will if {
	d := publish(partner, p1, {}, "partners/partner.example/p1/telemetry/temp")
	allowed(d)
	denied(object.union(d, {"retain": true}))
	denied(object.union(d, {"will": true}))
}

test_partner_device_must_be_active if {
	allowed(connect(partner, p1, {}))
	denied(object.union(connect(partner, p1, {}), {"device": {"name": "p1", "labels": {}, "status": "suspended"}}))
	denied(object.union(connect(partner, p1, {}), {"device": {"name": "p1", "labels": {}, "status": "revoked"}}))
	denied(object.remove(connect(partner, p1, {}), {"device"}))
}

test_partner_workloads_and_unsafe_names_denied if {
	allowed(connect(partner, p1, {}))

	# Only the device namespace.
	denied(connect(partner, ["workload", "p1"], {}))
	denied(connect(partner, ["device", "p1", "extra"], {}))

	# A name that could widen its topic grants nothing.
	every name in ["+", "#", ".", "a..b"] {
		denied(connect(partner, ["device", name], {}))
		denied(subscribe(partner, ["device", name], {}, concat("/", ["partners/partner.example", name, "commands/#"])))
	}
}

test_unlisted_trust_domain_denied if {
	allowed(connect(partner, p1, {}))
	denied(connect("third.example", p1, {}))
	denied(publish("third.example", p1, {}, "partners/third.example/p1/telemetry/temp"))
}

# The default policy wants an own device's registry name to be its NAME.
as_s1(d) := object.union(d, {"device": {"name": "s1", "labels": {}, "status": "active"}})

test_own_devices_unchanged if {
	allowed(as_s1(connect(own, ["device", "s1"], {})))
	allowed(as_s1(publish(own, ["device", "s1"], {}, "devices/s1/telemetry/temp")))

	# An own device gets nothing in the partner tree.
	denied(as_s1(publish(own, ["device", "s1"], {}, "partners/example.org/s1/telemetry/temp")))
	denied(as_s1(subscribe(own, ["device", "s1"], {}, "partners/partner.example/p1/commands/#")))
}

test_partner_controller if {
	allowed(subscribe(own, ctl, partner_ctl, "partners/+/+/telemetry/#"))
	allowed(subscribe(own, ctl, partner_ctl, "partners/partner.example/p1/telemetry/temp"))
	allowed(receive(own, ctl, partner_ctl, "partners/partner.example/p1/telemetry/temp"))
	allowed(publish(own, ctl, partner_ctl, "partners/partner.example/p1/commands/reboot"))

	denied(subscribe(own, ctl, partner_ctl, "partners/#"))
	denied(subscribe(own, ctl, partner_ctl, "partners/+/+/commands/#"))
	denied(subscribe(own, ctl, partner_ctl, "devices/+/telemetry/#"))
	denied(object.union(publish(own, ctl, partner_ctl, "partners/partner.example/p1/commands/reboot"), {"retain": true}))
	denied(publish(own, ctl, partner_ctl, "partners/partner.example/p1/telemetry/temp"))

	# The role, not any own identity; and the default controller gets
	# nothing under partners/.
	denied(subscribe(own, ctl, {}, "partners/+/+/telemetry/#"))
	denied(subscribe(own, ctl, {"role": "controller"}, "partners/+/+/telemetry/#"))
	allowed(subscribe(own, ctl, {"role": "controller"}, "devices/+/telemetry/#"))
}

test_listing_the_own_domain_grants_nothing if {
	allowed(publish(partner, p1, {}, "partners/partner.example/p1/telemetry/temp"))
	denied(publish(own, p1, {}, "partners/example.org/p1/telemetry/temp")) with authz.partner_trust_domains as {own}
}
