package identity

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/ztgate/ztgate/internal/debounce"
)

// fileDebounce is how long the files must stay quiet before a reload: a
// tool writing a certificate and then its key produces a burst of events,
// and reading between the two would only log a mismatch.
const fileDebounce = 200 * time.Millisecond

// FileSourceOptions configures NewFileSource.
type FileSourceOptions struct {
	// CertFile is the gateway's serving certificate chain in PEM, leaf
	// first, then any intermediates (the root may follow).
	CertFile string
	// KeyFile is the leaf's private key in PEM: PKCS#8, SEC 1 or PKCS#1.
	KeyFile string
	// BundleFile holds the CA certificates of the trust domain in PEM.
	BundleFile string
	// TrustDomain is the gateway's trust domain: the leaf's SPIFFE ID
	// must be in it, and the bundle is served for it alone.
	TrustDomain spiffeid.TrustDomain
	// Logger gets reload results and failures; nil discards them.
	Logger *slog.Logger
}

// FileSource is a Source reading the gateway's SVID and its trust
// domain's bundle from files an operator's PKI (cert-manager, Vault, a
// cron job with openssl) keeps up to date, and reloading them when they
// change.
//
// The directories of the files are watched rather than the files, so a
// file replaced by rename (what most tools and editors do) and a
// Kubernetes volume swapping its ..data symlink are seen like an in-place
// write. A reload is all or nothing: if any file is unreadable or the
// three do not make a valid state (a key that does not match the
// certificate, a bundle without a CA), the last good state stays in force
// and the failure is logged; the next change retries.
type FileSource struct {
	opts    FileSourceOptions
	log     *slog.Logger
	updated chan struct{}

	reloading sync.Mutex // one Reload at a time, so an older load never replaces a newer
	mu        sync.RWMutex
	state     *fileState
	closed    bool

	watcher   *fsnotify.Watcher
	watched   map[string]map[string]bool // directory -> base names in it
	stop      chan struct{}
	done      chan struct{}
	closeOnce sync.Once
}

var _ Source = (*FileSource)(nil)

// fileState is one consistent load of the three files.
type fileState struct {
	svid   *x509svid.SVID
	bundle *x509bundle.Bundle
}

// NewFileSource loads and validates the three files now, failing with an
// error that names the file and the reason, then watches them until Close.
func NewFileSource(opts FileSourceOptions) (*FileSource, error) {
	switch {
	case opts.TrustDomain.IsZero():
		return nil, errors.New("identity: files source: no trust domain")
	case opts.CertFile == "":
		return nil, errors.New("identity: files source: no cert_file")
	case opts.KeyFile == "":
		return nil, errors.New("identity: files source: no key_file")
	case opts.BundleFile == "":
		return nil, errors.New("identity: files source: no bundle_file")
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &FileSource{
		opts:    opts,
		log:     log,
		updated: make(chan struct{}, 1),
		watched: map[string]map[string]bool{},
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
	}
	// Watch first, then load: a change between the two is then either in
	// the load or reported by the watcher.
	if err := s.watch(); err != nil {
		return nil, err
	}
	state, err := s.load()
	if err != nil {
		_ = s.watcher.Close()
		return nil, err
	}
	s.state = state
	s.warnUnverified(state)
	go s.run()
	return s, nil
}

// watch adds a watch on each directory holding one of the files.
func (s *FileSource) watch() error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("identity: files source: %w", err)
	}
	for _, f := range []string{s.opts.CertFile, s.opts.KeyFile, s.opts.BundleFile} {
		abs, err := filepath.Abs(f)
		if err != nil {
			_ = w.Close()
			return fmt.Errorf("identity: files source: %s: %w", f, err)
		}
		dir, base := filepath.Split(abs)
		dir = filepath.Clean(dir)
		if s.watched[dir] == nil {
			if err := w.Add(dir); err != nil {
				_ = w.Close()
				return fmt.Errorf("identity: files source: watching the directory of %s: %w", f, err)
			}
			s.watched[dir] = map[string]bool{}
		}
		s.watched[dir][base] = true
	}
	s.watcher = w
	return nil
}

