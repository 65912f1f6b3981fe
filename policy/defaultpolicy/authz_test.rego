# Tests of the default policy. Every allowed action is tested beside the
# denied neighbours an attacker would try, so a rule that widens or breaks
# fails a test. Run with: ztgate policy test policy/defaultpolicy
package ztgate.authz_test

import data.ztgate.authz

# --- input builders (the document of DESIGN's policy contract) ---------------

td := "example.org"

identity(segs) := {
	"spiffe_id": concat("", ["spiffe://", td, "/", concat("/", segs)]),
	"trust_domain": td,
	"path": concat("", ["/", concat("/", segs)]),
	"segments": segs,
}

device(name, labels, status) := {"name": name, "labels": labels, "status": status}

base(action, segs, dev) := {
	"action": action,
	"identity": identity(segs),
	"device": dev,
	"client": {"id": "client-1", "remote_addr": "127.0.0.1:50412", "protocol_version": 5},
	"time": "2026-11-28T12:00:00Z",
}

message(action, segs, dev, topic, retain, will) := object.union(
	base(action, segs, dev),
	{"topic": topic, "qos": 1, "retain": retain, "will": will, "payload_size": 4},
)

connect(segs, dev) := base("connect", segs, dev)

publish(segs, dev, topic) := message("publish", segs, dev, topic, false, false)

publish_retained(segs, dev, topic) := message("publish", segs, dev, topic, true, false)

will(segs, dev, topic, retain) := message("publish", segs, dev, topic, retain, true)

receive(segs, dev, topic) := message("receive", segs, dev, topic, false, false)

subscribe(segs, dev, filter) := object.union(base("subscribe", segs, dev), {"filter": filter, "qos": 1})

admin_request(segs, dev) := object.union(
	base("admin", segs, dev),
	{"request": {"method": "POST", "path": "/v1/devices"}},
)

bridge_msg(action, segs, dev, topic, retain) := object.union(
	message(action, segs, dev, topic, retain, false),
	{"bridge": {"name": "cloud", "url": "mqtts://up.example:8883", "remote_topic": concat("", ["plant-a/", topic])}},
)

bridge_out(segs, dev, topic) := bridge_msg("bridge_out", segs, dev, topic, false)

bridge_in(segs, topic) := bridge_msg("bridge_in", segs, null, topic, false)

allowed(doc) if {
	authz.allow with input as doc
}

denied(doc) if {
	not authz.allow with input as doc
	authz.allow == false with input as doc # defined: the default, not an error
}

reasons(doc) := r if {
	r := authz.reasons with input as doc
}

# --- the cast -----------------------------------------------------------------

# Device s1: spiffe://example.org/device/s1, enrolled and active.
s1 := ["device", "s1"]

s1_dev := device("s1", {"role": "sensor"}, "active")

# Another device, s2.
s2 := ["device", "s2"]

s2_dev := device("s2", {"role": "sensor"}, "active")

# A controller workload.
ctl := ["workload", "controller-1"]

ctl_dev := device("controller-1", {"role": "controller"}, "active")

# The dev admin.
adm := ["admin", "dev"]

adm_dev := device("admin-dev", {"role": "admin"}, "active")

# --- connect ------------------------------------------------------------------

test_connect_active_device_allowed if {
	allowed(connect(s1, s1_dev))
	count(reasons(connect(s1, s1_dev))) == 0
}

test_connect_any_active_identity_allowed if {
	allowed(connect(ctl, ctl_dev))
	allowed(connect(adm, adm_dev))
	allowed(connect(["workload", "x"], device("x", {}, "active")))
}

test_connect_not_enrolled_denied if {
	allowed(connect(s1, s1_dev))
	denied(connect(s1, null))
	"identity not enrolled" in reasons(connect(s1, null))
}

test_connect_device_missing_denied if {
	doc := object.remove(connect(s1, s1_dev), {"device"})
	denied(doc)
	"identity not enrolled" in reasons(doc)
}

test_connect_suspended_denied if {
	denied(connect(s1, device("s1", {}, "suspended")))
	"device suspended" in reasons(connect(s1, device("s1", {}, "suspended")))
}

test_connect_revoked_denied if {
	denied(connect(s1, device("s1", {}, "revoked")))
	"device revoked" in reasons(connect(s1, device("s1", {}, "revoked")))
}

