// Package app assembles a running ztgate from a Config: the built-in CA, the
// device registry, the policy engine over its watched directory, the
// decision log and metrics around every decision, the MQTT gateway and the
// admin API. It is the one place that wires the packages together, used by
// the ztgate command and by the end-to-end tests, so that both run the same
// thing.
package app

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ztgate/ztgate/api"
	"github.com/ztgate/ztgate/bridge"
	"github.com/ztgate/ztgate/cluster"
	"github.com/ztgate/ztgate/decisionlog"
	"github.com/ztgate/ztgate/gateway"
	"github.com/ztgate/ztgate/identity"
	"github.com/ztgate/ztgate/internal/brokerstore"
	"github.com/ztgate/ztgate/internal/brokerview"
	"github.com/ztgate/ztgate/internal/buildinfo"
	"github.com/ztgate/ztgate/internal/decisionchain"
	"github.com/ztgate/ztgate/metrics"
	"github.com/ztgate/ztgate/policy"
	"github.com/ztgate/ztgate/registry"
)

// The dev admin identity: the registry device the ztgate command acts as.
const (
	AdminDeviceName = "admin-dev"
	AdminIDPath     = "/admin/dev"
	// AdminSVIDTTL is long because the dev admin SVID is written once and
	// reused across restarts; delete DataDir/admin to get a fresh one.
	AdminSVIDTTL = 365 * 24 * time.Hour
	// adminRenewBefore is how close to expiry a start replaces the admin SVID.
	adminRenewBefore = 7 * 24 * time.Hour
	// ServerIDPath is the path of the gateway's own SPIFFE ID.
	ServerIDPath = "/ztgate"
)

// registryMetricsInterval is the least time between two refreshes of the
// registry gauges: an import of thousands of devices is thousands of
// changes, and counting once a second is enough for a gauge.
const registryMetricsInterval = time.Second

// App is a running ztgate. Close stops it.
type App struct {
	cfg       Config
	log       *slog.Logger
	td        spiffeid.TrustDomain
	adminDir  string
	policyDir string

	ca       *identity.CA // nil unless the identity source is builtin
	src      identity.Source
	fed      *identity.Federation // nil without a partner fetched from a bundle endpoint
	bundles  x509bundle.Source    // every served trust domain's bundle source, as the verifier asks it
	verifier *identity.Verifier
	reg      *registry.Store
	engine   *policy.Engine
	cache    *policy.Cache
	decider  policy.Decider // what the gateway and the API call: log(metrics(cache(engine)))
	dlog     *decisionlog.Logger
	m        *metrics.Metrics
	gw       *gateway.Gateway
	store    *brokerstore.Store // nil when storage is off
	api      *api.Server
	prom     *prometheus.Registry
	node     *cluster.Node // nil unless cfg.Cluster is set
	psync    *cluster.PolicySync
	fabric   *cluster.Fabric
	admin    *cluster.NodeAdmin       // nil unless cfg.Cluster is set
	link     gateway.ClusterLink      // nil on a single node
	sessions gateway.SessionDirectory // nil on a single node
	bridges  *bridge.Manager          // nil without bridges

	// stop ends the background goroutines (policy watch, registry
	// metrics); wg waits for them.
	stop context.CancelFunc
	wg   sync.WaitGroup

	closeOnce sync.Once
	closeErr  error
}

