package console

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

var adminID = spiffeid.RequireFromString("spiffe://example.org/admin/dev")

type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func newConsole(t *testing.T, opts Options) (*Console, *clock) {
	t.Helper()
	clk := &clock{now: time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)}
	opts.Now = clk.Now
	c, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	return c, clk
}

func TestLoginTokenIsOneTime(t *testing.T) {
	c, _ := newConsole(t, Options{})
	l, err := c.NewLogin(adminID)
	if err != nil {
		t.Fatal(err)
	}
	if len(l.Token) < 43 {
		t.Fatalf("token %q: shorter than 32 bytes base64url", l.Token)
	}
	if !c.Valid(l.Token) {
		t.Fatal("a fresh token is not valid")
	}
	s, err := c.Redeem(l.Token)
	if err != nil {
		t.Fatalf("first redeem: %v", err)
	}
	if s.SPIFFEID != adminID || s.ID == "" || s.CSRFToken == "" || s.ID == s.CSRFToken {
		t.Fatalf("session %+v", s)
	}
	if _, err := c.Redeem(l.Token); !errors.Is(err, ErrInvalidToken) {
		t.Fatalf("second redeem: %v, want ErrInvalidToken", err)
	}
	if c.Valid(l.Token) {
		t.Fatal("a used token is still valid")
	}
	got, ok := c.Lookup(s.ID)
	if !ok || got.SPIFFEID != adminID || got.CSRFToken != s.CSRFToken {
		t.Fatalf("lookup: %+v %v", got, ok)
	}
	if _, ok := c.Lookup(l.Token); ok {
		t.Fatal("the login token works as a session id")
	}
}

func TestLoginTokenExpires(t *testing.T) {
	c, clk := newConsole(t, Options{})
	expired, _ := c.NewLogin(adminID)
	live, _ := c.NewLogin(adminID)
	clk.Advance(DefaultTokenTTL)
	if _, err := c.Redeem(expired.Token); !errors.Is(err, ErrInvalidToken) {
		t.Fatalf("redeem at expiry: %v, want ErrInvalidToken", err)
	}
	clk.Advance(-time.Second)
	if _, err := c.Redeem(live.Token); err != nil {
		t.Fatalf("redeem a second before expiry: %v", err)
	}
}

func TestSessionExpiresAbsolutely(t *testing.T) {
	c, clk := newConsole(t, Options{})
	l, _ := c.NewLogin(adminID)
	s, err := c.Redeem(l.Token)
	if err != nil {
		t.Fatal(err)
	}
	clk.Advance(DefaultSessionTTL - time.Second)
	if _, ok := c.Lookup(s.ID); !ok {
		t.Fatal("session gone before its lifetime")
	}
	clk.Advance(time.Second)
	if _, ok := c.Lookup(s.ID); ok {
		t.Fatal("session alive after 8 h: use must not extend it")
	}
}

func TestSessionEnd(t *testing.T) {
	c, _ := newConsole(t, Options{})
	l, _ := c.NewLogin(adminID)
	s, _ := c.Redeem(l.Token)
	if !c.End(s.ID) {
		t.Fatal("End of a live session")
	}
	if _, ok := c.Lookup(s.ID); ok {
		t.Fatal("session alive after End")
	}
	if c.End(s.ID) {
		t.Fatal("End twice")
	}
}

func TestBoundsAndSweep(t *testing.T) {
	c, clk := newConsole(t, Options{MaxTokens: 2, MaxSessions: 1})
	a, _ := c.NewLogin(adminID)
	if _, err := c.NewLogin(adminID); err != nil {
		t.Fatal(err)
	}
	if _, err := c.NewLogin(adminID); !errors.Is(err, ErrFull) {
		t.Fatalf("third token: %v, want ErrFull", err)
	}
	if _, err := c.Redeem(a.Token); err != nil {
		t.Fatal(err)
	}
	// A slot is free again (a was spent).
	b, err := c.NewLogin(adminID)
	if err != nil {
		t.Fatalf("token after a redeem: %v", err)
	}
	if _, err := c.Redeem(b.Token); !errors.Is(err, ErrFull) {
		t.Fatalf("second session: %v, want ErrFull", err)
	}
	// Expired entries are swept to make room.
	clk.Advance(DefaultSessionTTL)
	for range 2 {
		if _, err := c.NewLogin(adminID); err != nil {
			t.Fatalf("token after expiry: %v", err)
		}
	}
	l, _ := c.NewLogin(adminID)
	_ = l
	c.Sweep()
	if tokens, sessions := c.Len(); sessions != 0 || tokens > 2 {
		t.Fatalf("after sweep: %d tokens, %d sessions", tokens, sessions)
	}
}

func TestCheckCSRF(t *testing.T) {
	s := Session{CSRFToken: "abc"}
	for _, tc := range []struct {
		got  string
		want bool
	}{{"abc", true}, {"", false}, {"abd", false}, {"abcd", false}} {
		if s.CheckCSRF(tc.got) != tc.want {
			t.Errorf("CheckCSRF(%q) = %v", tc.got, !tc.want)
		}
	}
	if (Session{}).CheckCSRF("") {
		t.Error("an empty token matches an empty header")
	}
}

func TestCookieAttributes(t *testing.T) {
	c, _ := newConsole(t, Options{})
	w := httptest.NewRecorder()
	http.SetCookie(w, c.Cookie(Session{ID: "v"}))
	got := w.Header().Get("Set-Cookie")
	for _, want := range []string{"ztgate_console=v", "Path=/", "Max-Age=28800", "HttpOnly", "Secure", "SameSite=Strict"} {
		if !strings.Contains(got, want) {
			t.Errorf("Set-Cookie %q lacks %q", got, want)
		}
	}
}

func TestAssets(t *testing.T) {
	h := Assets()
	for _, tc := range []struct {
		path   string
		status int
		ctype  string
	}{
		{"/ui/", 200, "text/html; charset=utf-8"},
		{"/ui/index.html", 200, "text/html; charset=utf-8"},
		{"/ui/nope.js", 404, ""},
		{"/ui/../console.go", 404, ""},
		{"/other", 404, ""},
	} {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequest(http.MethodGet, tc.path, nil))
		if w.Code != tc.status {
			t.Errorf("%s: %d, want %d", tc.path, w.Code, tc.status)
		}
		if got := w.Header().Get("Content-Security-Policy"); got != ContentSecurityPolicy {
			t.Errorf("%s: CSP %q", tc.path, got)
		}
		if got := w.Header().Get("X-Content-Type-Options"); got != "nosniff" {
			t.Errorf("%s: nosniff %q", tc.path, got)
		}
		if tc.ctype != "" && w.Header().Get("Content-Type") != tc.ctype {
			t.Errorf("%s: Content-Type %q", tc.path, w.Header().Get("Content-Type"))
		}
	}
}

func TestLoginPageEscapesToken(t *testing.T) {
	w := httptest.NewRecorder()
	LoginPage(w, `"><script>x</script>`)
	if strings.Contains(w.Body.String(), "<script>x") {
		t.Fatalf("token not escaped: %s", w.Body)
	}
	if w.Header().Get("Cache-Control") != "no-store" {
		t.Fatalf("Cache-Control %q", w.Header().Get("Cache-Control"))
	}
}
