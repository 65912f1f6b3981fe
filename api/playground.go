package api

import (
	"encoding/json"
	"errors"
	"net/http"
	"reflect"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ztgate/ztgate/policy"
	"github.com/ztgate/ztgate/registry"
)

// playground is the shorthand body of POST /v1/policy/eval: a device, an
// action and a topic (a filter for subscribe), from which the input the
// gateway would build is made.
type playground struct {
	Device   string `json:"device"`
	Action   string `json:"action"`
	Topic    string `json:"topic"`
	ClientID string `json:"client_id"`
}

// isPlayground reports whether a decoded eval body is the shorthand: the
// keys device and action, topic (but for connect) and client_id at most.
// A raw input document has identity and client beside them, so the two do
// not mix.
func isPlayground(doc map[string]json.RawMessage) bool {
	_, dev := doc["device"]
	_, act := doc["action"]
	if !dev || !act {
		return false
	}
	for k := range doc {
		switch k {
		case "device", "action", "topic", "client_id":
		default:
			return false
		}
	}
	return true
}

// playgroundInput builds the input the gateway would decide for the
// shorthand raw: the registry entry's subject (as admit builds one), the
// action, and the topic or filter. An unknown device is a 404 errBody.
func (s *Server) playgroundInput(raw []byte) ([]byte, error) {
	var p playground
	if err := json.Unmarshal(raw, &p); err != nil {
		return nil, jsonError(err)
	}
	if err := checkFieldNames(raw, reflect.TypeOf(&p)); err != nil {
		return nil, err
	}
	if err := registry.ValidateName(p.Device); err != nil {
		return nil, badRequest("playground: %v", err)
	}
	in := &policy.Input{Action: policy.Action(p.Action), Time: time.Now().UTC()}
	switch in.Action {
	case policy.ActionConnect:
		if p.Topic != "" {
			return nil, badRequest("playground: connect takes no topic")
		}
	case policy.ActionPublish, policy.ActionReceive:
		if !policy.ValidTopicName(p.Topic) {
			return nil, badRequest("playground: %q is not a topic name (non-empty, no wildcards)", clip(p.Topic))
		}
		in.Topic = p.Topic
	case policy.ActionSubscribe:
		if !policy.ValidTopicFilter(p.Topic) {
			return nil, badRequest("playground: %q is not a topic filter", clip(p.Topic))
		}
		in.Filter = p.Topic
	default:
		return nil, badRequest("playground: action %q is not connect, subscribe, publish or receive", clip(p.Action))
	}
	dev, err := s.cfg.Registry.Get(p.Device)
	if errors.Is(err, registry.ErrNotFound) {
		return nil, &errBody{status: http.StatusNotFound, msg: "device " + p.Device + " not found"}
	}
	if err != nil {
		return nil, err
	}
	id, err := spiffeid.FromString(dev.SPIFFEID)
	if err != nil {
		return nil, err
	}
	clientID := p.ClientID
	if clientID == "" {
		clientID = dev.Name
	}
	// An MQTT 5 client, the protocol the gateway prefers; the policy
	// rarely reads it.
	in.Subject = policy.NewSubject(id, dev, policy.Client{ID: clientID, ProtocolVersion: 5})
	return in.MarshalJSON()
}