// Start validates cfg, opens or creates everything under cfg.DataDir and
// starts the MQTT gateway and the admin API. ctx bounds the start only; the
// returned App runs until Close. On any failure, whatever was opened is
// closed again before the error is returned.
func Start(ctx context.Context, cfg Config) (_ *App, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	a := &App{cfg: cfg, log: cfg.Logger}
	if a.log == nil {
		a.log = cfg.NewLogger(os.Stderr)
	}
	defer func() {
		if err != nil {
			_ = a.Close()
		}
	}()

	a.td, err = spiffeid.TrustDomainFromString(cfg.TrustDomain)
	if err != nil {
		return nil, fmt.Errorf("app: trust domain: %w", err)
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("app: data dir: %w", err)
	}

	// The source is the bundle source of the own trust domain, asked at
	// every verification, and the federation (or, for partners SPIRE
	// federates, the Workload API) that of each partner's.
	if err := a.openSource(ctx); err != nil {
		return nil, err
	}
	router, err := a.openFederation()
	if err != nil {
		return nil, err
	}
	a.bundles = router
	if a.verifier, err = identity.NewVerifierFromSource(router, cfg.ServedTrustDomains()...); err != nil {
		return nil, fmt.Errorf("app: %w", err)
	}
	// The background goroutines (federation refreshers, watchers) run
	// until Close; the refreshers start now, so that a partner's bundle
	// may be there by the time the listeners open.
	bg, stop := context.WithCancel(context.Background())
	a.stop = stop
	if a.fed != nil {
		a.fed.Start(bg)
	}

	// The cluster's streams and buckets are set up within one start
	// timeout: the calls that make them retry until it ends.
	cctx := ctx
	if cfg.Cluster != nil {
		var cancel context.CancelFunc
		cctx, cancel = context.WithTimeout(ctx, cfg.Cluster.EffectiveStartTimeout())
		defer cancel()
		if err := a.openCluster(cctx); err != nil {
			return nil, err
		}
		if err := a.openReplicatedRegistry(cctx); err != nil {
			return nil, err
		}
	} else if a.reg, err = registry.Open(filepath.Join(cfg.DataDir, "registry.db")); err != nil {
		return nil, fmt.Errorf("app: %w", err)
	}
	// Only the built-in CA can sign the dev admin's SVID; with an external
	// PKI or SPIRE, the first admin is one of theirs (bootstrap_admins).
	if a.ca != nil {
		a.adminDir = filepath.Join(cfg.DataDir, "admin")
		if err := a.ensureAdmin(); err != nil {
			return nil, err
		}
	}
	if err := a.ensureBootstrapAdmins(); err != nil {
		return nil, err
	}

	a.prom = prometheus.NewRegistry()
	a.prom.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	a.m = metrics.New(a.prom)
	if cfg.DecisionLog.On() {
		a.dlog, err = decisionlog.New(decisionlog.Config{
			Path:              cfg.DecisionLog.Path,
			MaxSizeMB:         cfg.DecisionLog.MaxSizeMB,
			MaxBackups:        cfg.DecisionLog.MaxBackups,
			SampleAllow:       cfg.DecisionLog.SampleAllow,
			ErrorLog:          a.log.With("component", "decisionlog"),
			AggregateInterval: cfg.DecisionLog.aggregateInterval(),
		})
		if err != nil {
			return nil, fmt.Errorf("app: %w", err)
		}
	}

	a.policyDir = cfg.EffectivePolicyDir()
	if cfg.PolicyDir == "" {
		seeded, err := seedPolicyDir(a.policyDir)
		if err != nil {
			return nil, err
		}
		if seeded {
			a.log.Info("policy directory created with the default policy", "dir", a.policyDir)
		}
	}
	if a.engine, err = a.newEngine(); err != nil {
		return nil, err
	}
	if a.node != nil {
		// Before anything decides: the cluster's revision wins over
		// what this node's directory held.
		if err := a.syncPolicy(cctx, bg); err != nil {
			return nil, err
		}
	}
	// The cache answers repeated decisions of a session (publish and
	// delivery, twice per message) without the engine, when the revision
	// in force allows it; decisionchain says why it, the metrics and the
	// decision log go in the order they do.
	a.decider, a.cache, err = decisionchain.New(decisionchain.Options{
		Engine:      a.engine,
		Cache:       policy.CacheOptions{MaxBytes: cfg.DecisionCacheMaxBytes},
		Metrics:     a.m,
		DecisionLog: a.dlog,
	})
	if err != nil {
		return nil, fmt.Errorf("app: %w", err)
	}

	// The steps above may take a while on a slow disk or a large policy;
	// do not open listeners for a caller that has given up.
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("app: start: %w", err)
	}

	if cfg.Storage.Enabled {
		// A file of its own, not a bucket in registry.db: see
		// internal/brokerstore.
		a.store, err = brokerstore.Open(brokerstore.Options{
			Path:   filepath.Join(cfg.DataDir, brokerstore.FileName),
			Fsync:  cfg.Storage.Fsync,
			Logger: a.log,
		})
		if err != nil {
			return nil, fmt.Errorf("app: %w", err)
		}
	}

	if a.node != nil {
		if err := a.openSessionDirectory(cctx); err != nil {
			return nil, err
		}
		if err := a.openFabric(cctx); err != nil {
			return nil, err
		}
	}
	if a.bridges, err = a.openBridges(); err != nil {
		return nil, err
	}
	gw, err := gateway.New(gateway.Config{
		Addr:     cfg.MQTTAddr,
		TLS:      identity.ServerTLSConfigFromSource(a.src, a.verifier),
		Verifier: a.verifier,
		Registry: a.reg,
		Decider:  a.decider,
		Logger:   a.log,
		Metrics:  a.m,

		KeepRetainedOnRevoke: !cfg.ClearRetainedOnRevoke,
		Store:                a.store,
		Sessions:             a.sessions,
		Cluster:              a.link,
		MaxPacketSize:        cfg.Limits.MaxPacketSize,
		MaxConnectPacketSize: cfg.Limits.MaxConnectPacketSize,
		Limits:               cfg.Limits.gatewayLimits(),
		LimitsPolicy:         a.engine,
		Egress:               egress(a.bridges),
	})
	if err != nil {
		return nil, fmt.Errorf("app: %w", err)
	}
	a.gw = gw
	// A new revision applies to live sessions too: each is checked again,
	// losing what the policy no longer grants.
	a.engine.OnActivate(func(st policy.Status) { gw.Reevaluate("policy revision " + shortRev(st.Revision)) })
	if err := gw.Start(); err != nil {
		return nil, listenError("MQTT", cfg.MQTTAddr, err)
	}
	if a.bridges != nil {
		// After the gateway: inbound messages are published into it.
		if err := a.bridges.Start(bg); err != nil {
			return nil, fmt.Errorf("app: %w", err)
		}
	}
	if a.fabric != nil {
		// The other nodes' messages, until Close stops bg, before the
		// gateway closes.
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			if err := runClusterDelivery(bg, a.fabric, gw); err != nil && bg.Err() == nil {
				a.log.Error("cluster: messages of the other nodes no longer delivered here", "err", err)
			}
		}()
	}

	sessions, kick, err := a.serveAdmin(gw)
	if err != nil {
		return nil, err
	}
	bundleEndpoint, err := a.bundleEndpoint()
	if err != nil {
		return nil, err
	}
	served := cfg.ServedTrustDomains()
	con, sampler, denials, err := a.consoleParts(cfg.Console)
	if err != nil {
		return nil, err
	}
	srv, err := api.New(api.Config{
		Addr:           cfg.APIAddr,
		TLS:            identity.APIServerTLSConfigFromSource(a.src, a.verifier),
		Registry:       a.reg,
		CA:             a.ca,
		TrustDomain:    a.td,
		TrustDomains:   func() []spiffeid.TrustDomain { return served },
		IdentitySource: cfg.Identity.Source,
		BundleEndpoint: bundleEndpoint,
		Verifier:       a.verifier,
		Decider:        a.decider,
		Policy:         a.engine,
		Ready:          a.ready,
		Sessions:       sessions,
		SVIDTTL:        cfg.SVIDTTL,
		Logger:         a.log,
		Metrics:        a.prom,
		Console:        con,
		Sampler:        sampler,
		Denials:        denials,

		ListRetained: func(filter string, limit int) ([]brokerview.RetainedMessage, error) {
			return gw.RetainedMessages(filter, limit), nil
		},
		DeleteRetained: func(topic string) (bool, error) { return gw.DeleteRetained(topic), nil },
		KickSessions:   kick,
		Bridges:        a.bridgeStatus,
	})
	if err != nil {
		return nil, fmt.Errorf("app: %w", err)
	}
	a.api = srv
	if err := srv.Start(); err != nil {
		return nil, listenError("API", cfg.APIAddr, err)
	}

	if cfg.PolicyWatch {
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			if err := policy.Watch(bg, a.engine, a.policyDir, 0, a.log); err != nil && bg.Err() == nil {
				a.log.Error("policy directory no longer watched; changes need a restart", "dir", a.policyDir, "err", err)
			}
		}()
	}
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		a.watchRegistry(bg)
	}()
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		a.watchIdentity(bg)
	}()

	build := buildinfo.Get()
	a.log.Info("ztgate started", "version", build.Version, "commit", build.Commit,
		"mqtt", a.MQTTAddr().String(), "api", a.APIAddr().String(),
		"trust_domain", a.td.Name(), "identity_source", cfg.Identity.Source, "data_dir", cfg.DataDir, "policy_dir", a.policyDir,
		"policy_revision", a.engine.Revision())
	return a, nil
}