test_connect_pending_denied if {
	pending := device("s1", {"role": "sensor"}, "pending")
	denied(connect(s1, pending))
	reasons(connect(s1, pending)) == {"device pending enrollment"}
	denied(publish(s1, pending, "devices/s1/telemetry/temp"))
	denied(subscribe(s1, pending, "devices/s1/commands/#"))
	denied(receive(s1, pending, "devices/s1/commands/x"))
	denied(will(s1, pending, "devices/s1/state", false))
	denied(admin_request(adm, device("admin-dev", {"role": "admin"}, "pending")))

	# Positive control: the same device once active.
	allowed(connect(s1, device("s1", {"role": "sensor"}, "active")))
}

test_connect_unknown_status_denied if {
	denied(connect(s1, device("s1", {}, "Active")))
	denied(connect(s1, device("s1", {}, "")))
	reasons(connect(s1, device("s1", {}, "Active"))) == {"device not active"}
	reasons(connect(s1, device("s1", {}, 1))) == {"device not active"}
}

test_trust_domain_config if {
	other := object.union(connect(s1, s1_dev), {"identity": {"trust_domain": "evil.example"}})

	# Without a configured trust domain the verifier's word stands.
	allowed(other)

	# With one, only that trust domain is allowed anything.
	allowed(connect(s1, s1_dev)) with data.ztgate.config.trust_domain as td
	denied(other) with data.ztgate.config.trust_domain as td
	"trust domain not served" in reasons(other) with data.ztgate.config.trust_domain as td
	denied(publish(s1, s1_dev, "devices/s1/telemetry")) with data.ztgate.config.trust_domain as "other.org"
}

# --- device: publish telemetry --------------------------------------------------

test_device_publish_own_telemetry_allowed if {
	allowed(publish(s1, s1_dev, "devices/s1/telemetry"))
	allowed(publish(s1, s1_dev, "devices/s1/telemetry/temp"))
	allowed(publish(s1, s1_dev, "devices/s1/telemetry/room/1/temp"))
	count(reasons(publish(s1, s1_dev, "devices/s1/telemetry/temp"))) == 0
}

test_device_publish_other_device_denied if {
	allowed(publish(s2, s2_dev, "devices/s2/telemetry/temp"))
	denied(publish(s1, s1_dev, "devices/s2/telemetry/temp"))
	denied(publish(s1, s1_dev, "devices/s2/state"))
	denied(publish(s1, s1_dev, "devices/s2/commands/reboot"))
	"topic not granted" in reasons(publish(s1, s1_dev, "devices/s2/telemetry/temp"))
}

test_device_publish_near_misses_denied if {
	allowed(publish(s1, s1_dev, "devices/s1/telemetry/x"))
	denied(publish(s1, s1_dev, "devices/s1/telemetry2"))
	denied(publish(s1, s1_dev, "devices/s1"))
	denied(publish(s1, s1_dev, "devices/s1/"))
	denied(publish(s1, s1_dev, "devices/s11/telemetry/x"))
	denied(publish(s1, s1_dev, "Devices/s1/telemetry/x"))
	denied(publish(s1, s1_dev, "/devices/s1/telemetry/x"))
	denied(publish(s1, s1_dev, "devices/s1/commands/x"))
	denied(publish(s1, s1_dev, "devices/s1/state/x"))
	denied(publish(s1, s1_dev, "other/topic"))
}

test_device_publish_wildcard_topics_denied if {
	allowed(publish(s1, s1_dev, "devices/s1/telemetry/a"))
	denied(publish(s1, s1_dev, "#"))
	denied(publish(s1, s1_dev, "+/#"))
	denied(publish(s1, s1_dev, "devices/+/telemetry/a"))
	denied(publish(s1, s1_dev, "devices/s1/telemetry/#"))
	denied(publish(s1, s1_dev, "devices/s1/telemetry/+"))
}

test_device_publish_sys_denied if {
	denied(publish(s1, s1_dev, "$SYS/broker/clients"))
	denied(publish(s1, s1_dev, "$sys/x"))
	denied(publish(s1, s1_dev, "$share/g/devices/s1/telemetry/x"))
}

