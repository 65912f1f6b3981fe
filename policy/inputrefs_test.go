package policy

import (
	"log/slog"
	"slices"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/open-policy-agent/opa/v1/ast"

	"github.com/ztgate/ztgate/policy/defaultpolicy"
)

func refsOf(t *testing.T, files map[string]string) InputRefs {
	t.Helper()
	fsys := fstest.MapFS{}
	for name, text := range files {
		fsys[name] = &fstest.MapFile{Data: []byte(text)}
	}
	// The restricted builtins allowed: what the analysis makes of them
	// matters to an operator who allows them.
	e, err := NewEngine(fsys, Options{Logger: slog.New(slog.DiscardHandler), AllowBuiltins: RestrictedBuiltins()})
	if err != nil {
		t.Fatalf("NewEngine: %v", err)
	}
	return e.InputRefs()
}

// What the default policy reads: the subject, the action and, of the
// per-message fields, topic, filter, retain and will; not qos, not
// payload_size, not time. Its decisions are cacheable.
func TestInputRefsDefaultPolicy(t *testing.T) {
	e, err := NewEngine(defaultpolicy.FS, Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	refs := e.InputRefs()
	want := []string{
		"input.action",
		"input.device",
		"input.device.labels.role",
		"input.device.name",
		"input.device.status",
		"input.filter",
		"input.identity.segments",
		"input.identity.trust_domain",
		"input.retain",
		"input.topic",
		"input.will",
	}
	if !slices.Equal(refs.Paths, want) || !refs.Cacheable() {
		t.Errorf("default policy: %+v\nwant paths %q, cacheable", refs, want)
	}
	p := e.cur.Load().plan
	if !p.cacheable || !p.topic || !p.filter || !p.retain || !p.will || p.qos || p.size {
		t.Errorf("plan %+v", p)
	}
}

func TestInputRefs(t *testing.T) {
	const pkg = "package ztgate.authz\n\n"
	for _, tt := range []struct {
		name  string
		src   string
		paths []string // exactly, when cacheable
		why   string   // a substring of a reason, when not cacheable
	}{
		{name: "field", src: `allow if input.topic == "a"`, paths: []string{"input.topic"}},
		{name: "subject fields", src: `allow if {
			input.device.labels.role == "x"
			input.client.id == "c"
			input.identity.spiffe_id != ""
		}`, paths: []string{"input.client.id", "input.device.labels.role", "input.identity.spiffe_id"}},
		{name: "request", src: `allow if input.request.method == "GET"`, paths: []string{"input.request.method"}},
		{name: "computed key below the root", src: `allow if { some k; input.device.labels[k] == "x" }`, paths: []string{"input.device.labels"}},
		{name: "local alias", src: `allow if { x := input; x.topic == "a" }`, paths: []string{"input.topic"}},
		{name: "import alias", src: "import input.device as dev\n\nallow if dev.labels.role == \"x\"", paths: []string{"input.device.labels.role"}},
		{name: "virtual document of a part", src: "dev := input.device\n\nallow if dev.labels.role == \"a\"", paths: []string{"input.device"}},
		{name: "function", src: "f(doc) if doc.topic == \"a\"\n\nallow if f(input)", paths: []string{"input.topic"}},
		{name: "function chain", src: "g(d) if d.qos == 1\n\nf(d) if g(d)\n\nallow if f(input)", paths: []string{"input.qos"}},
		{name: "function second argument", src: "f(a, b) if b.will == a\n\nallow if f(true, input)", paths: []string{"input.will"}},
		{name: "function of a part", src: "f(d) if d.role == \"a\"\n\nallow if f(input.device.labels)", paths: []string{"input.device.labels", "input.device.labels.role"}},
		{name: "function else", src: "f(x) := 1 if x.topic == \"a\"\n\nelse := 2 if x.filter == \"b\"\n\nallow if f(input) == 2", paths: []string{"input.filter", "input.topic"}},
		{name: "function ignoring its argument", src: "f(_) := true\n\nallow if f(input)", paths: nil},
		{name: "every over a part", src: `allow if every s in input.identity.segments { s != "" }`, paths: []string{"input.identity.segments"}},
		{name: "comprehension over a part", src: `allow if count([s | some s in input.identity.segments]) > 0`, paths: []string{"input.identity.segments"}},
		{name: "other package", src: "import data.lib\n\nallow if lib.is_a", paths: []string{"input.topic"}},
		// print is compiled away unless enabled, which the engine never does.
		{name: "print", src: `allow if { print(input); input.topic == "a" }`, paths: []string{"input.topic"}},
		{name: "partial object", src: "p[k] := v if some k, v in input.device.labels\n\nallow if p.x", paths: []string{"input.device.labels"}},

		{name: "computed key at the root", src: `allow if { some k; input[k] == "a" }`, why: "computed key"},
		{name: "iteration", src: `allow if { some v in input; v == "a" }`, why: "computed key"},
		{name: "walk", src: `allow if { walk(input, [_, v]); v == "x" }`, why: "as a whole value"},
		{name: "json.marshal", src: `allow if json.marshal(input) != ""`, why: "as a whole value"},
		{name: "object.get", src: `allow if object.get(input, "topic", "") == "a"`, why: "as a whole value"},
		{name: "compared whole", src: `allow if input == {"topic": "a"}`, why: "as a whole value"},
		{name: "virtual document of the input", src: "doc := input\n\nallow if doc.topic == \"a\"", why: "as a whole value"},
		{name: "bound twice", src: `allow if { v = input; v = {"topic": "a"} }`, why: "as a whole value"},
		{name: "function returning its argument", src: "id(x) := x\n\nallow if id(input).topic == \"a\"", why: "inside function"},
		{name: "function iterating its argument", src: "f(x) if x[_] == \"a\"\n\nallow if f(input)", why: "inside function"},
		{name: "function pattern", src: "f({\"topic\": t}) if t == \"a\"\n\nallow if f(input)", why: "inside function"},
		{name: "every over the input", src: `allow if every v in input { v != "" }`, why: "as a whole value"},
		{name: "comprehension over the input", src: `allow if count([k | input[k]]) > 3`, why: "computed key"},
		{name: "with input", src: "p if input.topic == \"a\"\n\nallow if p with input as {\"topic\": \"a\"}", why: "replaces input"},
		{name: "with input field", src: "p if input.topic == \"a\"\n\nallow if p with input.topic as \"a\"", why: "replaces input"},
		{name: "with function", src: "f(x) if x.topic == \"a\"\n\ng(x) if x.qos == 1\n\nallow if f(input) with f as g", why: "replaces function"},
		{name: "with builtin", src: `allow if count(input.identity.segments) == 2 with count as 2`, why: "replaces builtin"},
		{name: "time", src: `allow if input.time < "2030"`, why: "input.time"},
		{name: "time in a function", src: "f(d) if d.time < \"2030\"\n\nallow if f(input)", why: "input.time"},
		{name: "not in the document", src: `allow if input.foo == 1`, why: "not part of the input document"},
		{name: "clock", src: `allow if time.now_ns() > 0`, why: "time.now_ns"},
		{name: "random", src: `allow if rand.intn("x", 2) == 0`, why: "rand.intn"},
		{name: "http", src: `allow if http.send({"method": "GET", "url": "http://127.0.0.1:1"}).status_code == 200`, why: "http.send"},
		{name: "certificate validity", src: `allow if crypto.x509.parse_and_verify_certificates(input.topic)[0]`, why: "crypto.x509"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			files := map[string]string{"authz.rego": pkg + tt.src + "\n"}
			if tt.name == "other package" {
				files["lib.rego"] = "package lib\n\nis_a if input.topic == \"a\"\n"
			}
			refs := refsOf(t, files)
			if tt.why == "" {
				if !refs.Cacheable() || !slices.Equal(refs.Paths, tt.paths) {
					t.Errorf("%+v, want cacheable with paths %q", refs, tt.paths)
				}
				return
			}
			if refs.Cacheable() || !slices.ContainsFunc(refs.Uncacheable, func(s string) bool { return strings.Contains(s, tt.why) }) {
				t.Errorf("%+v, want uncacheable for %q", refs, tt.why)
			}
		})
	}
}