// listenError names the listener and its address; a port already taken is
// the common case and gets a message of its own.
func listenError(what, addr string, err error) error {
	if errors.Is(err, syscall.EADDRINUSE) {
		return fmt.Errorf("app: %s listen address %s: %w", what, addr, syscall.EADDRINUSE)
	}
	return fmt.Errorf("app: %s listener on %s: %w", what, addr, err)
}

// newEngine compiles the policy directory (its tests must pass) and hooks
// the engine's activations and refusals to the metrics.
func (a *App) newEngine() (*policy.Engine, error) {
	fsys, err := policy.LoadDir(a.policyDir)
	if err != nil {
		return nil, fmt.Errorf("app: %w", err)
	}
	eng, err := policy.NewEngine(fsys, policy.Options{
		Timeout:       a.cfg.PolicyTimeout,
		Logger:        a.log,
		Data:          PolicyData(a.cfg.TrustDomain),
		AllowBuiltins: a.cfg.PolicyAllowBuiltins,
	})
	if err != nil {
		return nil, fmt.Errorf("app: %w", err)
	}
	// The same files again: nothing is compiled or tested twice; this
	// makes the directory the one uploaded modules are written to.
	if err := eng.LoadDir(a.policyDir); err != nil {
		return nil, fmt.Errorf("app: %w", err)
	}
	// The engine logs activations and refusals itself.
	a.m.PolicyActivated(eng.Revision())
	a.logCacheable(eng)
	eng.OnActivate(func(st policy.Status) {
		a.m.PolicyActivated(st.Revision)
		a.logCacheable(eng)
	})
	eng.OnReject(func(error) { a.m.PolicyActivationFailed() })
	return eng, nil
}

