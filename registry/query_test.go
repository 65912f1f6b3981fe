package registry

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
)

func TestParseSelector(t *testing.T) {
	tests := []struct {
		in      string
		want    map[string]string
		wantMsg string // "" means no error
	}{
		{"", map[string]string{}, ""},
		{"   ", map[string]string{}, ""},
		{"site=plant-a", map[string]string{"site": "plant-a"}, ""},
		{"site=plant-a,role=sensor", map[string]string{"site": "plant-a", "role": "sensor"}, ""},
		{" site = plant-a , role=sensor ", map[string]string{"site": "plant-a", "role": "sensor"}, ""},
		{"k=", map[string]string{"k": ""}, ""},
		{"example.com/zone=eu-1", map[string]string{"example.com/zone": "eu-1"}, ""},
		{"k=a=b", map[string]string{"k": "a=b"}, ""},
		{"k=Küche", map[string]string{"k": "Küche"}, ""},

		{"site", nil, `is not key=value`},
		{"site=a,", nil, "term 2 is empty"},
		{",site=a", nil, "term 1 is empty"},
		{"a=1,,b=2", nil, "term 2 is empty"},
		{"=a", nil, "has no key"},
		{"site==a", nil, "only key=value"},
		{"site!=a", nil, "only key=value"},
		{"site=a,site=a", nil, `key "site" appears twice`},
		{"site=a,site=b", nil, `key "site" appears twice`},
		{"a b=c", nil, "only [A-Za-z0-9._/-] allowed"},
		{"k=a\x00b", nil, "control characters"},
		{strings.Repeat("k", 64) + "=v", nil, "longer than 63"},
		{"k=" + strings.Repeat("v", 254), nil, "longer than 253"},
		{manyTerms(65), nil, "65 terms"},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprintf("%.40q", tc.in), func(t *testing.T) {
			got, err := ParseSelector(tc.in)
			if tc.wantMsg == "" {
				if err != nil {
					t.Fatalf("ParseSelector: %v", err)
				}
				if !maps.Equal(got, tc.want) {
					t.Fatalf("ParseSelector = %v, want %v", got, tc.want)
				}
				return
			}
			if !errors.Is(err, ErrInvalidQuery) || !errors.Is(err, ErrInvalid) {
				t.Fatalf("ParseSelector: err = %v, want ErrInvalidQuery", err)
			}
			if !strings.Contains(err.Error(), tc.wantMsg) || !strings.HasPrefix(err.Error(), "registry: invalid query: ") {
				t.Fatalf("err = %q, want it to mention %q", err, tc.wantMsg)
			}
		})
	}
}

func manyTerms(n int) string {
	terms := make([]string, n)
	for i := range terms {
		terms[i] = fmt.Sprintf("k%d=v", i)
	}
	return strings.Join(terms, ",")
}

// fleet imports a deterministic fleet of n devices:
//
//	site  = site-(i%3)
//	role  = controller when i%4 == 1, else sensor
//	zone  = z1 for i%5 == 0 only
//	status: every 7th suspended, every 11th revoked, every 13th pending
//
// Each device carries several labels, so the label index ranges of one
// selector are interleaved with entries of the same devices under other
// pairs: exactly what the range walk of ListDevices must not stray into.
func fleet(t testing.TB, s *Store, n int) {
	t.Helper()
	rows := make([]Device, n)
	for i := range rows {
		d := device(fmt.Sprintf("dev-%04d", i), "site", fmt.Sprintf("site-%d", i%3), "role", "sensor")
		if i%4 == 1 {
			d.Labels["role"] = "controller"
		}
		if i%5 == 0 {
			d.Labels["zone"] = "z1"
		}
		switch {
		case i%13 == 0:
			d.Status = StatusPending
		case i%11 == 0:
			d.Status = StatusRevoked
		case i%7 == 0:
			d.Status = StatusSuspended
		}
		rows[i] = d
	}
	res, err := s.Import(rows, adminID)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range res {
		if r.Result != ImportCreated {
			t.Fatalf("fleet row %d: %+v", r.Row, r)
		}
	}
}

// expect is the brute-force answer: every device, filtered, in name order.
func expect(t *testing.T, s *Store, q Query) []string {
	t.Helper()
	all, err := s.List()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, d := range all {
		if (q.Status == "" || d.Status == q.Status) && hasLabels(d, q.Selector) {
			out = append(out, d.Name)
		}
	}
	return out
}

