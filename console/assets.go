package console

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"io/fs"
	"net/http"
	"path"
	"strings"
	"sync"
	"time"
)

// ui holds the console's pages, scripts and styles. They are the same for
// every caller and carry no data: the pages fetch everything from the API
// with the session cookie.
//
//go:embed ui
var ui embed.FS

// UIPrefix is the path the assets are served under.
const UIPrefix = "/ui/"

// ContentSecurityPolicy is sent with every console page and asset: scripts,
// styles and fetches from the gateway itself only (no inline script, no
// CDN), and no framing by another site (clickjacking).
const ContentSecurityPolicy = "default-src 'self'; frame-ancestors 'none'"

// contentTypes are the asset types served; anything else is not an asset.
// Set here rather than taken from the system's MIME table, which differs
// between hosts.
var contentTypes = map[string]string{
	".html":  "text/html; charset=utf-8",
	".js":    "text/javascript; charset=utf-8",
	".css":   "text/css; charset=utf-8",
	".svg":   "image/svg+xml",
	".png":   "image/png",
	".ico":   "image/x-icon",
	".json":  "application/json",
	".woff2": "font/woff2",
	".txt":   "text/plain; charset=utf-8",
}

type asset struct {
	body  []byte
	ctype string
	etag  string
}

var (
	assetsOnce sync.Once
	assets     map[string]asset
)

// loadAssets reads the embedded files once; their ETags are content hashes,
// so a browser revalidates cheaply and never keeps an old script after an
// upgrade.
func loadAssets() map[string]asset {
	assetsOnce.Do(func() {
		assets = map[string]asset{}
		_ = fs.WalkDir(ui, "ui", func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return nil
			}
			ctype, ok := contentTypes[path.Ext(p)]
			if !ok {
				return nil
			}
			b, err := ui.ReadFile(p)
			if err != nil {
				return nil
			}
			sum := sha256.Sum256(b)
			assets[strings.TrimPrefix(p, "ui/")] = asset{body: b, ctype: ctype, etag: `"` + hex.EncodeToString(sum[:12]) + `"`}
			return nil
		})
	})
	return assets
}

// SecurityHeaders sets the headers every console response carries.
func SecurityHeaders(h http.Header) {
	h.Set("Content-Security-Policy", ContentSecurityPolicy)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Referrer-Policy", "no-referrer")
}

// Assets serves the embedded files under UIPrefix: UIPrefix itself is
// index.html. Anything else (a directory, an unknown file, another path)
// is 404, with the same security headers.
func Assets() http.Handler {
	files := loadAssets()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		SecurityHeaders(w.Header())
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		name, ok := strings.CutPrefix(r.URL.Path, UIPrefix)
		if !ok {
			http.NotFound(w, r)
			return
		}
		if name == "" {
			name = "index.html"
		}
		a, ok := files[name]
		if !ok {
			http.NotFound(w, r)
			return
		}
		h := w.Header()
		h.Set("Content-Type", a.ctype)
		h.Set("ETag", a.etag)
		// Revalidate every time: the ETag makes that a 304, and an
		// upgraded gateway's scripts are picked up at once.
		h.Set("Cache-Control", "no-cache")
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(a.body))
	})
}
