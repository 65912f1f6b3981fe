package api

import (
	"cmp"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/ztgate/ztgate/internal/brokerview"
	"github.com/ztgate/ztgate/policy"
)

const (
	actionRetainedDelete = "retained.delete"

	// defaultRetainedFilter lists every retained message but those on $
	// topics, as a "#" subscription would receive them.
	defaultRetainedFilter = "#"
	// defaultRetainedLimit is the page GET /v1/retained answers when the
	// request names no limit (at most maxPage).
	defaultRetainedLimit = 100
	// maxTopicLen is MQTT's bound on a topic name or filter (a UTF-8
	// string of at most 65535 bytes).
	maxTopicLen = 65535
)

// RetainedList is the answer of GET /v1/retained, sorted by topic.
type RetainedList struct {
	Messages []brokerview.RetainedMessage `json:"messages"`
	// Truncated says more messages match than the limit let through:
	// narrow the filter or raise the limit.
	Truncated bool `json:"truncated"`
}

func (s *Server) listRetained(w http.ResponseWriter, r *http.Request) {
	q, err := queryParams(r, "filter", "limit")
	if err != nil {
		s.fail(w, "retained query", err)
		return
	}
	filter := defaultRetainedFilter
	if v, ok := q["filter"]; ok {
		filter = v
	}
	if err := checkRetainedFilter(filter); err != nil {
		s.fail(w, "retained query", err)
		return
	}
	limit, err := parseLimit(q["limit"])
	if err != nil {
		s.fail(w, "retained query", err)
		return
	}
	if limit == 0 {
		limit = defaultRetainedLimit
	}
	var msgs []brokerview.RetainedMessage
	if s.cfg.ListRetained != nil {
		// One more than the page, to tell a full page from a cut one.
		if msgs, err = s.cfg.ListRetained(filter, limit+1); err != nil {
			s.internalError(w, "list retained", err)
			return
		}
	}
	msgs = slices.Clone(msgs)
	slices.SortFunc(msgs, func(a, b brokerview.RetainedMessage) int { return cmp.Compare(a.Topic, b.Topic) })
	out := RetainedList{Messages: msgs}
	if len(msgs) > limit {
		out.Messages, out.Truncated = msgs[:limit], true
	}
	if out.Messages == nil {
		out.Messages = []brokerview.RetainedMessage{}
	}
	for i := range out.Messages {
		out.Messages[i].Created = out.Messages[i].Created.UTC()
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) deleteRetained(w http.ResponseWriter, r *http.Request) {
	q, err := queryParams(r, "topic")
	if err != nil {
		s.fail(w, "retained delete", err)
		return
	}
	topic, ok := q["topic"]
	if !ok {
		s.fail(w, "retained delete", badRequest("the topic query parameter is required"))
		return
	}
	if err := checkTopicName(topic); err != nil {
		s.fail(w, "retained delete", err)
		return
	}
	st := stateOf(r)
	st.target = "retained " + topic
	deleted := false
	if s.cfg.DeleteRetained != nil {
		if deleted, err = s.cfg.DeleteRetained(topic); err != nil {
			s.internalError(w, "delete retained", err)
			return
		}
	}
	if !deleted {
		// serve audits the failed delete.
		writeError(w, http.StatusNotFound, fmt.Sprintf("no retained message on topic %s", clip(topic)))
		return
	}
	if err := s.record(r, registryOK(actionRetainedDelete, st.target, "")); err != nil {
		// The message is gone; the missing entry is logged.
		s.log.Error("api: retained message deleted without its audit entry", "topic", topic)
	}
	s.log.Info("api: retained message deleted", "topic", topic, "by", st.peer)
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusNoContent)
}

// checkRetainedFilter refuses what is not an MQTT topic filter, and a
// shared subscription: retained messages are not sent to one, so its
// filter would select nothing a subscriber gets.
func checkRetainedFilter(filter string) error {
	if err := checkMQTTString("filter", filter); err != nil {
		return err
	}
	if _, _, shared, _ := policy.SplitShared(filter); shared {
		return badRequest("filter %s is a shared subscription; give its topic filter", clip(filter))
	}
	if !policy.ValidTopicFilter(filter) {
		return badRequest("filter %s is not an MQTT topic filter ('+' and '#' only as a whole level, '#' only last)", clip(filter))
	}
	return nil
}

// checkTopicName refuses what is not an MQTT topic name (a wildcard would
// delete nothing, or everything a store matched it against).
func checkTopicName(topic string) error {
	if err := checkMQTTString("topic", topic); err != nil {
		return err
	}
	if !policy.ValidTopicName(topic) {
		return badRequest("topic %s is not a topic name: no wildcards '+' or '#'", clip(topic))
	}
	return nil
}

// checkMQTTString refuses what MQTT cannot carry as a topic or filter.
func checkMQTTString(what, v string) error {
	switch {
	case v == "":
		return badRequest("the %s is empty", what)
	case len(v) > maxTopicLen:
		return badRequest("the %s is longer than %d bytes", what, maxTopicLen)
	case !utf8.ValidString(v):
		return badRequest("the %s %s is not UTF-8", what, clip(v))
	case strings.IndexByte(v, 0) >= 0:
		return badRequest("the %s %s contains NUL", what, clip(v))
	}
	return nil
}