test_device_publish_telemetry_retain_denied if {
	allowed(publish(s1, s1_dev, "devices/s1/telemetry/temp"))
	denied(publish_retained(s1, s1_dev, "devices/s1/telemetry/temp"))
	denied(publish_retained(s1, s1_dev, "devices/s1/telemetry"))
}

test_device_publish_missing_flags_denied if {
	doc := publish(s1, s1_dev, "devices/s1/telemetry/temp")
	allowed(doc)
	denied(object.remove(doc, {"retain"}))
	denied(object.remove(doc, {"will"}))
	denied(object.union(doc, {"retain": "false"}))
}

# --- device: publish state, Last Will ------------------------------------------

test_device_publish_state_allowed_retained_or_not if {
	allowed(publish(s1, s1_dev, "devices/s1/state"))
	allowed(publish_retained(s1, s1_dev, "devices/s1/state"))
	denied(publish_retained(s1, s1_dev, "devices/s2/state"))
	denied(publish_retained(s1, s1_dev, "devices/s1/state/x"))
}

test_device_will_on_state_allowed if {
	allowed(will(s1, s1_dev, "devices/s1/state", false))
	allowed(will(s1, s1_dev, "devices/s1/state", true))
}

test_device_will_on_other_topic_denied if {
	allowed(will(s1, s1_dev, "devices/s1/state", false))
	denied(will(s1, s1_dev, "devices/s1/telemetry/x", false))
	denied(will(s1, s1_dev, "devices/s1/telemetry", false))
	denied(will(s1, s1_dev, "devices/s2/state", false))
	denied(will(s1, s1_dev, "devices/s2/commands/reboot", false))
	denied(will(s1, s1_dev, "$SYS/x", false))
	"last will topic not granted" in reasons(will(s1, s1_dev, "devices/s2/state", false))
}

test_device_will_suspended_denied if {
	denied(will(s1, device("s1", {}, "suspended"), "devices/s1/state", false))
}

# --- device: subscribe / receive commands -----------------------------------------

test_device_subscribe_own_commands_allowed if {
	allowed(subscribe(s1, s1_dev, "devices/s1/commands/#"))
	allowed(subscribe(s1, s1_dev, "devices/s1/commands/+"))
	allowed(subscribe(s1, s1_dev, "devices/s1/commands/reboot"))
	allowed(subscribe(s1, s1_dev, "devices/s1/commands"))
	allowed(subscribe(s1, s1_dev, "devices/s1/commands/+/#"))
	count(reasons(subscribe(s1, s1_dev, "devices/s1/commands/#"))) == 0
}

test_device_subscribe_wildcards_denied if {
	allowed(subscribe(s1, s1_dev, "devices/s1/commands/#"))
	denied(subscribe(s1, s1_dev, "#"))
	denied(subscribe(s1, s1_dev, "+/#"))
	denied(subscribe(s1, s1_dev, "+"))
	denied(subscribe(s1, s1_dev, "devices/#"))
	denied(subscribe(s1, s1_dev, "devices/+/commands/#"))
	denied(subscribe(s1, s1_dev, "devices/+/telemetry/#"))
	denied(subscribe(s1, s1_dev, "devices/s1/#"))
	denied(subscribe(s1, s1_dev, "devices/s1/+/#"))
	denied(subscribe(s1, s1_dev, "+/s1/commands/#"))
	"filter not granted" in reasons(subscribe(s1, s1_dev, "#"))
}

test_device_subscribe_other_device_denied if {
	allowed(subscribe(s2, s2_dev, "devices/s2/commands/#"))
	denied(subscribe(s1, s1_dev, "devices/s2/commands/#"))
	denied(subscribe(s1, s1_dev, "devices/s2/telemetry/#"))
	denied(subscribe(s1, s1_dev, "devices/s1/telemetry/#"))
	denied(subscribe(s1, s1_dev, "devices/s1/state"))
}

test_device_subscribe_sys_and_share_denied if {
	denied(subscribe(s1, s1_dev, "$SYS/#"))
	denied(subscribe(s1, s1_dev, "$SYS/broker/clients/connected"))
	denied(subscribe(s1, s1_dev, "$sys/#"))

	# The gateway reduces $share/GROUP/FILTER to FILTER (any case of $share)
	# before deciding; a share that reaches the policy unreduced grants nothing.
	denied(subscribe(s1, s1_dev, "$share/g/devices/s1/commands/#"))
	denied(subscribe(s1, s1_dev, "$SHARE/g/#"))
}