// run reloads after each burst of relevant events: once the directories
// have been quiet for fileDebounce, and at the latest four debounce periods
// after the first event of a burst, so a file rewritten without pause is
// still picked up.
func (s *FileSource) run() {
	defer close(s.done)
	defer s.watcher.Close()
	timer := debounce.New(fileDebounce)
	for {
		select {
		case <-s.stop:
			timer.Stop()
			return
		case ev, ok := <-s.watcher.Events:
			if !ok {
				return
			}
			if s.relevant(ev) {
				timer.Event()
			}
		case err, ok := <-s.watcher.Errors:
			if !ok {
				return
			}
			// An overflow loses events: reload to be sure.
			s.log.Warn("identity: watching the identity files", "err", err)
			timer.Event()
		case <-timer.C:
			timer.Fired()
			err := s.Reload()
			if err == nil || errors.Is(err, errFilesClosed) {
				continue
			}
			s.log.Error("identity: reloading the identity files failed; the last good certificate, key and bundle stay in force",
				"err", err)
			if nyv := (notYetValidError{}); errors.As(err, &nyv) {
				timer.After(time.Until(nyv.notBefore) + fileDebounce)
			}
		}
	}
}

// relevant reports whether ev may change one of the files: any event on
// one of their names (a chmod aside), and any on a name starting with
// "..", which is how Kubernetes volumes swap their contents.
func (s *FileSource) relevant(ev fsnotify.Event) bool {
	dir, base := filepath.Split(ev.Name)
	names := s.watched[filepath.Clean(dir)]
	if names == nil {
		return false
	}
	if strings.HasPrefix(base, "..") {
		return true
	}
	return names[base] && ev.Op != fsnotify.Chmod
}

// Reload reads the three files again. On success a changed state replaces
// the served one and Updated gets a value; an identical one changes
// nothing. On error nothing changes and the error names the file.
func (s *FileSource) Reload() error {
	s.reloading.Lock()
	defer s.reloading.Unlock()
	state, err := s.load()
	if err != nil {
		return err
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return errFilesClosed
	}
	changed := !state.equal(s.state)
	if changed {
		s.state = state
	}
	s.mu.Unlock()
	if !changed {
		s.log.Debug("identity: identity files reloaded, unchanged")
		return nil
	}
	leaf := state.svid.Certificates[0]
	s.log.Info("identity: identity files reloaded",
		"spiffe_id", state.svid.ID.String(), "serial", leaf.SerialNumber.Text(16),
		"not_after", leaf.NotAfter.UTC().Format(time.RFC3339), "bundle_authorities", len(state.bundle.X509Authorities()))
	s.warnUnverified(state)
	select {
	case s.updated <- struct{}{}:
	default:
	}
	return nil
}

func (a *fileState) equal(b *fileState) bool {
	if a == nil || b == nil {
		return a == b
	}
	return slices.EqualFunc(a.svid.Certificates, b.svid.Certificates, (*x509.Certificate).Equal) &&
		a.bundle.Equal(b.bundle)
}

// warnUnverified logs when the serving chain does not verify against the
// bundle. It is not an error: during a CA rotation the bundle may hold the
// new CA before the certificate is reissued, or the reverse, and clients
// may trust another bundle; but it is most often a mistake worth a line.
func (s *FileSource) warnUnverified(state *fileState) {
	if _, _, err := x509svid.Verify(state.svid.Certificates, state.bundle); err != nil {
		s.log.Warn("identity: the serving certificate does not verify against the bundle",
			"cert_file", s.opts.CertFile, "bundle_file", s.opts.BundleFile, "err", err)
	}
}

// load reads and validates the three files as one state.
func (s *FileSource) load() (*fileState, error) {
	chain, err := loadServingChain(s.opts.CertFile, s.opts.TrustDomain, time.Now())
	if err != nil {
		return nil, err
	}
	key, err := loadServingKey(s.opts.KeyFile, s.opts.CertFile, chain[0])
	if err != nil {
		return nil, err
	}
	// go-spiffe's own SVID rules as well (signing certificates in the
	// chain must be CAs, among others): what is served must be an SVID.
	svid, err := x509svid.ParseRaw(concatRaw(chain), mustPKCS8(key))
	if err != nil {
		return nil, fmt.Errorf("identity: cert_file %s: %w", s.opts.CertFile, err)
	}
	bundle, err := loadBundle(s.opts.BundleFile, s.opts.TrustDomain)
	if err != nil {
		return nil, err
	}
	return &fileState{svid: svid, bundle: bundle}, nil
}

// readPEMFile reads path for the config key named, keeping the error
// short: fs.PathError would repeat the path.
func readPEMFile(key, path string) ([]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return nil, fmt.Errorf("identity: %s %s: %w", key, path, err)
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, fmt.Errorf("identity: %s %s: %w", key, path, errEmptyFile)
	}
	return data, nil
}

var errFilesClosed = errors.New("identity: files source is closed")

// errEmptyFile is most often a file caught while being written; the next
// event reloads it.
var errEmptyFile = errors.New("the file is empty")