// logCacheable tells when the decisions of the revision in force cannot be
// cached, and why: such a policy costs a full evaluation per message and
// per delivery.
func (a *App) logCacheable(eng *policy.Engine) {
	refs := eng.InputRefs()
	if refs.Cacheable() {
		a.log.Debug("policy decisions are cached", "revision", shortRev(eng.Revision()), "input", refs.Paths)
		return
	}
	a.log.Info("policy decisions are not cached: every decision is evaluated",
		"revision", shortRev(eng.Revision()), "why", refs.Uncacheable)
}

// ready is the part of the API's readiness check the API cannot see for
// itself (it checks the registry and the policy revision): the MQTT
// listener is open.
func (a *App) ready() error {
	if a.gw == nil || a.gw.Addr() == nil {
		return errors.New("MQTT listener not open")
	}
	if a.node != nil {
		// A node cut off from the majority refuses CONNECTs (a session
		// claim needs a quorum) and registry writes: a load balancer
		// should send devices to the others.
		ctx, cancel := context.WithTimeout(context.Background(), readyQuorumTimeout)
		defer cancel()
		if err := a.node.CheckQuorum(ctx); err != nil {
			return err // "cluster: no quorum: ..."
		}
	}
	return nil
}

// readyQuorumTimeout bounds the quorum probe of one readiness check.
const readyQuorumTimeout = 2 * time.Second

// watchRegistry keeps the registry gauges current. (Revocations are
// counted by the gateway, which sees the sessions they end.)
func (a *App) watchRegistry(ctx context.Context) {
	for {
		ch := a.reg.Watch()
		a.refreshRegistryMetrics()
		select {
		case <-ctx.Done():
			return
		case <-ch:
		}
		// Coalesce a burst of changes (an import) into one count.
		select {
		case <-ctx.Done():
			return
		case <-time.After(registryMetricsInterval):
		}
	}
}

func (a *App) refreshRegistryMetrics() {
	devs, err := a.reg.List()
	if err != nil {
		return // closed: the app is stopping
	}
	counts := map[string]int{}
	for _, d := range devs {
		counts[string(d.Status)]++
	}
	a.m.SetRegistryCounts(counts)
}

// shortRev is a revision hash cut to the length logs show.
func shortRev(rev string) string {
	if len(rev) > 12 {
		return rev[:12]
	}
	return rev
}

// PolicyData is the base document a policy may read next to its input: the
// served trust domain as data.ztgate.config.trust_domain, so a policy need
// not hard-code it. `ztgate policy eval` passes the same.
func PolicyData(td string) map[string]any {
	return map[string]any{"ztgate": map[string]any{"config": map[string]any{"trust_domain": td}}}
}