test_device_subscribe_invalid_filters_denied if {
	denied(subscribe(s1, s1_dev, "devices/s1/commands/#/x"))
	denied(subscribe(s1, s1_dev, "devices/s1/commands/a#"))
	denied(subscribe(s1, s1_dev, "devices/s1/commands/a+"))
	denied(subscribe(s1, s1_dev, ""))
}

test_device_receive_own_commands_allowed if {
	allowed(receive(s1, s1_dev, "devices/s1/commands/reboot"))
	allowed(receive(s1, s1_dev, "devices/s1/commands"))
	denied(receive(s1, s1_dev, "devices/s2/commands/reboot"))
	denied(receive(s1, s1_dev, "devices/s1/telemetry/temp"))
	denied(receive(s1, s1_dev, "devices/s2/telemetry/temp"))
	denied(receive(s1, s1_dev, "devices/s1/state"))
	denied(receive(s1, s1_dev, "$SYS/broker/uptime"))
	"topic not granted" in reasons(receive(s1, s1_dev, "devices/s2/commands/reboot"))
}

test_device_receive_after_suspend_denied if {
	denied(receive(s1, device("s1", {}, "suspended"), "devices/s1/commands/reboot"))
	denied(receive(s1, device("s1", {}, "revoked"), "devices/s1/commands/reboot"))
	denied(receive(s1, null, "devices/s1/commands/reboot"))
}

# --- device: every action needs enrolled + active --------------------------------

test_device_actions_need_active if {
	every dev in [null, device("s1", {"role": "sensor"}, "suspended"), device("s1", {"role": "sensor"}, "revoked")] {
		denied(publish(s1, dev, "devices/s1/telemetry/temp"))
		denied(publish_retained(s1, dev, "devices/s1/state"))
		denied(subscribe(s1, dev, "devices/s1/commands/#"))
		denied(receive(s1, dev, "devices/s1/commands/x"))
	}
}

test_device_actions_need_active_positive if {
	allowed(publish(s1, s1_dev, "devices/s1/telemetry/temp"))
	allowed(publish_retained(s1, s1_dev, "devices/s1/state"))
	allowed(subscribe(s1, s1_dev, "devices/s1/commands/#"))
	allowed(receive(s1, s1_dev, "devices/s1/commands/x"))
}

# --- device identity: path and name must not widen topic templates --------------

test_device_identity_must_be_device_path if {
	allowed(publish(s1, s1_dev, "devices/s1/telemetry/x"))

	# Same registry entry, identity path not /device/NAME.
	denied(publish(["devices", "s1"], s1_dev, "devices/s1/telemetry/x"))
	denied(publish(["device", "s1", "x"], s1_dev, "devices/s1/telemetry/x"))
	denied(publish(["s1"], s1_dev, "devices/s1/telemetry/x"))
	denied(publish(["workload", "s1"], s1_dev, "devices/s1/telemetry/x"))
}

test_device_registry_name_must_match_path if {
	# spiffe://TD/device/s1 enrolled under the name s2: neither s1's nor
	# s2's topics.
	denied(publish(s1, s2_dev, "devices/s1/telemetry/x"))
	denied(publish(s1, s2_dev, "devices/s2/telemetry/x"))
	denied(subscribe(s1, s2_dev, "devices/s1/commands/#"))
	denied(subscribe(s1, s2_dev, "devices/s2/commands/#"))
}

test_device_name_wildcards_do_not_widen if {
	# A device literally named "+" would otherwise be granted devices/+/commands/#.
	plus := ["device", "+"]
	plus_dev := device("+", {}, "active")
	denied(subscribe(plus, plus_dev, "devices/+/commands/#"))
	denied(receive(plus, plus_dev, "devices/s1/commands/x"))
	denied(publish(plus, plus_dev, "devices/s1/state"))
	denied(publish(plus, plus_dev, "devices/+/state"))

	hash := ["device", "#"]
	hash_dev := device("#", {}, "active")
	denied(subscribe(hash, hash_dev, "devices/#"))
	denied(subscribe(hash, hash_dev, "#"))
	denied(receive(hash, hash_dev, "devices/s1/commands/x"))
	denied(publish(hash, hash_dev, "devices/#/state"))
	denied(will(hash, hash_dev, "devices/#/state", false))

	# Positive control: the same requests by a well-named device.
	allowed(subscribe(s1, s1_dev, "devices/s1/commands/#"))
}

