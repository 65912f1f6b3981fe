// Package console is the sign-in and the sessions of ztgate's web console,
// and the console's embedded assets.
//
// The console has no passwords: an admin who holds a client X.509-SVID mints
// a one-time login token through the API (ztgate dashboard); redeeming it in
// a browser opens a console session bound to that admin's SPIFFE ID, carried
// by a cookie. Every request made with the cookie is still decided by the
// policy for that SPIFFE ID, as a request with the certificate would be.
//
// Tokens and session IDs are 32 random bytes, and only their SHA-256 hashes
// are kept, so a memory dump does not hand out live credentials. Both are
// held in memory only: a restart of the gateway signs every console user
// out, and a console session is valid on the node that opened it.
package console

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

const (
	// CookieName is the console session's cookie.
	CookieName = "ztgate_console"
	// CSRFHeader carries the session's CSRF token on every state change.
	CSRFHeader = "X-CSRF-Token"

	// DefaultTokenTTL is how long a login token may be redeemed.
	DefaultTokenTTL = 5 * time.Minute
	// DefaultSessionTTL is a console session's absolute lifetime: it is
	// not extended by use, so a stolen cookie is worth a working day at
	// most.
	DefaultSessionTTL = 8 * time.Hour
	// DefaultMaxTokens and DefaultMaxSessions bound what the console
	// holds in memory. Only an admin can mint tokens, so the bounds are
	// against a runaway script rather than an outsider.
	DefaultMaxTokens   = 1024
	DefaultMaxSessions = 1024

	secretBytes = 32
)

var (
	// ErrInvalidToken is a login token that is unknown, already used or
	// expired; the three are not told apart.
	ErrInvalidToken = errors.New("console: the login token is unknown, used or expired")
	// ErrFull is a token or session refused because the console holds as
	// many live ones as it may.
	ErrFull = errors.New("console: too many live login tokens or sessions")
)

// Options configures a Console; the zero value is the defaults.
type Options struct {
	TokenTTL    time.Duration
	SessionTTL  time.Duration
	MaxTokens   int
	MaxSessions int
	// Now is the clock of expiry; nil means time.Now.
	Now func() time.Time
}

// Login is a minted login token.
type Login struct {
	Token     string
	SPIFFEID  spiffeid.ID
	ExpiresAt time.Time
}

// Session is a console session. ID is the cookie's value; it is returned
// once, when the session opens, and empty in the Session of a Lookup.
type Session struct {
	ID        string
	SPIFFEID  spiffeid.ID
	CSRFToken string
	ExpiresAt time.Time
}

type digest [sha256.Size]byte

type login struct {
	id      spiffeid.ID
	expires time.Time
}

type session struct {
	id      spiffeid.ID
	csrf    string
	expires time.Time
}

// Console holds the live login tokens and sessions. It is safe for
// concurrent use.
type Console struct {
	opts Options

	mu       sync.Mutex
	tokens   map[digest]login
	sessions map[digest]session
}

// New returns a Console with opts.
func New(opts Options) (*Console, error) {
	switch {
	case opts.TokenTTL < 0, opts.SessionTTL < 0:
		return nil, fmt.Errorf("console: negative lifetime (token %s, session %s)", opts.TokenTTL, opts.SessionTTL)
	case opts.MaxTokens < 0, opts.MaxSessions < 0:
		return nil, fmt.Errorf("console: negative bound (tokens %d, sessions %d)", opts.MaxTokens, opts.MaxSessions)
	}
	if opts.TokenTTL == 0 {
		opts.TokenTTL = DefaultTokenTTL
	}
	if opts.SessionTTL == 0 {
		opts.SessionTTL = DefaultSessionTTL
	}
	if opts.MaxTokens == 0 {
		opts.MaxTokens = DefaultMaxTokens
	}
	if opts.MaxSessions == 0 {
		opts.MaxSessions = DefaultMaxSessions
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &Console{opts: opts, tokens: map[digest]login{}, sessions: map[digest]session{}}, nil
}

// SessionTTL is the absolute lifetime of a session.
func (c *Console) SessionTTL() time.Duration { return c.opts.SessionTTL }

// NewLogin mints a one-time login token for id.
func (c *Console) NewLogin(id spiffeid.ID) (Login, error) {
	if id.IsZero() {
		return Login{}, errors.New("console: a login needs a SPIFFE ID")
	}
	tok, err := newSecret()
	if err != nil {
		return Login{}, err
	}
	now := c.opts.Now()
	l := login{id: id, expires: now.Add(c.opts.TokenTTL)}
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.tokens) >= c.opts.MaxTokens {
		sweep(c.tokens, now, func(l login) time.Time { return l.expires })
		if len(c.tokens) >= c.opts.MaxTokens {
			return Login{}, ErrFull
		}
	}
	c.tokens[hash(tok)] = l
	return Login{Token: tok, SPIFFEID: id, ExpiresAt: l.expires}, nil
}