// AdminID is the SPIFFE ID of the dev admin identity in td.
func AdminID(td spiffeid.TrustDomain) spiffeid.ID { return spiffeid.RequireFromPath(td, AdminIDPath) }

// ensureAdmin enrolls the dev admin identity and writes its SVID to the
// admin dir unless a usable one is already there, so restarts keep the
// credentials the ztgate command already uses.
func (a *App) ensureAdmin() error {
	id := AdminID(a.td)
	d, err := a.reg.Get(AdminDeviceName)
	switch {
	case errors.Is(err, registry.ErrNotFound):
		d, err = a.reg.Create(registry.Device{
			Name:     AdminDeviceName,
			SPIFFEID: id.String(),
			Labels:   map[string]string{"role": "admin"},
			Status:   registry.StatusActive,
		})
		if errors.Is(err, registry.ErrExists) {
			// Another node of the cluster, starting at the same time,
			// made it first.
			d, err = a.reg.Get(AdminDeviceName)
		}
		if err != nil {
			return fmt.Errorf("app: enroll %s: %w", AdminDeviceName, err)
		}
	case err != nil:
		return fmt.Errorf("app: registry: %w", err)
	}
	if d.SPIFFEID != id.String() {
		return fmt.Errorf("app: device %s has SPIFFE ID %s, want %s (was %s made for another trust domain?)",
			AdminDeviceName, d.SPIFFEID, id, a.cfg.DataDir)
	}
	if d.Status != registry.StatusActive {
		a.log.Warn("the dev admin identity is not active; the ztgate command will be refused", "device", AdminDeviceName, "status", d.Status)
	}

	if err := a.checkAdminSVID(id); err == nil {
		return nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		a.log.Info("issuing a new dev admin SVID", "reason", err.Error())
	}
	chain, key, err := a.ca.IssueSVID(id, AdminSVIDTTL)
	if err != nil {
		return fmt.Errorf("app: admin SVID: %w", err)
	}
	if err := identity.WriteSVIDDir(a.adminDir, chain, key, a.ca.BundlePEM()); err != nil {
		return fmt.Errorf("app: admin SVID: %w", err)
	}
	return nil
}

// checkAdminSVID reports why the admin dir does not hold a usable SVID for
// id under the current CA (nil when it does). One close to expiry counts as
// unusable, so a restart renews it before the device commands start failing.
func (a *App) checkAdminSVID(id spiffeid.ID) error {
	raw, err := os.ReadFile(filepath.Join(a.adminDir, identity.SVIDFile))
	if err != nil {
		return err
	}
	for _, f := range []string{identity.SVIDKeyFile, identity.BundleFile} {
		if _, err := os.Stat(filepath.Join(a.adminDir, f)); err != nil {
			return err
		}
	}
	chain, err := parseCerts(raw)
	if err != nil {
		return err
	}
	got, err := a.verifier.Verify(chain)
	if err != nil {
		return err
	}
	if got != id {
		return fmt.Errorf("admin SVID is for %s, want %s", got, id)
	}
	if time.Until(chain[0].NotAfter) < adminRenewBefore {
		return fmt.Errorf("admin SVID expires at %s", chain[0].NotAfter.UTC().Format(time.RFC3339))
	}
	if _, err := identity.LoadSVIDDir(a.adminDir); err != nil {
		return err
	}
	return nil
}

func parseCerts(raw []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for {
		var b *pem.Block
		b, raw = pem.Decode(raw)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, errors.New("no certificate in PEM")
	}
	return out, nil
}

// MQTTAddr is the address the MQTT listener is bound to.
func (a *App) MQTTAddr() net.Addr { return a.gw.Addr() }

// APIAddr is the address the admin API is bound to.
func (a *App) APIAddr() net.Addr { return a.api.Addr() }

// APIURL is the base URL of the admin API, usable by a client on this host.
func (a *App) APIURL() string { return "https://" + dialable(a.APIAddr()) }

// AdminDir is the directory holding the dev admin SVID (svid.pem, svid.key,
// bundle.pem); "" unless the identity source is builtin.
func (a *App) AdminDir() string { return a.adminDir }

// TrustDomain is the trust domain the app serves.
func (a *App) TrustDomain() spiffeid.TrustDomain { return a.td }

