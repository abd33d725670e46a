// Package daemon is cocoond: it composes the attester and the trusted
// configuration (init-data, aa.toml, cdh.toml), the KBS clients, the image
// pipeline (registry client, image security policy, decryption, unpack),
// the snapshotter and its containerd snapshots API, the guest REST API, the
// secrets filesystem, the encrypted storage volume, the NRI plugin and the
// metrics endpoint, from one Config.
//
// New builds and listens, Run serves until its context ends, Close
// releases everything New acquired, so a test can run the whole daemon
// in-process on temporary directories and loopback addresses. The package
// never reads flags, the process environment or the kernel command line by
// itself: cmd/cocoond decides those and hands over a Config.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/contrib/snapshotservice"
	"github.com/containerd/log"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/cocoon-cc/cocoon/attest/agent"
	"github.com/cocoon-cc/cocoon/image/decrypt"
	"github.com/cocoon-cc/cocoon/image/pull"
	"github.com/cocoon-cc/cocoon/image/registry"
	"github.com/cocoon-cc/cocoon/image/unpack"
	"github.com/cocoon-cc/cocoon/restapi"
	"github.com/cocoon-cc/cocoon/snapshotter"
	"github.com/cocoon-cc/cocoon/snapshotter/pullsource"
)

// gracePeriod bounds how long Run waits for in-flight snapshots requests
// once asked to stop.
const gracePeriod = 10 * time.Second

// Daemon is a running cocoond: every socket listens once New returns.
type Daemon struct {
	cfg  Config
	root string

	at      *attestation
	metrics *prometheus.Registry
	// lazyMetrics gathers the detached lazy FUSE server's metrics (nil
	// when lazy pull is off or in process).
	lazyMetrics prometheus.Gatherer

	rpc        *grpc.Server
	health     *health.Server
	rpcL       net.Listener
	metricsSrv *http.Server
	metricsL   net.Listener
	restAddr   string
	// agent is the Attestation Agent shared by the AA ttRPC service and the
	// REST shim; kataSockets the ttRPC sockets served, in start order.
	agent       *agent.Agent
	kataSockets []string
	ready       readiness // what /readyz probes (ready.go)

	// closers release what New acquired, run in reverse order by Close.
	closers   []func()
	closeOnce sync.Once
}

// New checks the trusted configuration, then builds and starts listening
// on everything cfg enables. On error, whatever was acquired is released.
func New(ctx context.Context, cfg Config) (_ *Daemon, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	d := &Daemon{cfg: cfg}
	defer func() {
		if err != nil {
			d.Close()
		}
	}()
	if d.root, err = filepath.Abs(cfg.Root); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(d.root, 0o700); err != nil {
		return nil, fmt.Errorf("create root: %w", err)
	}
	// Trusted configuration first: a mismatched init-data refuses to start
	// before anything is served.
	if err := d.startTrusted(ctx); err != nil {
		return nil, err
	}
	sn, deps, err := d.startPipeline(ctx)
	if err != nil {
		return nil, err
	}
	if cfg.NRI.Enable {
		d.startNRI(ctx, sn)
	}
	if err := d.startServices(ctx, sn, deps); err != nil {
		return nil, err
	}
	if cfg.MetricsAddress != "" {
		if err := d.listenMetrics(ctx); err != nil {
			return nil, err
		}
	}
	return d, nil
}

// startServices listens for what the configuration serves, in upstream's
// start-up order: the Attestation Agent, then the Confidential Data Hub,
// then the REST API (which calls both), then containerd's snapshots API.
func (d *Daemon) startServices(ctx context.Context, sn *snapshotter.Snapshotter, deps pipelineDeps) error {
	cfg := &d.cfg
	if cfg.Serves(ServeAA) {
		if err := d.startAA(ctx); err != nil {
			return err
		}
	}
	if cfg.Serves(ServeCDH) {
		if err := d.startCDH(ctx, sn, deps); err != nil {
			return err
		}
	}
	if cfg.Serves(ServeREST) {
		if err := d.startREST(ctx); err != nil {
			return err
		}
	}
	if cfg.Serves(ServeSnapshotter) {
		return d.listenSnapshots(sn)
	}
	return nil
}

// onClose registers a release function for Close.
func (d *Daemon) onClose(f func()) { d.closers = append(d.closers, f) }

// startTrusted sets up attestation, the credentials cdh.toml provisions and
// the secrets filesystem.
func (d *Daemon) startTrusted(ctx context.Context) error {
	cfg := d.cfg
	if !cfg.Attestation.needed(&cfg) && cfg.Secrets.Mount == "" {
		return nil
	}
	at, err := newAttestation(ctx, cfg.Attestation)
	if err != nil {
		return err
	}
	d.at = at
	if err := provisionCredentials(ctx, at); err != nil {
		return err
	}
	if cfg.Secrets.Mount != "" {
		unmount, err := mountSecrets(ctx, cfg.Secrets, at)
		if err != nil {
			return err
		}
		d.onClose(unmount)
	}
	return nil
}

