package console

import (
	"bytes"
	"html/template"
	"net/http"
)

// The sign-in pages are rendered here, not shipped as static assets: the
// form carries the login token of the link that was opened, and a page that
// read it from its own URL would need a script for that.
var pageTmpl = template.Must(template.New("page").Parse(`<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>ztgate console: {{.Title}}</title>
<link rel="icon" href="/ui/favicon.svg" type="image/svg+xml">
<link rel="stylesheet" href="/ui/style.css">
</head>
<body class="signin">
<main class="signin-box" id="signin">
<h1>ztgate console</h1>
{{if .Token}}<p>Sign in as the identity that created this link. The link works once, for a few minutes.</p>
<form method="post" action="/ui/login">
<input type="hidden" name="token" value="{{.Token}}">
<button type="submit" id="signin-button">Sign in</button>
</form>
{{else}}<p class="error" id="signin-error">{{.Message}}</p>
<p>Run <code>ztgate dashboard</code> with an admin identity for a new sign-in link.</p>
{{end}}</main>
</body>
</html>
`))

type pageData struct {
	Title   string
	Token   string
	Message string
}

// LoginPage answers the sign-in page for token: a form that posts it.
func LoginPage(w http.ResponseWriter, token string) {
	writePage(w, http.StatusOK, pageData{Title: "sign in", Token: token})
}

// ErrorPage answers status with a page saying msg, for a browser that
// followed a link (a used or expired one).
func ErrorPage(w http.ResponseWriter, status int, msg string) {
	writePage(w, status, pageData{Title: "not signed in", Message: msg})
}

func writePage(w http.ResponseWriter, status int, d pageData) {
	var buf bytes.Buffer
	if err := pageTmpl.Execute(&buf, d); err != nil {
		// The template is fixed and its data are strings: this does not
		// happen; a bare status is still a safe answer.
		status = http.StatusInternalServerError
		buf.Reset()
	}
	h := w.Header()
	SecurityHeaders(h)
	h.Set("Content-Type", "text/html; charset=utf-8")
	// The page of a login link holds the token: no cache may keep it.
	h.Set("Cache-Control", "no-store")
	h.Del("Content-Length")
	w.WriteHeader(status)
	_, _ = w.Write(buf.Bytes())
}