test_device_name_separators_and_dots_do_not_widen if {
	# A name with a level separator would move its templates into another
	# device's namespace: "s1/telemetry/x" would publish as s1.
	slash := ["device", "s1/telemetry/x"]
	slash_dev := device("s1/telemetry/x", {}, "active")
	denied(publish(slash, slash_dev, "devices/s1/telemetry/x/telemetry/t"))
	denied(publish(slash, slash_dev, "devices/s1/telemetry/x/state"))
	denied(subscribe(slash, slash_dev, "devices/s1/telemetry/x/commands/#"))

	slash_plus := ["device", "s1/+"]
	slash_plus_dev := device("s1/+", {}, "active")
	denied(subscribe(slash_plus, slash_plus_dev, "devices/s1/+/commands/#"))

	dots := ["device", ".."]
	dots_dev := device("..", {}, "active")
	denied(publish(dots, dots_dev, "devices/../telemetry/t"))
	denied(subscribe(dots, dots_dev, "devices/../commands/#"))

	dot := ["device", "."]
	dot_dev := device(".", {}, "active")
	denied(publish(dot, dot_dev, "devices/./telemetry/t"))

	inner := ["device", "a..b"]
	inner_dev := device("a..b", {}, "active")
	denied(publish(inner, inner_dev, "devices/a..b/telemetry/t"))

	empty := ["device", ""]
	empty_dev := device("", {}, "active")
	denied(publish(empty, empty_dev, "devices//telemetry/t"))

	nul := ["device", "a\u0000b"]
	nul_dev := device("a\u0000b", {}, "active")
	denied(publish(nul, nul_dev, "devices/a\u0000b/state"))

	# Not a string at all (only a hand-made input can do this): denied, no error.
	num := object.union(
		publish(["device", "1"], device("1", {}, "active"), "devices/1/state"),
		{"identity": {"segments": ["device", 1]}, "device": {"name": 1}},
	)
	denied(num)

	# Positive control: dots inside a name are fine.
	ok := ["device", "s1.v2"]
	ok_dev := device("s1.v2", {}, "active")
	allowed(publish(ok, ok_dev, "devices/s1.v2/telemetry/t"))
}

# --- controller -----------------------------------------------------------------------

test_controller_subscribe_allowed if {
	allowed(subscribe(ctl, ctl_dev, "devices/+/telemetry/#"))
	allowed(subscribe(ctl, ctl_dev, "devices/+/state"))
	allowed(subscribe(ctl, ctl_dev, "devices/s1/telemetry/temp"))
	allowed(subscribe(ctl, ctl_dev, "devices/s1/telemetry/#"))
	allowed(subscribe(ctl, ctl_dev, "devices/s1/state"))
	allowed(subscribe(ctl, ctl_dev, "devices/+/telemetry"))
}

test_controller_subscribe_wider_denied if {
	allowed(subscribe(ctl, ctl_dev, "devices/+/telemetry/#"))
	denied(subscribe(ctl, ctl_dev, "#"))
	denied(subscribe(ctl, ctl_dev, "+/#"))
	denied(subscribe(ctl, ctl_dev, "devices/#"))
	denied(subscribe(ctl, ctl_dev, "devices/+/#"))
	denied(subscribe(ctl, ctl_dev, "devices/+/+"))
	denied(subscribe(ctl, ctl_dev, "devices/+/+/#"))
	denied(subscribe(ctl, ctl_dev, "+/+/telemetry/#"))
	denied(subscribe(ctl, ctl_dev, "devices/+/commands/#"))
	denied(subscribe(ctl, ctl_dev, "devices/+/state/#"))
	denied(subscribe(ctl, ctl_dev, "$SYS/#"))
	denied(subscribe(ctl, ctl_dev, "other/#"))
	"filter not granted" in reasons(subscribe(ctl, ctl_dev, "devices/#"))
}

