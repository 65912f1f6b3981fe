package policy

import (
	"encoding/json"
	"sync/atomic"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"
)

// The policy input document is built straight into OPA's value form: no JSON
// round trip and no reflection on the hot path. MarshalJSON encodes the same
// document independently (for logs and `ztgate policy eval`); a test checks
// that the two agree for every action.
//
// Which fields an action carries:
//
//	every action   action, identity, device (null when not enrolled), client, time
//	publish        topic, qos, retain, will, payload_size
//	receive        topic, qos, retain, will, payload_size
//	subscribe      filter, qos (the requested maximum QoS)
//	admin          request (omitted when the caller gave none)
//	bridge_out     topic, qos, retain, will, payload_size, bridge
//	bridge_in      topic, qos, retain, will, payload_size, bridge
//
// time is RFC 3339 in UTC with second precision; a zero Input.Time means now.

// fieldSet says which optional fields an action's document carries.
type fieldSet struct {
	topic, filter, qos, message, request, bridge bool
}

func fieldsFor(a Action) fieldSet {
	switch a {
	case ActionPublish, ActionReceive:
		return fieldSet{topic: true, qos: true, message: true}
	case ActionSubscribe:
		return fieldSet{filter: true, qos: true}
	case ActionAdmin:
		return fieldSet{request: true}
	case ActionBridgeOut, ActionBridgeIn:
		return fieldSet{topic: true, qos: true, message: true, bridge: true}
	}
	return fieldSet{}
}

// Object keys, built once.
var (
	keyAction          = ast.StringTerm("action")
	keyIdentity        = ast.StringTerm("identity")
	keyDevice          = ast.StringTerm("device")
	keyClient          = ast.StringTerm("client")
	keyTopic           = ast.StringTerm("topic")
	keyFilter          = ast.StringTerm("filter")
	keyQoS             = ast.StringTerm("qos")
	keyRetain          = ast.StringTerm("retain")
	keyWill            = ast.StringTerm("will")
	keyPayloadSize     = ast.StringTerm("payload_size")
	keyRequest         = ast.StringTerm("request")
	keyBridge          = ast.StringTerm("bridge")
	keyURL             = ast.StringTerm("url")
	keyRemoteTopic     = ast.StringTerm("remote_topic")
	keyTime            = ast.StringTerm("time")
	keySPIFFEID        = ast.StringTerm("spiffe_id")
	keyTrustDomain     = ast.StringTerm("trust_domain")
	keyPath            = ast.StringTerm("path")
	keySegments        = ast.StringTerm("segments")
	keyName            = ast.StringTerm("name")
	keyLabels          = ast.StringTerm("labels")
	keyStatus          = ast.StringTerm("status")
	keyID              = ast.StringTerm("id")
	keyRemoteAddr      = ast.StringTerm("remote_addr")
	keyProtocolVersion = ast.StringTerm("protocol_version")
	keyMethod          = ast.StringTerm("method")
	keyRoute           = ast.StringTerm("route")

	actionTerms = map[Action]*ast.Term{
		ActionConnect:   ast.StringTerm(string(ActionConnect)),
		ActionSubscribe: ast.StringTerm(string(ActionSubscribe)),
		ActionPublish:   ast.StringTerm(string(ActionPublish)),
		ActionReceive:   ast.StringTerm(string(ActionReceive)),
		ActionAdmin:     ast.StringTerm(string(ActionAdmin)),
	}
)

// subjectTerms is the converted, immutable form of a Subject, shared by every
// decision of a session (OPA values are safe for concurrent reads).
type subjectTerms struct {
	identity, device, client *ast.Term
}

func subjectValue(s *Subject) *subjectTerms {
	if st, ok := s.Cached(buildSubject).(*subjectTerms); ok {
		return st
	}
	// Someone else's value sits in the cache: convert without caching.
	return buildSubject(s).(*subjectTerms)
}