// Valid reports whether token could be redeemed now, without redeeming it:
// the sign-in page tells a dead link at once.
func (c *Console) Valid(token string) bool {
	now := c.opts.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	l, ok := c.tokens[hash(token)]
	return ok && now.Before(l.expires)
}

// Redeem spends token and opens a session for the SPIFFE ID it was minted
// for. The token is gone afterwards whatever the outcome, so a second use
// fails even when the first could not open a session.
func (c *Console) Redeem(token string) (Session, error) {
	id, err := newSecret()
	if err != nil {
		return Session{}, err
	}
	csrf, err := newSecret()
	if err != nil {
		return Session{}, err
	}
	now := c.opts.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	key := hash(token)
	l, ok := c.tokens[key]
	delete(c.tokens, key)
	if !ok || !now.Before(l.expires) {
		return Session{}, ErrInvalidToken
	}
	if len(c.sessions) >= c.opts.MaxSessions {
		sweep(c.sessions, now, func(s session) time.Time { return s.expires })
		if len(c.sessions) >= c.opts.MaxSessions {
			return Session{}, ErrFull
		}
	}
	s := session{id: l.id, csrf: csrf, expires: now.Add(c.opts.SessionTTL)}
	c.sessions[hash(id)] = s
	return Session{ID: id, SPIFFEID: s.id, CSRFToken: s.csrf, ExpiresAt: s.expires}, nil
}

// Lookup returns the live session whose cookie value is id.
func (c *Console) Lookup(id string) (Session, bool) {
	if id == "" {
		return Session{}, false
	}
	now := c.opts.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	key := hash(id)
	s, ok := c.sessions[key]
	if !ok {
		return Session{}, false
	}
	if !now.Before(s.expires) {
		delete(c.sessions, key)
		return Session{}, false
	}
	return Session{SPIFFEID: s.id, CSRFToken: s.csrf, ExpiresAt: s.expires}, true
}

// End ends the session whose cookie value is id, reporting whether it was
// live.
func (c *Console) End(id string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	key := hash(id)
	_, ok := c.sessions[key]
	delete(c.sessions, key)
	return ok
}

// Sweep drops expired tokens and sessions. The console also sweeps when it
// reaches a bound; calling Sweep now and then keeps memory low in between.
func (c *Console) Sweep() {
	now := c.opts.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	sweep(c.tokens, now, func(l login) time.Time { return l.expires })
	sweep(c.sessions, now, func(s session) time.Time { return s.expires })
}

// Len returns the numbers of live-or-unswept tokens and sessions.
func (c *Console) Len() (tokens, sessions int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.tokens), len(c.sessions)
}

// CheckCSRF reports whether got is the session's CSRF token, in constant
// time.
func (s Session) CheckCSRF(got string) bool {
	if s.CSRFToken == "" || got == "" {
		return false
	}
	return subtle.ConstantTimeCompare([]byte(s.CSRFToken), []byte(got)) == 1
}

// Cookie is the cookie that carries a new session to the browser: only
// over HTTPS, out of reach of scripts, never sent by another site, for the
// session's lifetime.
func (c *Console) Cookie(s Session) *http.Cookie {
	return &http.Cookie{
		Name:     CookieName,
		Value:    s.ID,
		Path:     "/",
		MaxAge:   int(c.opts.SessionTTL / time.Second),
		Secure:   true,
		HttpOnly: true,
		SameSite: http.SameSiteStrictMode,
	}
}

// ClearCookie is the cookie that removes the session's cookie.
func ClearCookie() *http.Cookie {
	return &http.Cookie{
		Name:     CookieName,
		Value:    "",
		Path:     "/",
		MaxAge:   -1,
		Secure:   true,
		HttpOnly: true,
		SameSite: http.SameSiteStrictMode,
	}
}

// SessionCookie returns the console cookie's value in r, "" when none.
func SessionCookie(r *http.Request) string {
	ck, err := r.Cookie(CookieName)
	if err != nil {
		return ""
	}
	return ck.Value
}

func sweep[V any](m map[digest]V, now time.Time, expires func(V) time.Time) {
	for k, v := range m {
		if !now.Before(expires(v)) {
			delete(m, k)
		}
	}
}

func hash(s string) digest { return sha256.Sum256([]byte(s)) }

func newSecret() (string, error) {
	b := make([]byte, secretBytes)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("console: random: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}