test_controller_receive if {
	allowed(receive(ctl, ctl_dev, "devices/s1/telemetry/temp"))
	allowed(receive(ctl, ctl_dev, "devices/s1/telemetry"))
	allowed(receive(ctl, ctl_dev, "devices/s1/state"))
	denied(receive(ctl, ctl_dev, "devices/s1/commands/reboot"))
	denied(receive(ctl, ctl_dev, "devices/s1/state/x"))
	denied(receive(ctl, ctl_dev, "$SYS/broker/uptime"))
	denied(receive(ctl, ctl_dev, "other/topic"))
}

test_controller_publish_commands if {
	allowed(publish(ctl, ctl_dev, "devices/s1/commands/reboot"))
	allowed(publish(ctl, ctl_dev, "devices/s1/commands"))
	denied(publish(ctl, ctl_dev, "devices/s1/telemetry/temp"))
	denied(publish(ctl, ctl_dev, "devices/s1/state"))
	denied(publish(ctl, ctl_dev, "devices/+/commands/reboot"))
	denied(publish(ctl, ctl_dev, "devices/s1/commands/#"))
	denied(publish(ctl, ctl_dev, "$SYS/x"))
	denied(publish_retained(ctl, ctl_dev, "devices/s1/commands/reboot"))
	denied(will(ctl, ctl_dev, "devices/s1/commands/reboot", false))
}

test_controller_needs_label if {
	allowed(subscribe(ctl, ctl_dev, "devices/+/telemetry/#"))
	every labels in [{}, {"role": "sensor"}, {"role": "Controller"}, {"roles": "controller"}] {
		dev := device("controller-1", labels, "active")
		denied(subscribe(ctl, dev, "devices/+/telemetry/#"))
		denied(receive(ctl, dev, "devices/s1/telemetry/temp"))
		denied(publish(ctl, dev, "devices/s1/commands/reboot"))
	}
}

test_controller_needs_active if {
	allowed(subscribe(ctl, ctl_dev, "devices/+/telemetry/#"))
	every status in ["suspended", "revoked"] {
		dev := device("controller-1", {"role": "controller"}, status)
		denied(subscribe(ctl, dev, "devices/+/telemetry/#"))
		denied(receive(ctl, dev, "devices/s1/telemetry/temp"))
		denied(publish(ctl, dev, "devices/s1/commands/reboot"))
	}
}

test_controller_not_enrolled_denied if {
	denied(subscribe(ctl, null, "devices/+/telemetry/#"))
	denied(publish(ctl, null, "devices/s1/commands/reboot"))
}

test_controller_not_admin if {
	allowed(admin_request(adm, adm_dev))
	denied(admin_request(ctl, ctl_dev))
}

# --- admin ------------------------------------------------------------------------

test_admin_allowed if {
	allowed(admin_request(adm, adm_dev))
	count(reasons(admin_request(adm, adm_dev))) == 0
}

test_admin_without_role_denied if {
	denied(admin_request(s1, s1_dev))
	denied(admin_request(adm, device("admin-dev", {}, "active")))
	denied(admin_request(adm, device("admin-dev", {"role": "Admin"}, "active")))
	"admin role required" in reasons(admin_request(s1, s1_dev))
}

test_admin_not_enrolled_denied if {
	denied(admin_request(adm, null))
	"identity not enrolled" in reasons(admin_request(adm, null))
}

test_admin_suspended_denied if {
	denied(admin_request(adm, device("admin-dev", {"role": "admin"}, "suspended")))
	denied(admin_request(adm, device("admin-dev", {"role": "admin"}, "revoked")))
}

test_device_with_admin_label if {
	# The label, not the path, makes an admin: an active device so labelled is one ...
	admin_s1 := device("s1", {"role": "admin"}, "active")
	allowed(admin_request(s1, admin_s1))

	# ... and loses it when suspended.
	denied(admin_request(s1, device("s1", {"role": "admin"}, "suspended")))
}

test_admin_gets_no_mqtt_topics if {
	allowed(connect(adm, adm_dev))
	denied(subscribe(adm, adm_dev, "#"))
	denied(subscribe(adm, adm_dev, "devices/+/telemetry/#"))
	denied(publish(adm, adm_dev, "devices/s1/commands/reboot"))
}