// loadServingChain reads the serving chain and checks its leaf is an
// X.509-SVID of td that can serve now.
func loadServingChain(path string, td spiffeid.TrustDomain, now time.Time) ([]*x509.Certificate, error) {
	data, err := readPEMFile("cert_file", path)
	if err != nil {
		return nil, err
	}
	chain, err := parseCertificatesPEM(data)
	if err != nil {
		return nil, fmt.Errorf("identity: cert_file %s: %w", path, err)
	}
	if err := checkServingLeaf(chain[0], td, now); err != nil {
		return nil, fmt.Errorf("identity: cert_file %s: %w", path, err)
	}
	return chain, nil
}

func checkServingLeaf(leaf *x509.Certificate, td spiffeid.TrustDomain, now time.Time) error {
	id, err := x509svid.IDFromCert(leaf)
	if err != nil {
		return fmt.Errorf("the first certificate has no usable SPIFFE ID (one spiffe:// URI SAN): %w", err)
	}
	switch {
	case !id.MemberOf(td):
		return fmt.Errorf("the leaf's SPIFFE ID %s is not in trust domain %q", id, td)
	case id.Path() == "":
		return fmt.Errorf("the leaf's SPIFFE ID %s has an empty path", id)
	case leaf.IsCA:
		return errors.New("the first certificate is a CA certificate; it must be the gateway's leaf certificate (CA:FALSE)")
	case leaf.KeyUsage&x509.KeyUsageDigitalSignature == 0:
		return errors.New("the leaf lacks the digitalSignature key usage")
	case leaf.KeyUsage&(x509.KeyUsageCertSign|x509.KeyUsageCRLSign) != 0:
		return errors.New("the leaf has the keyCertSign or cRLSign key usage, which an X.509-SVID must not")
	case now.After(leaf.NotAfter):
		return fmt.Errorf("the leaf expired at %s", leaf.NotAfter.UTC().Format(time.RFC3339))
	case now.Before(leaf.NotBefore):
		return notYetValidError{leaf.NotBefore}
	}
	return nil
}

// notYetValidError is a certificate issued ahead of this host's clock (a
// CA that does not backdate, a little clock skew). No file event will come
// when it becomes valid, so the watcher retries at NotBefore.
type notYetValidError struct{ notBefore time.Time }

func (e notYetValidError) Error() string {
	return "the leaf is not valid before " + e.notBefore.UTC().Format(time.RFC3339)
}

// loadServingKey reads the key and checks it is the leaf's.
func loadServingKey(path, certPath string, leaf *x509.Certificate) (crypto.Signer, error) {
	data, err := readPEMFile("key_file", path)
	if err != nil {
		return nil, err
	}
	key, err := parsePrivateKeyPEM(data)
	if err != nil {
		return nil, fmt.Errorf("identity: key_file %s: %w", path, err)
	}
	pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(leaf.PublicKey) {
		return nil, fmt.Errorf("identity: key_file %s does not match the certificate in cert_file %s", path, certPath)
	}
	return key, nil
}

// loadBundle reads the trust domain's CA certificates. An empty bundle
// would trust nobody, a leaf in it would be a trust anchor that is no CA:
// both are refused, never served.
func loadBundle(path string, td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	data, err := readPEMFile("bundle_file", path)
	if errors.Is(err, errEmptyFile) {
		return nil, fmt.Errorf("%w; it must hold at least one CA certificate", err)
	}
	if err != nil {
		return nil, err
	}
	certs, err := ParseBundlePEM(data)
	if err != nil {
		return nil, fmt.Errorf("identity: bundle_file %s: %w", path, err)
	}
	return x509bundle.FromX509Authorities(td, certs), nil
}

// GetX509SVID is the serving SVID of the last good load. The caller gets
// its own copy of the chain slice.
func (s *FileSource) GetX509SVID() (*x509svid.SVID, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return nil, errFilesClosed
	}
	svid := *s.state.svid
	svid.Certificates = slices.Clone(svid.Certificates)
	return &svid, nil
}

// GetX509BundleForTrustDomain is a copy of the bundle of the last good
// load for the configured trust domain; any other is an error.
func (s *FileSource) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	switch {
	case s.closed:
		return nil, errFilesClosed
	case td != s.opts.TrustDomain:
		return nil, fmt.Errorf("identity: the files source holds no bundle for trust domain %q", td)
	}
	return s.state.bundle.Clone(), nil
}

// Updated has a value after each reload that changed the SVID or the
// bundle.
func (s *FileSource) Updated() <-chan struct{} { return s.updated }

// Close stops watching and waits for the watcher to end. The source
// serves nothing after.
func (s *FileSource) Close() error {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.closed = true
		s.mu.Unlock()
		close(s.stop)
		<-s.done
	})
	return nil
}
