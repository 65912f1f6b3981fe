package testutil

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"testing"
)

// Response is an answer of the admin API.
type Response struct {
	Status      int
	ContentType string
	Body        []byte
}

// Decode unmarshals the body into v, failing the test if it is not JSON.
func (r *Response) Decode(t testing.TB, v any) {
	t.Helper()
	if err := json.Unmarshal(r.Body, v); err != nil {
		t.Fatalf("response %d is not the JSON expected: %v: %s", r.Status, err, r.Body)
	}
}

// ErrorMessage returns the "error" field of a JSON error body, failing the
// test unless the body is exactly such an object with a non-empty message.
func (r *Response) ErrorMessage(t testing.TB) string {
	t.Helper()
	var e map[string]any
	if err := json.Unmarshal(r.Body, &e); err != nil {
		t.Fatalf("error response %d is not JSON: %v: %q", r.Status, err, r.Body)
	}
	msg, ok := e["error"].(string)
	if !ok || msg == "" {
		t.Fatalf("error response %d has no \"error\" message: %s", r.Status, r.Body)
	}
	return msg
}

// API sends one request to the admin API as who. body is nil, []byte (sent
// as is, as application/json) or any value marshalled to JSON. A transport
// failure fails the test; use APIRaw to observe one.
func (e *Env) API(t testing.TB, who *Device, method, path string, body any) *Response {
	t.Helper()
	res, err := e.APIRaw(who, method, path, "application/json", body)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	return res
}

// APIRaw is API with an explicit content type, returning transport errors
// (a refused TLS handshake, for example) instead of failing the test.
func (e *Env) APIRaw(who *Device, method, path, contentType string, body any) (*Response, error) {
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case []byte:
		rd = bytes.NewReader(b)
	case string:
		rd = bytes.NewReader([]byte(b))
	default:
		raw, err := json.Marshal(b)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequest(method, e.APIURL+path, rd)
	if err != nil {
		return nil, err
	}
	if rd != nil && contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	client := &http.Client{
		Timeout: Wait,
		Transport: &http.Transport{
			TLSClientConfig:   who.TLSConfig(),
			DisableKeepAlives: true,
		},
	}
	defer client.CloseIdleConnections()
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, err
	}
	return &Response{Status: resp.StatusCode, ContentType: resp.Header.Get("Content-Type"), Body: raw}, nil
}

// DeviceNames lists the names of every enrolled device through the API as
// the admin, following pages if the answer is paginated.
func (e *Env) DeviceNames(t testing.TB) []string {
	t.Helper()
	var names []string
	path := "/v1/devices"
	for range 1000 {
		res := e.API(t, e.Admin, "GET", path, nil)
		if res.Status != 200 {
			t.Fatalf("GET %s: %d %s", path, res.Status, res.Body)
		}
		type dev struct {
			Name string `json:"name"`
		}
		var page struct {
			Devices []dev  `json:"devices"`
			Next    string `json:"next"`
		}
		var list []dev
		if err := json.Unmarshal(res.Body, &list); err != nil {
			res.Decode(t, &page)
			list = page.Devices
		}
		for _, d := range list {
			names = append(names, d.Name)
		}
		if page.Next == "" {
			return names
		}
		path = "/v1/devices?" + url.Values{"after": {page.Next}}.Encode()
	}
	t.Fatal("device list does not end")
	return nil
}

// SetStatus revokes, suspends or resumes a device through the API as the
// admin (action is "revoke", "suspend" or "resume").
func (e *Env) SetStatus(t testing.TB, name, action string) {
	t.Helper()
	res := e.API(t, e.Admin, "POST", "/v1/devices/"+name+"/"+action, nil)
	if res.Status != 200 {
		t.Fatalf("%s %s: %d %s", action, name, res.Status, res.Body)
	}
}

// SetLabels replaces a device's labels in the registry (the API has no
// route for it).
func (e *Env) SetLabels(t testing.TB, name string, labels map[string]string) {
	t.Helper()
	if _, err := e.App.Registry().SetLabels(name, labels); err != nil {
		t.Fatalf("set labels of %s: %v", name, err)
	}
}