// startPipeline builds the image pipeline (on the storage volume when one
// is configured) and the snapshotter over it.
func (d *Daemon) startPipeline(ctx context.Context) (*snapshotter.Snapshotter, pipelineDeps, error) {
	cfg := d.cfg
	d.metrics = prometheus.NewRegistry()
	d.metrics.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	pm := pull.NewMetrics()
	if err := pm.Register(d.metrics); err != nil {
		return nil, pipelineDeps{}, err
	}
	storage, err := storageDir(ctx, d.root, cfg.Storage)
	if err != nil {
		return nil, pipelineDeps{}, err
	}
	if cfg.Mode == ModeKataHost {
		sn, err := d.startKataHost(ctx, storage)
		return sn, pipelineDeps{}, err
	}
	puller, deps, err := d.newPuller(ctx, storage, pm)
	if err != nil {
		return nil, pipelineDeps{}, err
	}
	d.onClose(func() { puller.Close() })
	if n, err := puller.CleanStaging(ctx); err != nil {
		return nil, pipelineDeps{}, err
	} else if n > 0 {
		log.G(ctx).WithField("count", n).Warn("removed staging directories left by a previous run")
	}
	lazy, err := d.newLazy(ctx, storage, deps)
	if err != nil {
		return nil, pipelineDeps{}, err
	}
	sopts := snapshotter.Options{
		Root:          filepath.Join(storage, "snapshotter"),
		Layers:        pullsource.New(puller),
		MountOptions:  cfg.Snapshotter.MountOptions,
		RequireLabels: deps.requireLabels,
	}
	if lazy != nil {
		sopts.Lazy = lazy
	}
	sn, err := snapshotter.New(ctx, sopts)
	if err != nil {
		return nil, pipelineDeps{}, err
	}
	d.onClose(func() { sn.Close() })
	return sn, deps, nil
}

// pipelineDeps is what the puller is built from and the lazy mounter
// shares with it.
type pipelineDeps struct {
	client        *registry.Client
	registry      registry.Options // what client was built from
	decrypt       decrypt.Options
	requireLabels bool
}

// newPuller builds the registry client, decryption and policy gate; it
// reports whether Prepares must carry the CRI labels.
func (d *Daemon) newPuller(ctx context.Context, storage string, pm *pull.Metrics) (*pull.Puller, pipelineDeps, error) {
	cfg := d.cfg
	sizes, _ := cfg.Unpack.sizes()
	ropts, err := registryOptions(ctx, cfg, d.at)
	if err != nil {
		return nil, pipelineDeps{}, err
	}
	client := registry.New(ropts)
	dopts, err := decryptOptions(cfg.Decryption, d.at)
	if err != nil {
		return nil, pipelineDeps{}, err
	}
	policy := imagePolicy(ctx, d.at, client, cfg.Attestation.ImageSecurityDir)
	requireLabels := policy != nil && !cfg.Snapshotter.AllowUnlabelledLayers
	if policy != nil && cfg.Snapshotter.AllowUnlabelledLayers {
		log.G(ctx).Warn("snapshotter.allow_unlabelled_layers: image layers pulled without CRI labels are applied by containerd without the image security policy")
	}
	puller, err := pull.New(pull.Options{
		Registry:      client,
		StagingDir:    filepath.Join(storage, "staging"),
		MaxConcurrent: cfg.Registry.MaxConcurrentDownloads,
		Unpack: unpack.Options{
			AllowDevices: cfg.Unpack.AllowDevices,
			MaxEntrySize: sizes.entry,
			MaxTotalSize: sizes.total,
			MaxEntries:   cfg.Unpack.MaxEntries,
		},
		Metrics: pm,
		Decrypt: dopts,
		Policy:  policy,
	})
	return puller, pipelineDeps{client: client, registry: ropts, decrypt: dopts, requireLabels: requireLabels}, err
}

// startNRI keeps the NRI plugin connected until Close.
func (d *Daemon) startNRI(ctx context.Context, sn *snapshotter.Snapshotter) {
	nctx, stopNRI := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan struct{})
	go func() { runNRI(nctx, d.cfg.NRI, sn); close(done) }()
	d.onClose(func() { stopNRI(); <-done })
	log.G(ctx).WithField("socket", d.cfg.NRI.SocketPath).Info("NRI plugin \"cocoon\" admits containers whose image passed the image security policy")
}

