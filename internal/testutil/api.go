package testutil

import (
	"encoding/json"
	"net/url"
	"testing"

	"github.com/ztgate/ztgate/internal/testclient"
)

// Response is an answer of the admin API.
type Response = testclient.Response

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

// APIRaw is API with an explicit content type (sent only with a body),
// returning transport errors (a refused TLS handshake, for example)
// instead of failing the test. Each request is a new TLS connection, so
// the API always sees who's certificate of now.
func (e *Env) APIRaw(who *Device, method, path, contentType string, body any) (*Response, error) {
	var raw []byte
	switch b := body.(type) {
	case nil:
		contentType = ""
	case []byte:
		raw = b
	case string:
		raw = []byte(b)
	default:
		var err error
		if raw, err = json.Marshal(b); err != nil {
			return nil, err
		}
	}
	res, err := testclient.Request(who.TLSConfig(), method, e.APIURL+path, contentType, raw)
	if err != nil {
		return nil, err
	}
	return &res, nil
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