// A reason names the file and line of what it refers to.
func TestInputRefsReasonLocation(t *testing.T) {
	refs := refsOf(t, map[string]string{"authz.rego": "package ztgate.authz\n\nallow if input.time < \"2030\"\n"})
	if len(refs.Uncacheable) != 1 || !strings.HasPrefix(refs.Uncacheable[0], "authz.rego:3: ") {
		t.Errorf("%q", refs.Uncacheable)
	}
}

// Test modules are not part of a revision: what they do to the input
// (`with input as`, above all) does not make it uncacheable.
func TestInputRefsIgnoresTests(t *testing.T) {
	refs := refsOf(t, map[string]string{
		"authz.rego": "package ztgate.authz\n\nallow if input.topic == \"a\"\n",
		"authz_test.rego": `package ztgate.authz_test

import data.ztgate.authz

test_allow if authz.allow with input as {"topic": "a"}

uses_input if {
	walk(input, _)
	time.now_ns() > 0
}

test_walk if uses_input with input as {"a": 1}
`,
	})
	if !refs.Cacheable() || !slices.Equal(refs.Paths, []string{"input.topic"}) {
		t.Errorf("%+v", refs)
	}
}

// A change of tests alone keeps the revision, and its plan.
func TestInputRefsPlanSharedAcrossTestChanges(t *testing.T) {
	policy := "package ztgate.authz\n\nallow if input.topic == \"a\"\n"
	e, err := NewEngine(fstest.MapFS{"authz.rego": {Data: []byte(policy)}}, Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	before := e.cur.Load()
	err = e.Load(fstest.MapFS{
		"authz.rego":      {Data: []byte(policy)},
		"authz_test.rego": {Data: []byte("package ztgate.authz_test\n\ntest_a if data.ztgate.authz.allow with input as {\"topic\": \"a\"}\n")},
	})
	if err != nil {
		t.Fatal(err)
	}
	after := e.cur.Load()
	if after == before || after.id != before.id || after.plan != before.plan {
		t.Errorf("revision %p -> %p, plan %p -> %p", before, after, before.plan, after.plan)
	}
}

// Every top-level key of the input document is classified for the cache,
// and every classified key is one the document can have: a field added to
// the document must be added to inputFields (and, if it varies per
// decision, to the cache key) before a policy reading it can be cached.
func TestInputFieldsMatchDocument(t *testing.T) {
	seen := map[string]bool{}
	for name, in := range valueInputs() {
		if in.Subject == nil {
			continue
		}
		in.Request = &Request{Method: "GET", Path: "/"}
		obj, ok := in.value().(ast.Object)
		if !ok {
			t.Fatalf("%s: not an object", name)
		}
		for _, k := range obj.Keys() {
			key := string(k.Value.(ast.String))
			seen[key] = true
			if inputFields[key] == 0 {
				t.Errorf("%s: input.%s is not classified in inputFields", name, key)
			}
		}
	}
	for key, class := range inputFields {
		if !seen[key] {
			t.Errorf("inputFields has input.%s, which no document carries", key)
		}
		if class == fieldKey && !slices.Contains([]string{"action", "topic", "filter", "qos", "retain", "will", "payload_size", "bridge"}, key) {
			t.Errorf("input.%s is a key field the cache key does not carry", key)
		}
	}
}