// pages walks every page of q and returns the names in order.
func pages(t *testing.T, s *Store, q Query) []string {
	t.Helper()
	limit := q.Limit
	if limit == 0 {
		limit = defaultPageSize
	}
	var names []string
	for range 10_000 {
		devs, next, err := s.ListDevices(q)
		if err != nil {
			t.Fatalf("ListDevices(%+v): %v", q, err)
		}
		if len(devs) > limit {
			t.Fatalf("page of %d devices, limit %d", len(devs), limit)
		}
		for _, d := range devs {
			names = append(names, d.Name)
		}
		if next == "" {
			return names
		}
		if len(devs) != limit || next != devs[len(devs)-1].Name {
			t.Fatalf("a page with a next cursor %q must be full and end at it: %d devices", next, len(devs))
		}
		q.After = next
	}
	t.Fatal("pagination did not end")
	return nil
}

func TestListDevicesSelectorsAndPaging(t *testing.T) {
	s, _ := openTemp(t)
	fleet(t, s, 500)
	queries := []Query{
		{},
		{Limit: 1},
		{Limit: 7},
		{Limit: 1000},
		{Selector: map[string]string{"role": "controller"}},
		{Selector: map[string]string{"role": "controller"}, Limit: 9},
		{Selector: map[string]string{"role": "sensor"}, Limit: 50},
		{Selector: map[string]string{"site": "site-1", "role": "controller"}, Limit: 5},
		// First pair (in key order) broad, the others narrow.
		{Selector: map[string]string{"role": "sensor", "site": "site-2", "zone": "z1"}, Limit: 3},
		// First pair narrow.
		{Selector: map[string]string{"zone": "z1", "site": "site-0"}, Limit: 4},
		{Selector: map[string]string{"zone": "z1"}, Status: StatusActive, Limit: 6},
		{Selector: map[string]string{"site": "site-0"}, Status: StatusRevoked, Limit: 2},
		{Status: StatusPending, Limit: 3},
		{Status: StatusSuspended, Limit: 10},
		{Status: StatusRevoked},
		{Status: StatusActive, Limit: 33},
		// Nothing matches.
		{Selector: map[string]string{"role": "admin"}},
		{Selector: map[string]string{"zone": "z2"}, Limit: 1},
		{Selector: map[string]string{"zone": "z1", "role": "nope"}, Limit: 1},
		// A cursor that is not a device, and cursors at both ends.
		{After: "dev-0100x", Limit: 10},
		{After: "dev-0100x", Selector: map[string]string{"site": "site-1"}, Limit: 10},
		{After: "a", Status: StatusPending},
		{After: "zzz", Selector: map[string]string{"site": "site-1"}},
		{After: "dev-0499"},
	}
	for _, q := range queries {
		t.Run(fmt.Sprintf("%v/%s/%s/%d", q.Selector, q.Status, q.After, q.Limit), func(t *testing.T) {
			want := expect(t, s, q)
			if q.After != "" {
				i, _ := slices.BinarySearch(want, q.After)
				if i < len(want) && want[i] == q.After {
					i++
				}
				want = want[i:]
			}
			got := pages(t, s, q)
			if !slices.Equal(got, want) {
				t.Fatalf("pages = %d devices %v\nwant %d devices %v", len(got), head(got), len(want), head(want))
			}
		})
	}

	// Positive control: the queries do select something.
	if n := len(expect(t, s, Query{Selector: map[string]string{"role": "sensor", "site": "site-2", "zone": "z1"}})); n < 5 {
		t.Fatalf("dataset too thin: %d devices for the 3-term selector", n)
	}
}

// TestListDevicesRangeEnd: where a label index range ends, the next range
// holds entries of the same devices under their other labels. A walk that
// does not notice the end would list them twice.
func TestListDevicesRangeEnd(t *testing.T) {
	s, _ := openTemp(t)
	for _, n := range []string{"a", "b", "c", "d"} {
		mustCreate(t, s, device(n, "role", "x", "site", "s"))
	}
	// role=w sorts before role=x, so (role, x) is followed by (site, s).
	mustCreate(t, s, device("e", "role", "w", "site", "s"))
	for _, q := range []Query{
		{Selector: map[string]string{"role": "x"}},
		{Selector: map[string]string{"role": "x"}, Limit: 1},
		{Selector: map[string]string{"role": "x"}, Limit: 3},
		{Selector: map[string]string{"role": "x"}, After: "c"},
		{Selector: map[string]string{"role": "x"}, After: "d"},
		{Status: StatusActive, Limit: 2},
	} {
		want := []string{"a", "b", "c", "d"}
		switch {
		case q.After == "c":
			want = []string{"d"}
		case q.After == "d":
			want = nil
		case q.Status != "":
			want = []string{"a", "b", "c", "d", "e"}
		}
		if got := pages(t, s, q); !slices.Equal(got, want) {
			t.Errorf("%+v: %v, want %v", q, got, want)
		}
	}
}

