package api

import (
	"fmt"
	"net/url"
	"strings"
)

// checkPath refuses a request path that is not the one spelling of itself
// the API accepts, before anything routes it or decides on it. The router
// unescapes segments and redirects to cleaned paths; a policy that compared
// paths would see another string than the one routed (/v1/%70olicy is
// /v1/policy to the router). Accepting only the canonical spelling makes
// the two the same string. No route needs more: the API's names are
// letters, digits, '.', '_' and '-'.
//
// Refused: a path that does not start with '/'; a percent-escape that
// Go's own encoding of the decoded path would not write (an escaped
// unreserved character like %70, an escaped '/' or '+', a lower-case
// escape); an empty segment ("//", a trailing '/'); a "." or ".." segment,
// escaped or not. "/" alone is accepted (it routes nowhere), and "/ui/".
func checkPath(u *url.URL) error {
	p := u.Path
	if p == "" || p[0] != '/' {
		return fmt.Errorf("request path %s must start with '/'", clip(u.EscapedPath()))
	}
	if esc, want := u.EscapedPath(), (&url.URL{Path: p}).EscapedPath(); esc != want {
		return fmt.Errorf("request path %s is not canonical: send it as %s (no percent-escapes where none are needed, no escaped '/')",
			clip(esc), clip(want))
	}
	if p == "/" || p == "/ui/" {
		// "/ui/" is the console's start page, and a browser's
		// relative links (style.css) need the trailing slash.
		return nil
	}
	for seg := range strings.SplitSeq(p[1:], "/") {
		switch seg {
		case "":
			return fmt.Errorf("request path %s is not canonical: empty segment (\"//\" or a trailing '/')", clip(u.EscapedPath()))
		case ".", "..":
			return fmt.Errorf("request path %s is not canonical: %q segment", clip(u.EscapedPath()), seg)
		}
	}
	return nil
}