func buildSubject(s *Subject) any {
	segs := make([]*ast.Term, len(s.Identity.Segments))
	for i, seg := range s.Identity.Segments {
		segs[i] = ast.StringTerm(seg)
	}
	st := &subjectTerms{
		identity: ast.ObjectTerm(
			ast.Item(keySPIFFEID, ast.StringTerm(s.Identity.SPIFFEID)),
			ast.Item(keyTrustDomain, ast.StringTerm(s.Identity.TrustDomain)),
			ast.Item(keyPath, ast.StringTerm(s.Identity.Path)),
			ast.Item(keySegments, ast.ArrayTerm(segs...)),
		),
		device: ast.NullTerm(),
		client: ast.ObjectTerm(
			ast.Item(keyID, ast.StringTerm(s.Client.ID)),
			ast.Item(keyRemoteAddr, ast.StringTerm(s.Client.RemoteAddr)),
			ast.Item(keyProtocolVersion, ast.InternedTerm(int(s.Client.ProtocolVersion))),
		),
	}
	if d := s.Device; d != nil {
		labels := make([][2]*ast.Term, 0, len(d.Labels))
		for k, v := range d.Labels {
			labels = append(labels, ast.Item(ast.StringTerm(k), ast.StringTerm(v)))
		}
		st.device = ast.ObjectTerm(
			ast.Item(keyName, ast.StringTerm(d.Name)),
			ast.Item(keyLabels, ast.ObjectTerm(labels...)),
			ast.Item(keyStatus, ast.StringTerm(d.Status)),
		)
	}
	return st
}

// cachedTime holds the formatted time of the current second: every decision
// within one second shares one string.
type cachedTime struct {
	sec  int64
	term *ast.Term
}

var lastTime atomic.Pointer[cachedTime]

func timeTerm(t time.Time) *ast.Term {
	if t.IsZero() {
		t = time.Now()
	}
	sec := t.Unix()
	if c := lastTime.Load(); c != nil && c.sec == sec {
		return c.term
	}
	term := ast.StringTerm(formatTime(t))
	lastTime.Store(&cachedTime{sec: sec, term: term})
	return term
}

func formatTime(t time.Time) string {
	if t.IsZero() {
		t = time.Now()
	}
	return t.UTC().Truncate(time.Second).Format(time.RFC3339)
}

// value converts in to the policy input document. in.Subject must be set.
func (in *Input) value() ast.Value {
	st := subjectValue(in.Subject)
	fs := fieldsFor(in.Action)

	action, ok := actionTerms[in.Action]
	if !ok {
		action = ast.StringTerm(string(in.Action))
	}

	// A fixed-size backing array keeps the item list off the heap: NewObject
	// copies the pairs.
	var buf [12][2]*ast.Term
	items := append(buf[:0],
		ast.Item(keyAction, action),
		ast.Item(keyIdentity, st.identity),
		ast.Item(keyDevice, st.device),
		ast.Item(keyClient, st.client),
		ast.Item(keyTime, timeTerm(in.Time)),
	)
	if fs.topic {
		items = append(items, ast.Item(keyTopic, ast.StringTerm(in.Topic)))
	}
	if fs.filter {
		items = append(items, ast.Item(keyFilter, ast.StringTerm(in.Filter)))
	}
	if fs.qos {
		items = append(items, ast.Item(keyQoS, ast.InternedTerm(int(in.QoS))))
	}
	if fs.message {
		items = append(items,
			ast.Item(keyRetain, ast.InternedTerm(in.Retain)),
			ast.Item(keyWill, ast.InternedTerm(in.Will)),
			ast.Item(keyPayloadSize, ast.InternedTerm(in.PayloadSize)),
		)
	}
	if fs.request && in.Request != nil {
		items = append(items, ast.Item(keyRequest, ast.ObjectTerm(
			ast.Item(keyMethod, ast.StringTerm(in.Request.Method)),
			ast.Item(keyPath, ast.StringTerm(in.Request.Path)),
			ast.Item(keyRoute, ast.StringTerm(in.Request.Route)),
		)))
	}
	if fs.bridge && in.Bridge != nil {
		items = append(items, ast.Item(keyBridge, ast.ObjectTerm(
			ast.Item(keyName, ast.StringTerm(in.Bridge.Name)),
			ast.Item(keyURL, ast.StringTerm(in.Bridge.URL)),
			ast.Item(keyRemoteTopic, ast.StringTerm(in.Bridge.RemoteTopic)),
		)))
	}
	return ast.NewObject(items...)
}

