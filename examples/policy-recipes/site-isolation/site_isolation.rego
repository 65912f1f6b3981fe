# Per-site isolation by label: an addition to the default policy (put this
# file next to authz.rego; it uses the default policy's helpers).
#
# Devices and workloads carry a `site` label. Each site has a topic tree of
# its own, sites/SITE/devices/NAME/..., that only identities of that site
# reach:
#   - a device spiffe://TD/device/NAME labelled site=SITE may publish
#     sites/SITE/devices/NAME/telemetry and below (not retained), and
#     subscribe to / receive sites/SITE/devices/NAME/commands/#;
#   - a workload labelled role=site-controller and site=SITE may subscribe
#     to / receive sites/SITE/devices/+/telemetry/# and publish (not
#     retained) sites/SITE/devices/+/commands/#.
# No rule grants another site's tree, and a site label that could widen a
# topic (a wildcard, a level separator, dots) grants nothing. The default
# policy's role=controller keeps devices/+/...; it gets nothing under sites/.
package ztgate.authz

# The site of an active identity, when its label is safe to put in a topic.
site(doc) := s if {
	active(doc)
	s := doc.device.labels.site
	safe_name(s)
}

# sites/SITE/devices/NAME/SUFFIX for an active device of a site.
site_device_topic(doc, suffix) := concat("/", ["sites", site(doc), "devices", device_name(doc), suffix])

# sites/SITE/devices/+/SUFFIX for a site controller.
site_controller_topic(doc, suffix) := concat("/", ["sites", site(doc), "devices", "+", suffix]) if {
	role(doc) == "site-controller"
}

# --- devices -------------------------------------------------------------------

allow if {
	input.action == "publish"
	input.will == false
	input.retain == false
	mqtt.topic_matches(site_device_topic(input, "telemetry/#"), input.topic)
}

allow if {
	input.action == "subscribe"
	mqtt.filter_within(site_device_topic(input, "commands/#"), input.filter)
}

allow if {
	input.action == "receive"
	mqtt.topic_matches(site_device_topic(input, "commands/#"), input.topic)
}

# --- site controllers ------------------------------------------------------------

allow if {
	input.action == "subscribe"
	mqtt.filter_within(site_controller_topic(input, "telemetry/#"), input.filter)
}

allow if {
	input.action == "receive"
	mqtt.topic_matches(site_controller_topic(input, "telemetry/#"), input.topic)
}

allow if {
	input.action == "publish"
	input.will == false
	input.retain == false
	mqtt.topic_matches(site_controller_topic(input, "commands/#"), input.topic)
}