// listenSnapshots listens on the snapshots API socket (replacing a stale
// one) and registers the snapshots and health services.
func (d *Daemon) listenSnapshots(sn *snapshotter.Snapshotter) error {
	addr := d.cfg.Address
	if err := os.MkdirAll(filepath.Dir(addr), 0o711); err != nil {
		return fmt.Errorf("create socket directory: %w", err)
	}
	if err := os.Remove(addr); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove stale socket: %w", err)
	}
	l, err := net.Listen("unix", addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", addr, err)
	}
	d.onClose(func() { l.Close(); os.Remove(addr) })
	if err := os.Chmod(addr, 0o660); err != nil {
		return err
	}
	d.rpcL = l
	d.rpc = grpc.NewServer()
	snapshotsapi.RegisterSnapshotsServer(d.rpc, snapshotservice.FromSnapshotter(sn))
	d.health = health.NewServer()
	healthpb.RegisterHealthServer(d.rpc, d.health)
	return nil
}

// listenMetrics listens for Prometheus scrapes and the /readyz and
// /healthz probes (ready.go); Run serves them.
func (d *Daemon) listenMetrics(ctx context.Context) error {
	ml, err := net.Listen("tcp", d.cfg.MetricsAddress)
	if err != nil {
		return fmt.Errorf("metrics listener: %w", err)
	}
	d.onClose(func() { ml.Close() })
	mux := http.NewServeMux()
	var g prometheus.Gatherer = d.metrics
	if d.lazyMetrics != nil {
		// The lazy FUSE server's metrics come from its process; should it
		// not answer, cocoond's own are still served.
		g = prometheus.Gatherers{d.metrics, d.lazyMetrics}
	}
	mux.Handle("/metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError}))
	d.handleHealth(mux)
	d.metricsL = ml
	d.metricsSrv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	log.G(ctx).WithField("address", ml.Addr().String()).Info("serving metrics")
	return nil
}

// RESTAddress is where the guest REST API listens ("" when disabled).
func (d *Daemon) RESTAddress() string { return d.restAddr }

// MetricsAddress is where metrics are served ("" when disabled).
func (d *Daemon) MetricsAddress() string {
	if d.metricsL == nil {
		return ""
	}
	return d.metricsL.Addr().String()
}

// Run serves the snapshots API and metrics until ctx ends or a server
// fails, then stops them, letting in-flight snapshots requests finish for
// a grace period. It does not release what New acquired: call Close.
func (d *Daemon) Run(ctx context.Context) error {
	errc := make(chan error, 2)
	if d.rpc != nil {
		go func() { errc <- d.rpc.Serve(d.rpcL) }()
	}
	if d.metricsSrv != nil {
		go func() {
			if err := d.metricsSrv.Serve(d.metricsL); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("metrics server: %w", err)
			}
		}()
	}
	d.ready.serving.Store(true)
	if d.rpc != nil {
		log.G(ctx).WithFields(log.Fields{
			"address":  d.cfg.Address,
			"root":     d.root,
			"insecure": d.cfg.Registry.Insecure,
		}).Info("cocoond serving the snapshots API (snapshotter \"cocoon\")")
	} else {
		log.G(ctx).WithFields(log.Fields{"sockets": d.kataSockets, "rest": d.restAddr, "root": d.root}).Info("cocoond serving the kata-agent (no snapshots API)")
	}

	var err error
	select {
	case <-ctx.Done():
		log.G(ctx).Info("stopping")
	case err = <-errc:
		log.G(ctx).WithError(err).Error("server failed")
	}
	d.stopServing(ctx)
	return err
}

// stopServing shuts the metrics server down and stops the snapshots API.
func (d *Daemon) stopServing(ctx context.Context) {
	d.ready.serving.Store(false)
	if d.health != nil {
		d.health.Shutdown()
	}
	if d.metricsSrv != nil {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		if err := d.metricsSrv.Shutdown(sctx); err != nil {
			log.G(ctx).WithError(err).Warn("metrics server shutdown")
		}
		cancel()
	}
	if d.rpc == nil {
		return
	}
	stopped := make(chan struct{})
	go func() { d.rpc.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(gracePeriod):
		log.G(ctx).Warn("in-flight requests did not finish within 10s; closing")
		d.rpc.Stop()
		<-stopped
	}
}

// Close stops every server and releases everything New acquired (sockets,
// the NRI connection, the snapshotter, the pipeline, the secrets mount).
// The storage volume outlives it on purpose (see storageDir).
func (d *Daemon) Close() error {
	d.closeOnce.Do(func() {
		if d.rpc != nil {
			d.rpc.Stop()
		}
		if d.metricsSrv != nil {
			d.metricsSrv.Close()
		}
		for i := len(d.closers) - 1; i >= 0; i-- {
			d.closers[i]()
		}
	})
	return nil
}

// Serve is New, Run and Close: cocoond's whole life.
func Serve(ctx context.Context, cfg Config) error {
	d, err := New(ctx, cfg)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Run(ctx)
}

// restFeatures is the REST feature set the configuration names.
func (c Config) restFeatures() (restapi.Features, error) {
	if c.REST.Features == "" {
		return restapi.FeatureResource, nil
	}
	return restapi.ParseFeatures(c.REST.Features)
}