# --- anything else ------------------------------------------------------------------

test_unknown_action_denied if {
	doc := object.union(publish(s1, s1_dev, "devices/s1/telemetry/x"), {"action": "unsubscribe"})
	denied(doc)
	"unknown action" in reasons(doc)
	denied(object.union(connect(s1, s1_dev), {"action": "Connect"}))
}

test_empty_input_denied if {
	denied({})
	"identity not enrolled" in reasons({})
}

# --- limits --------------------------------------------------------------------

test_controller_gets_more if {
	l := authz.limits with input as connect(["workload", "ctl-1"], device("ctl-1", {"role": "controller"}, "active"))
	l.max_sessions_per_identity == 16
	l.publish_rate == 1000
}

test_device_keeps_configured_limits if {
	not authz.limits with input as connect(["device", "pump-7"], device("pump-7", {}, "active"))
}

test_suspended_controller_gets_nothing_more if {
	not authz.limits with input as connect(["workload", "ctl-1"], device("ctl-1", {"role": "controller"}, "suspended"))
}

# --- bridges ------------------------------------------------------------------

# A bridge.
brg := ["bridge", "cloud"]

test_bridge_out_own_telemetry_and_state_allowed if {
	allowed(bridge_out(s1, s1_dev, "devices/s1/telemetry/temp"))
	allowed(bridge_out(s1, s1_dev, "devices/s1/telemetry/a/b"))
	allowed(bridge_out(s1, s1_dev, "devices/s1/state"))
	allowed(bridge_msg("bridge_out", s1, s1_dev, "devices/s1/state", true))
}

test_bridge_out_nothing_else_denied if {
	allowed(bridge_out(s1, s1_dev, "devices/s1/telemetry/temp"))
	denied(bridge_out(s1, s1_dev, "devices/s2/telemetry/temp")) # another device's
	denied(bridge_out(s1, s1_dev, "devices/s1/commands/reboot"))
	denied(bridge_out(ctl, ctl_dev, "devices/s1/commands/reboot")) # a controller's command
	denied(bridge_out(ctl, ctl_dev, "devices/s1/telemetry/temp")) # not the controller's own
	denied(bridge_out(s1, s1_dev, "other/topic"))
	"not a device's own telemetry or state" in reasons(bridge_out(s1, s1_dev, "devices/s1/commands/reboot"))
}

test_bridge_out_inactive_device_denied if {
	denied(bridge_out(s1, device("s1", {}, "suspended"), "devices/s1/telemetry/temp"))
	denied(bridge_out(s1, null, "devices/s1/telemetry/temp"))
}

test_bridge_in_commands_allowed if {
	allowed(bridge_in(brg, "devices/s1/commands/reboot"))
	allowed(bridge_in(brg, "devices/s2/commands/a/b"))
	count(reasons(bridge_in(brg, "devices/s1/commands/reboot"))) == 0
}

test_bridge_in_nothing_else_denied if {
	allowed(bridge_in(brg, "devices/s1/commands/reboot"))
	denied(bridge_in(brg, "devices/s1/telemetry/temp"))
	denied(bridge_in(brg, "devices/s1/state"))
	denied(bridge_in(brg, "$SYS/broker"))
	denied(bridge_msg("bridge_in", brg, null, "devices/s1/commands/reboot", true)) # retained
	"only commands come in through a bridge" in reasons(bridge_in(brg, "devices/s1/state"))
	not "identity not enrolled" in reasons(bridge_in(brg, "devices/s1/state"))
}

test_bridge_in_only_bridge_identities if {
	allowed(bridge_in(brg, "devices/s1/commands/reboot"))
	denied(bridge_in(s1, "devices/s1/commands/reboot"))
	denied(bridge_in(["bridge", "a", "b"], "devices/s1/commands/reboot"))
	denied(bridge_in(["bridge", "+"], "devices/s1/commands/reboot"))
	"not a bridge identity" in reasons(bridge_in(s1, "devices/s1/commands/reboot"))
}

test_bridge_actions_are_not_publish if {
	# A bridge identity may not publish or connect as an MQTT client.
	denied(publish(brg, null, "devices/s1/commands/reboot"))
	denied(connect(brg, null))
}
