# Tests of the read-only dashboard example, run together with the default
# policy: ztgate policy test DIR, with DIR holding both.
package ztgate.examples.dashboards_test

import data.ztgate.authz

doc(labels, status, action, fields) := object.union(
	{
		"action": action,
		"identity": {
			"spiffe_id": "spiffe://example.org/workload/grafana",
			"trust_domain": "example.org",
			"path": "/workload/grafana",
			"segments": ["workload", "grafana"],
		},
		"device": {"name": "grafana", "labels": labels, "status": status},
		"client": {"id": "grafana-1", "remote_addr": "127.0.0.1:50412", "protocol_version": 5},
		"time": "2026-11-28T12:00:00Z",
	},
	fields,
)

dashboard := {"role": "dashboard"}

subscribe(labels, filter) := doc(labels, "active", "subscribe", {"filter": filter, "qos": 0})

receive(labels, topic) := doc(labels, "active", "receive", {"topic": topic, "qos": 0, "retain": true, "will": false, "payload_size": 4})

publish(labels, topic, retain, will) := doc(labels, "active", "publish", {"topic": topic, "qos": 0, "retain": retain, "will": will, "payload_size": 4})

allowed(d) if authz.allow with input as d

denied(d) if not authz.allow with input as d

test_dashboard_reads_telemetry_and_state if {
	allowed(doc(dashboard, "active", "connect", {}))
	allowed(subscribe(dashboard, "devices/+/telemetry/#"))
	allowed(subscribe(dashboard, "devices/+/state"))
	allowed(subscribe(dashboard, "devices/s1/telemetry/temp"))
	allowed(subscribe(dashboard, "devices/+/telemetry/+"))
	allowed(receive(dashboard, "devices/s1/telemetry/temp"))
	allowed(receive(dashboard, "devices/s1/state"))
}

test_dashboard_reads_nothing_else if {
	allowed(subscribe(dashboard, "devices/+/state"))
	denied(subscribe(dashboard, "#"))
	denied(subscribe(dashboard, "devices/#"))
	denied(subscribe(dashboard, "devices/+/#"))
	denied(subscribe(dashboard, "devices/+/commands/#"))
	denied(subscribe(dashboard, "devices/+/state/#"))
	denied(subscribe(dashboard, "$SYS/#"))
	denied(receive(dashboard, "devices/s1/commands/reboot"))
	denied(receive(dashboard, "$SYS/broker/uptime"))
}

test_dashboard_never_writes if {
	every topic in ["devices/s1/telemetry/temp", "devices/s1/state", "devices/s1/commands/reboot", "dashboards/grafana/state"] {
		denied(publish(dashboard, topic, false, false))
		denied(publish(dashboard, topic, true, false))
		denied(publish(dashboard, topic, false, true))
	}
	"topic not granted" in authz.reasons with input as publish(dashboard, "devices/s1/commands/reboot", false, false)
}

test_dashboard_no_admin if {
	denied(doc(dashboard, "active", "admin", {"request": {"method": "GET", "path": "/v1/devices"}}))
	allowed(doc({"role": "admin"}, "active", "admin", {"request": {"method": "GET", "path": "/v1/devices"}}))
}

test_dashboard_needs_label_and_active if {
	allowed(subscribe(dashboard, "devices/+/telemetry/#"))
	denied(subscribe({}, "devices/+/telemetry/#"))
	denied(subscribe({"role": "Dashboard"}, "devices/+/telemetry/#"))
	denied(doc(dashboard, "suspended", "subscribe", {"filter": "devices/+/telemetry/#", "qos": 0}))
	denied(doc(dashboard, "pending", "receive", {"topic": "devices/s1/state", "qos": 0, "retain": true, "will": false, "payload_size": 4}))
}
