package gateway

import (
	"context"
	"fmt"
	"log/slog"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// redactHandler is the handler of mochi's log (and of the listener's, which
// mochi hands it). mochi logs whole packets and wills as attributes ("pk",
// "packet", "will"): payloads, correlation data, user properties, the
// password of a CONNECT. Those are the devices' data, not the operator's,
// so no value of a type the handler does not know reaches the log: packets
// and wills become a summary of what they are (type, topic, QoS, payload
// size), errors stay, and any other value of kind Any becomes its type
// name. Strings, numbers and the like pass unchanged.
type redactHandler struct {
	next slog.Handler
}

func newRedactHandler(next slog.Handler) slog.Handler { return redactHandler{next: next} }

func (h redactHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return h.next.Enabled(ctx, l)
}

func (h redactHandler) Handle(ctx context.Context, r slog.Record) error {
	out := slog.NewRecord(r.Time, r.Level, r.Message, r.PC)
	r.Attrs(func(a slog.Attr) bool {
		out.AddAttrs(redactAttr(a))
		return true
	})
	return h.next.Handle(ctx, out)
}

func (h redactHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	red := make([]slog.Attr, len(attrs))
	for i, a := range attrs {
		red[i] = redactAttr(a)
	}
	return redactHandler{next: h.next.WithAttrs(red)}
}

func (h redactHandler) WithGroup(name string) slog.Handler {
	return redactHandler{next: h.next.WithGroup(name)}
}

func redactAttr(a slog.Attr) slog.Attr {
	return slog.Attr{Key: a.Key, Value: redactValue(a.Value)}
}

func redactValue(v slog.Value) slog.Value {
	v = v.Resolve()
	switch v.Kind() {
	case slog.KindGroup:
		g := v.Group()
		red := make([]slog.Attr, len(g))
		for i, a := range g {
			red[i] = redactAttr(a)
		}
		return slog.GroupValue(red...)
	case slog.KindAny:
	default:
		return v
	}
	switch x := v.Any().(type) {
	case packets.Packet:
		return packetSummary(&x)
	case *packets.Packet:
		if x != nil {
			return packetSummary(x)
		}
	case mqtt.Will:
		return slog.GroupValue(
			slog.String("topic", x.TopicName),
			slog.Int("qos", int(x.Qos)),
			slog.Bool("retain", x.Retain),
			slog.Int("payload_bytes", len(x.Payload)),
		)
	case error:
		return v
	case nil:
		return v
	}
	return slog.StringValue(fmt.Sprintf("%T (not logged)", v.Any()))
}

// packetSummary is what a log may say of a packet.
func packetSummary(pk *packets.Packet) slog.Value {
	attrs := make([]slog.Attr, 0, 6)
	attrs = append(attrs, slog.String("type", packets.PacketNames[pk.FixedHeader.Type]))
	if pk.PacketID != 0 {
		attrs = append(attrs, slog.Int("packet_id", int(pk.PacketID)))
	}
	if pk.FixedHeader.Type == packets.Publish {
		attrs = append(attrs,
			slog.String("topic", pk.TopicName),
			slog.Int("qos", int(pk.FixedHeader.Qos)),
			slog.Bool("retain", pk.FixedHeader.Retain),
			slog.Int("payload_bytes", len(pk.Payload)),
		)
	}
	return slog.GroupValue(attrs...)
}