func head(s []string) []string { return s[:min(len(s), 12)] }

// TestListDevicesCursorOnEveryDevice pages with limit 1 across a selector
// whose devices carry other labels too, so every step starts from a cursor
// in the middle of an interleaved index.
func TestListDevicesCursorOnEveryDevice(t *testing.T) {
	s, _ := openTemp(t)
	fleet(t, s, 120)
	for _, sel := range []map[string]string{
		{"site": "site-1"},
		{"role": "controller"},
		{"role": "sensor", "zone": "z1"},
	} {
		q := Query{Selector: sel, Limit: 1}
		if got, want := pages(t, s, q), expect(t, s, q); !slices.Equal(got, want) {
			t.Errorf("%v: pages %v, want %v", sel, got, want)
		}
	}
}

func TestListDevicesSeesChanges(t *testing.T) {
	s, _ := openTemp(t)
	fleet(t, s, 40)
	q := Query{Selector: map[string]string{"site": "site-1", "role": "sensor"}}
	before := pages(t, s, q)
	if _, err := s.SetLabels("dev-0000", map[string]string{"site": "site-1", "role": "sensor"}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.SetLabels(before[0], map[string]string{"site": "site-9"}); err != nil {
		t.Fatal(err)
	}
	after := pages(t, s, q)
	want := append([]string{"dev-0000"}, before[1:]...)
	if !slices.Equal(after, want) {
		t.Fatalf("after relabel: %v, want %v", after, want)
	}
}

func TestListDevicesReturnsCopies(t *testing.T) {
	s, _ := openTemp(t)
	mustCreate(t, s, device("c1", "role", "sensor"))
	devs, _, err := s.ListDevices(Query{Selector: map[string]string{"role": "sensor"}})
	if err != nil || len(devs) != 1 {
		t.Fatalf("ListDevices = %v, %v", devs, err)
	}
	devs[0].Labels["role"] = "admin"
	if ds, _, _ := s.ListDevices(Query{Selector: map[string]string{"role": "admin"}}); len(ds) != 0 {
		t.Fatal("a returned device aliases the store")
	}
}

func TestListDevicesLimit(t *testing.T) {
	s, _ := openTemp(t)
	fleet(t, s, 1100)
	tests := []struct {
		limit, want int
	}{
		{0, defaultPageSize},
		{1, 1},
		{maxPageSize, maxPageSize},
		{maxPageSize + 1, maxPageSize},
		{1 << 30, maxPageSize},
	}
	for _, tc := range tests {
		devs, next, err := s.ListDevices(Query{Limit: tc.limit})
		if err != nil {
			t.Fatal(err)
		}
		if len(devs) != tc.want || next != devs[len(devs)-1].Name {
			t.Errorf("limit %d: %d devices (next %q), want %d", tc.limit, len(devs), next, tc.want)
		}
	}
}

func TestListDevicesInvalid(t *testing.T) {
	s, _ := openTemp(t)
	mustCreate(t, s, device("a"))
	tests := []struct {
		name    string
		q       Query
		wantMsg string
	}{
		{"negative limit", Query{Limit: -1}, "negative"},
		{"bad status", Query{Status: "deleted"}, `status "deleted"`},
		{"cursor not a name", Query{After: "A/B"}, "cursor"},
		{"cursor with NUL", Query{After: "a\x00"}, "cursor"},
		{"empty selector key", Query{Selector: map[string]string{"": "x"}}, "selector: empty label key"},
		{"selector key charset", Query{Selector: map[string]string{"a=b": "x"}}, "selector: label key"},
		{"selector value control", Query{Selector: map[string]string{"k": "a\nb"}}, "selector: label"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			devs, next, err := s.ListDevices(tc.q)
			if !errors.Is(err, ErrInvalidQuery) || !errors.Is(err, ErrInvalid) || devs != nil || next != "" {
				t.Fatalf("ListDevices = %v, %q, %v; want ErrInvalidQuery", devs, next, err)
			}
			if !strings.Contains(err.Error(), tc.wantMsg) {
				t.Fatalf("err = %q, want it to mention %q", err, tc.wantMsg)
			}
		})
	}
	// Positive control.
	if devs, _, err := s.ListDevices(Query{Selector: map[string]string{}, Status: StatusActive}); err != nil || len(devs) != 1 {
		t.Fatalf("control: %v, %v", devs, err)
	}
}