// CA is the built-in certificate authority; nil unless the identity source
// is builtin (the gateway then signs nothing).
func (a *App) CA() *identity.CA { return a.ca }

// Source is the identity source: the gateway's serving SVID and its own
// trust domain's bundle.
func (a *App) Source() identity.Source { return a.src }

// Verifier verifies peer SVIDs against the bundles of the served trust
// domains.
func (a *App) Verifier() *identity.Verifier { return a.verifier }

// Registry is the device registry.
func (a *App) Registry() *registry.Store { return a.reg }

// Engine is the policy engine deciding every action.
func (a *App) Engine() *policy.Engine { return a.engine }

// Gateway is the MQTT gateway.
func (a *App) Gateway() *gateway.Gateway { return a.gw }

// Prometheus is the Prometheus registry the admin API serves at /metrics.
func (a *App) Prometheus() *prometheus.Registry { return a.prom }

// Metrics is ztgate's instrumentation, registered in Prometheus().
func (a *App) Metrics() *metrics.Metrics { return a.m }

// Decider is what the gateway and the API decide with: the engine behind
// the decision cache, counted and timed by the metrics, logged by the
// decision log.
func (a *App) Decider() policy.Decider { return a.decider }

// DecisionCache is the cache in front of the engine.
func (a *App) DecisionCache() *policy.Cache { return a.cache }

// PolicyDir is the directory of the policy in force, watched when
// policy_watch is on.
func (a *App) PolicyDir() string { return a.policyDir }

// DecisionLog is the decision logger, nil when the decision log is off.
func (a *App) DecisionLog() *decisionlog.Logger { return a.dlog }

// API is the admin API server.
func (a *App) API() *api.Server { return a.api }

// Close stops the background watchers, the API, then the gateway, flushes
// the decision log and closes the registry, then the federation and the
// identity source, so no request or session outlives the store it reads or
// the bundles it is verified with, and every decision made is logged. It
// is safe to call more than once.
func (a *App) Close() error {
	a.closeOnce.Do(func() {
		var errs []error
		if a.stop != nil {
			a.stop()
			a.wg.Wait()
		}
		if a.api != nil {
			if err := a.api.Close(); err != nil {
				errs = append(errs, fmt.Errorf("app: close API: %w", err))
			}
		}
		if a.admin != nil {
			a.admin.Close()
		}
		if a.gw != nil {
			if err := a.gw.Close(); err != nil {
				errs = append(errs, fmt.Errorf("app: close gateway: %w", err))
			}
		}
		// After the gateway, whose last messages (wills) they may take:
		// what they accepted is on disk for the next start.
		if a.bridges != nil {
			if err := a.bridges.Close(); err != nil {
				errs = append(errs, fmt.Errorf("app: close bridges: %w", err))
			}
		}
		// After the gateway, whose last writes (disconnects) it takes.
		if a.store != nil {
			if err := a.store.Close(); err != nil {
				errs = append(errs, fmt.Errorf("app: close broker store: %w", err))
			}
		}
		if a.dlog != nil {
			if err := a.dlog.Close(); err != nil {
				errs = append(errs, fmt.Errorf("app: close decision log: %w", err))
			}
		}
		if a.reg != nil {
			if err := a.reg.Close(); err != nil {
				errs = append(errs, fmt.Errorf("app: close registry: %w", err))
			}
		}
		// After everything that writes to the cluster's state.
		if a.node != nil {
			if err := a.node.Close(); err != nil {
				errs = append(errs, fmt.Errorf("app: close cluster node: %w", err))
			}
		}
		// Last: the listeners asked them at every handshake.
		if a.fed != nil {
			if err := a.fed.Close(); err != nil {
				errs = append(errs, fmt.Errorf("app: close federation: %w", err))
			}
		}
		if a.src != nil {
			if err := a.src.Close(); err != nil {
				errs = append(errs, fmt.Errorf("app: close identity source: %w", err))
			}
		}
		a.closeErr = errors.Join(errs...)
	})
	return a.closeErr
}

// dialable turns a listener address into host:port a local client can dial:
// an unspecified host (0.0.0.0, ::) becomes loopback.
func dialable(addr net.Addr) string {
	host, port, err := net.SplitHostPort(addr.String())
	if err != nil {
		return addr.String()
	}
	if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port)
}
