package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"reflect"
	"slices"
	"strconv"
	"strings"
)

// ErrorResponse is the body of every error response.
type ErrorResponse struct {
	Error string `json:"error"`
}

// errBody is a client error with the status it deserves.
type errBody struct {
	status int
	msg    string
}

func (e *errBody) Error() string { return e.msg }

func badRequest(format string, args ...any) error {
	return &errBody{status: http.StatusBadRequest, msg: fmt.Sprintf(format, args...)}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		// Only our own response types are marshalled; they always encode.
		status, b = http.StatusInternalServerError, []byte(`{"error":"internal error"}`)
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cache-Control", "no-store")
	h.Del("Content-Length")
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}

func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, ErrorResponse{Error: msg})
}

// writeClientError answers err if it is a client error (errBody or an
// oversized body) and reports whether it did.
func writeClientError(w http.ResponseWriter, err error) bool {
	var eb *errBody
	if errors.As(err, &eb) {
		writeError(w, eb.status, eb.msg)
		return true
	}
	var tooBig *http.MaxBytesError
	if errors.As(err, &tooBig) {
		writeError(w, http.StatusRequestEntityTooLarge,
			fmt.Sprintf("request body larger than %d bytes", tooBig.Limit))
		return true
	}
	return false
}

// mediaType returns the request's media type, lower-cased and without
// parameters, or "" when there is none or it does not parse.
func mediaType(r *http.Request) string {
	ct := r.Header.Get("Content-Type")
	if ct == "" {
		return ""
	}
	mt, _, err := mime.ParseMediaType(ct)
	if err != nil {
		return ""
	}
	return mt
}

func unsupportedMediaType(want ...string) error {
	msg := "Content-Type must be "
	for i, w := range want {
		if i > 0 {
			msg += " or "
		}
		msg += w
	}
	return &errBody{status: http.StatusUnsupportedMediaType, msg: msg}
}

// decodeJSON reads exactly one JSON object into v, refusing unknown fields
// and trailing data. Field names must match exactly: encoding/json would
// read {"NAME": ...} as "name", so every key is checked against v's type
// once the decode succeeded (see checkFieldNames).
func decodeJSON(r *http.Request, v any) error {
	if mediaType(r) != "application/json" {
		return unsupportedMediaType("application/json")
	}
	raw, err := io.ReadAll(r.Body)
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return err
		}
		return badRequest("reading the body: %v", err)
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return jsonError(err)
	}
	if err := dec.Decode(&struct{}{}); !errors.Is(err, io.EOF) {
		return badRequest("invalid JSON: trailing data after the object")
	}
	return checkFieldNames(raw, reflect.TypeOf(v))
}

func jsonError(err error) error {
	var tooBig *http.MaxBytesError
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &tooBig):
		return err
	case errors.Is(err, io.EOF):
		return badRequest("invalid JSON: empty body")
	case errors.Is(err, io.ErrUnexpectedEOF):
		return badRequest("invalid JSON: unexpected end of body")
	case errors.As(err, &syn):
		return badRequest("invalid JSON at offset %d: %v", syn.Offset, syn)
	case errors.As(err, &typ):
		if typ.Field != "" {
			return badRequest("invalid JSON: field %q must be %s", typ.Field, typ.Type)
		}
		return badRequest("invalid JSON: body must be a %s", typ.Type)
	default:
		// Unknown fields and other decoder complaints are about the input.
		return badRequest("invalid JSON: %v", err)
	}
}

// queryParams returns the request's query parameters, refusing any that is
// not in allowed or is given twice: a mistyped filter must not silently
// widen a listing that an operator then acts on.
func queryParams(r *http.Request, allowed ...string) (map[string]string, error) {
	vals, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		return nil, badRequest("invalid query string: %v", err)
	}
	out := make(map[string]string, len(vals))
	for k, vs := range vals {
		if !slices.Contains(allowed, k) {
			return nil, badRequest("unknown query parameter %s (allowed: %s)", clip(k), strings.Join(allowed, ", "))
		}
		if len(vs) != 1 {
			return nil, badRequest("query parameter %s is given %d times", clip(k), len(vs))
		}
		out[k] = vs[0]
	}
	return out, nil
}

// parseLimit parses a page size: "" is the default (0), at most maxPage.
func parseLimit(v string) (int, error) {
	if v == "" {
		return 0, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > maxPage {
		return 0, badRequest("limit %s must be a number from 1 to %d", clip(v), maxPage)
	}
	return n, nil
}

// maxPage is the largest page the registry serves.
const maxPage = 1000

// clip quotes user input for an error message, cut to a readable length.
func clip(s string) string {
	const maxEcho = 80
	if len(s) > maxEcho {
		return strconv.Quote(s[:maxEcho]) + "..."
	}
	return strconv.Quote(s)
}
