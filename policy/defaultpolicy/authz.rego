# The default ztgate policy.
#
# The gateway evaluates data.ztgate.authz once per decision: CONNECT, every
# SUBSCRIBE filter, every PUBLISH (the Last Will at CONNECT as a publish with
# will == true), every delivery (receive) and every admin API request.
# Nothing is allowed unless a rule below allows it.
#
# With trust domain TD, a device spiffe://TD/device/NAME that is enrolled and
# active may:
#   - publish devices/NAME/telemetry and below (not retained),
#   - publish devices/NAME/state (retain allowed),
#   - use devices/NAME/state as its Last Will topic,
#   - subscribe to / receive devices/NAME/commands/#.
# An enrolled, active identity labelled role=controller may subscribe to /
# receive devices/+/telemetry/# and devices/+/state, and publish (not
# retained) devices/+/commands/#.
# An enrolled, active identity labelled role=admin may use the admin API.
# Any enrolled, active identity may connect; what it may then do is above.
# A bridge to an upstream broker (docs/bridges.md) may forward out a device's
# own telemetry and state, as that device published them (bridge_out), and
# bring in commands for devices, not retained (bridge_in, as the bridge's
# identity spiffe://TD/bridge/NAME); nothing else.
#
# If data.ztgate.config.trust_domain is set, only identities of that trust
# domain are allowed anything (the gateway's verifier already refuses trust
# domains it does not serve; this is defense in depth).
package ztgate.authz

# Helpers are functions of the input document rather than rules: the gateway
# evaluates the whole package per decision, and every rule of the package is
# part of that result, while a function is evaluated only where it is called.

default allow := false

# --- who is asking -------------------------------------------------------------

enrolled(doc) if is_object(doc.device)

trust_domain_ok(_) if not data.ztgate.config.trust_domain

trust_domain_ok(doc) if doc.identity.trust_domain == data.ztgate.config.trust_domain

# An enrolled identity of a served trust domain whose device is active.
active(doc) if {
	enrolled(doc)
	doc.device.status == "active"
	trust_domain_ok(doc)
}

# A device name that cannot widen a topic template it is put into: no
# wildcard, no level separator, no dot segments, no NUL (CVE-2017-7650
# class). Enrollment refuses such names; the policy does not rely on that.
safe_name(name) if {
	is_string(name)
	name != ""
	name != "."
	not contains(name, "+")
	not contains(name, "#")
	not contains(name, "/")
	not contains(name, "..")
	not contains(name, "\u0000")
}

# NAME of an active device spiffe://TD/device/NAME whose registry entry is
# named NAME too (the ID path and the registry must agree).
device_name(doc) := name if {
	active(doc)
	["device", name] = doc.identity.segments
	safe_name(name)
	doc.device.name == name
}

# The role label of an active identity.
role(doc) := doc.device.labels.role if active(doc)

device_topic(name, suffix) := concat("/", ["devices", name, suffix])

# --- connect -------------------------------------------------------------------

allow if {
	input.action == "connect"
	active(input)
}

# --- devices -------------------------------------------------------------------

# Telemetry: devices/NAME/telemetry and every level below it, never retained,
# never a Last Will.
allow if {
	input.action == "publish"
	input.will == false
	input.retain == false
	mqtt.topic_matches(device_topic(device_name(input), "telemetry/#"), input.topic)
}

# State: devices/NAME/state, retained or not; also the only Last Will topic.
allow if {
	input.action == "publish"
	input.topic == device_topic(device_name(input), "state")
}

allow if {
	input.action == "subscribe"
	mqtt.filter_within(device_topic(device_name(input), "commands/#"), input.filter)
}

allow if {
	input.action == "receive"
	mqtt.topic_matches(device_topic(device_name(input), "commands/#"), input.topic)
}

# --- controllers ---------------------------------------------------------------

allow if {
	input.action == "subscribe"
	role(input) == "controller"
	some allowed in ["devices/+/telemetry/#", "devices/+/state"]
	mqtt.filter_within(allowed, input.filter)
}

allow if {
	input.action == "receive"
	role(input) == "controller"
	some allowed in ["devices/+/telemetry/#", "devices/+/state"]
	mqtt.topic_matches(allowed, input.topic)
}

allow if {
	input.action == "publish"
	role(input) == "controller"
	input.will == false
	input.retain == false
	mqtt.topic_matches("devices/+/commands/#", input.topic)
}

# --- bridges -------------------------------------------------------------------

# Out: the publisher's own telemetry and state, which its publish decision
# already allowed; the subject is the publishing device.
allow if {
	input.action == "bridge_out"
	mqtt.topic_matches(device_topic(device_name(input), "telemetry/#"), input.topic)
}

allow if {
	input.action == "bridge_out"
	input.topic == device_topic(device_name(input), "state")
}

# In: commands for devices, never retained, from a bridge identity
# spiffe://TD/bridge/NAME (not enrolled: bridges are configured, not
# registered). Which device receives one is then decided by receive.
bridge_identity(doc) if {
	["bridge", name] = doc.identity.segments
	safe_name(name)
	trust_domain_ok(doc)
}

allow if {
	input.action == "bridge_in"
	bridge_identity(input)
	input.retain == false
	mqtt.topic_matches("devices/+/commands/#", input.topic)
}

# --- admin API -----------------------------------------------------------------

allow if {
	input.action == "admin"
	role(input) == "admin"
}

# --- limits --------------------------------------------------------------------

# Per-identity limits, evaluated once at CONNECT (docs/policy.md): a
# controller subscribes to every device and commands them all, so it may
# hold more sessions and filters and publish faster than a device. An
# identity the rule is undefined for keeps the configured limits.
limits := {
	"max_sessions_per_identity": 16,
	"max_subscriptions_per_session": 1000,
	"publish_rate": 1000,
	"publish_burst": 10000,
} if role(input) == "controller"

# --- why not -------------------------------------------------------------------

# Each reason starts with `not allow` so that an allowed decision pays for
# one cached lookup per reason and nothing more.

reasons contains "identity not enrolled" if {
	not allow
	not enrolled(input)
	not input.action == "bridge_in" # a bridge is never enrolled
}

reasons contains "device suspended" if {
	not allow
	input.device.status == "suspended"
}

reasons contains "device revoked" if {
	not allow
	input.device.status == "revoked"
}

# Registered for bootstrap enrollment, but no SVID has been issued yet.
reasons contains "device pending enrollment" if {
	not allow
	input.device.status == "pending"
}

reasons contains "device not active" if {
	not allow
	enrolled(input)
	not input.device.status in {"active", "pending", "suspended", "revoked"}
}

reasons contains "trust domain not served" if {
	not allow
	not trust_domain_ok(input)
}

reasons contains "unknown action" if {
	not allow
	not input.action in {"connect", "subscribe", "publish", "receive", "admin", "bridge_out", "bridge_in"}
}

reasons contains "last will topic not granted" if {
	not allow
	active(input)
	input.action == "publish"
	input.will == true
}

reasons contains "topic not granted" if {
	not allow
	active(input)
	input.action in {"publish", "receive"}
	input.will != true
}

reasons contains "filter not granted" if {
	not allow
	active(input)
	input.action == "subscribe"
}

reasons contains "not a device's own telemetry or state" if {
	not allow
	input.action == "bridge_out"
}

reasons contains "only commands come in through a bridge" if {
	not allow
	input.action == "bridge_in"
	bridge_identity(input)
}

reasons contains "not a bridge identity" if {
	not allow
	input.action == "bridge_in"
	not bridge_identity(input)
}

reasons contains "admin role required" if {
	not allow
	active(input)
	input.action == "admin"
}
