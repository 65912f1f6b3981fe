package bridge

import "testing"

// In a cluster the in filters are subscribed as one shared subscription
// per bridge, without No Local (a protocol error on a shared subscription
// in MQTT 5); on a single gateway, as they are, with No Local for MQTT 5.
func TestEncodeSubscribeShared(t *testing.T) {
	rules := []InRule{{Filter: "plant-a/devices/+/commands/#", QoS: 1}}
	for _, tt := range []struct {
		v      byte
		share  string
		filter string
		opts   byte
	}{
		{5, "", "plant-a/devices/+/commands/#", 0x05},
		{4, "", "plant-a/devices/+/commands/#", 0x01},
		{5, "ztgate-cloud", "$share/ztgate-cloud/plant-a/devices/+/commands/#", 0x01},
		{4, "ztgate-cloud", "$share/ztgate-cloud/plant-a/devices/+/commands/#", 0x01},
	} {
		pk := encodeSubscribe(tt.v, 7, rules, tt.share)
		if pk[0] != 0x82 || int(pk[1]) != len(pk)-2 {
			t.Fatalf("v%d %q: header % x", tt.v, tt.share, pk[:2])
		}
		body := pk[2+2:] // fixed header, packet identifier
		if tt.v == 5 {
			body = body[1:] // no properties
		}
		n := int(body[0])<<8 | int(body[1])
		if got := string(body[2 : 2+n]); got != tt.filter || body[2+n] != tt.opts || len(body) != 3+n {
			t.Errorf("v%d share %q: filter %q options %#x, want %q %#x", tt.v, tt.share, got, body[2+n], tt.filter, tt.opts)
		}
	}
}
