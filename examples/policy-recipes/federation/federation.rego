# Federated partners: an addition to the default policy (put this file next
# to authz.rego; it uses the default policy's helpers).
#
# The default policy admits only the gateway's own trust domain. This module
# admits the devices of the partner trust domains listed below, each to a
# topic space of its own, partners/PARTNER/NAME/...:
#   - a device spiffe://PARTNER/device/NAME of a listed PARTNER, registered
#     on this gateway (ztgate device register ... --spiffe-id) and active,
#     may connect, publish partners/PARTNER/NAME/telemetry and below (not
#     retained, not as a Last Will), and subscribe to / receive
#     partners/PARTNER/NAME/commands/#; nothing else (no devices/..., no
#     other partner's or device's space, no admin API, whatever its labels);
#   - an own identity labelled role=partner-controller may subscribe to /
#     receive partners/+/+/telemetry/# and publish (not retained)
#     partners/+/+/commands/#.
# NAME is taken from the SPIFFE ID, which the partner's CA vouches for, not
# from the registry name, which is this gateway's choice (names are unique
# per gateway, so partner.example's s1 may be registered as partner-s1).
# A partner must also be federated (federation.trust_domains in the config):
# the gateway refuses a trust domain it holds no bundle for at the TLS
# handshake, before any policy runs.
package ztgate.authz

# The partner trust domains admitted. Edit this list.
partner_trust_domains := {"partner.example"}

own_trust_domain(doc) if doc.identity.trust_domain == data.ztgate.config.trust_domain

# An enrolled, active identity of a listed partner trust domain. A partner
# listed by mistake as the own trust domain gets nothing from this module.
partner_active(doc) if {
	enrolled(doc)
	doc.device.status == "active"
	doc.identity.trust_domain in partner_trust_domains
	not own_trust_domain(doc)
}

# [PARTNER, NAME] of an active partner device spiffe://PARTNER/device/NAME.
partner_device(doc) := [partner, name] if {
	partner_active(doc)
	partner := doc.identity.trust_domain
	["device", name] = doc.identity.segments
	safe_name(partner)
	safe_name(name)
}

# partners/PARTNER/NAME/SUFFIX for an active partner device.
partner_topic(doc, suffix) := concat("/", ["partners", partner, name, suffix]) if {
	[partner, name] := partner_device(doc)
}

# --- partner devices -------------------------------------------------------------

allow if {
	input.action == "connect"
	partner_device(input)
}

allow if {
	input.action == "publish"
	input.will == false
	input.retain == false
	mqtt.topic_matches(partner_topic(input, "telemetry/#"), input.topic)
}

allow if {
	input.action == "subscribe"
	mqtt.filter_within(partner_topic(input, "commands/#"), input.filter)
}

allow if {
	input.action == "receive"
	mqtt.topic_matches(partner_topic(input, "commands/#"), input.topic)
}

# --- the own side ------------------------------------------------------------------

# An own identity labelled role=partner-controller; never one of a partner,
# whatever labels it was registered with.
partner_controller(doc) if {
	role(doc) == "partner-controller"
	not doc.identity.trust_domain in partner_trust_domains
}

allow if {
	input.action == "subscribe"
	partner_controller(input)
	mqtt.filter_within("partners/+/+/telemetry/#", input.filter)
}

allow if {
	input.action == "receive"
	partner_controller(input)
	mqtt.topic_matches("partners/+/+/telemetry/#", input.topic)
}

allow if {
	input.action == "publish"
	partner_controller(input)
	input.will == false
	input.retain == false
	mqtt.topic_matches("partners/+/+/commands/#", input.topic)
}