// The JSON form of the input document, field for field as DESIGN's policy
// contract shows it. Pointers with omitempty leave out what an action does
// not carry while still encoding zero values (qos 0, retain false) where it does.
type jsonInput struct {
	Action      string       `json:"action"`
	Identity    jsonIdentity `json:"identity"`
	Device      *jsonDevice  `json:"device"`
	Client      jsonClient   `json:"client"`
	Topic       *string      `json:"topic,omitempty"`
	Filter      *string      `json:"filter,omitempty"`
	QoS         *byte        `json:"qos,omitempty"`
	Retain      *bool        `json:"retain,omitempty"`
	Will        *bool        `json:"will,omitempty"`
	PayloadSize *int         `json:"payload_size,omitempty"`
	Request     *jsonRequest `json:"request,omitempty"`
	Bridge      *jsonBridge  `json:"bridge,omitempty"`
	Time        string       `json:"time"`
}

type jsonBridge struct {
	Name        string `json:"name"`
	URL         string `json:"url"`
	RemoteTopic string `json:"remote_topic"`
}

type jsonIdentity struct {
	SPIFFEID    string   `json:"spiffe_id"`
	TrustDomain string   `json:"trust_domain"`
	Path        string   `json:"path"`
	Segments    []string `json:"segments"`
}

type jsonDevice struct {
	Name   string            `json:"name"`
	Labels map[string]string `json:"labels"`
	Status string            `json:"status"`
}

type jsonClient struct {
	ID              string `json:"id"`
	RemoteAddr      string `json:"remote_addr"`
	ProtocolVersion byte   `json:"protocol_version"`
}

type jsonRequest struct {
	Method string `json:"method"`
	Path   string `json:"path"`
	Route  string `json:"route"`
}

// MarshalJSON encodes the input as the policy input document of DESIGN's
// policy contract: exactly what the policy sees as `input`.
func (in *Input) MarshalJSON() ([]byte, error) {
	doc := jsonInput{Action: string(in.Action), Time: formatTime(in.Time)}
	if s := in.Subject; s != nil {
		segs := s.Identity.Segments
		if segs == nil {
			segs = []string{}
		}
		doc.Identity = jsonIdentity{
			SPIFFEID:    s.Identity.SPIFFEID,
			TrustDomain: s.Identity.TrustDomain,
			Path:        s.Identity.Path,
			Segments:    segs,
		}
		doc.Client = jsonClient{ID: s.Client.ID, RemoteAddr: s.Client.RemoteAddr, ProtocolVersion: s.Client.ProtocolVersion}
		if d := s.Device; d != nil {
			labels := d.Labels
			if labels == nil {
				labels = map[string]string{}
			}
			doc.Device = &jsonDevice{Name: d.Name, Labels: labels, Status: d.Status}
		}
	} else {
		doc.Identity.Segments = []string{}
	}
	fs := fieldsFor(in.Action)
	if fs.topic {
		doc.Topic = &in.Topic
	}
	if fs.filter {
		doc.Filter = &in.Filter
	}
	if fs.qos {
		doc.QoS = &in.QoS
	}
	if fs.message {
		doc.Retain, doc.Will, doc.PayloadSize = &in.Retain, &in.Will, &in.PayloadSize
	}
	if fs.request && in.Request != nil {
		doc.Request = &jsonRequest{Method: in.Request.Method, Path: in.Request.Path, Route: in.Request.Route}
	}
	if fs.bridge && in.Bridge != nil {
		doc.Bridge = &jsonBridge{Name: in.Bridge.Name, URL: in.Bridge.URL, RemoteTopic: in.Bridge.RemoteTopic}
	}
	return json.Marshal(doc)
}
