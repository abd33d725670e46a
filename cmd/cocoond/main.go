// Command cocoond is cocoon's daemon. It serves containerd's snapshots API on
// a unix socket (proxy plugin "cocoon") and pulls, verifies and unpacks image
// layers itself (guest pull); it exposes Prometheus metrics on request.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
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

	"github.com/cocoon-cc/cocoon/image/pull"
	"github.com/cocoon-cc/cocoon/image/registry"
	"github.com/cocoon-cc/cocoon/image/unpack"
	"github.com/cocoon-cc/cocoon/restapi"
	"github.com/cocoon-cc/cocoon/snapshotter"
)

type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "cocoond:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("cocoond", flag.ContinueOnError)
	var (
		configPath = fs.String("config", "", "cocoond TOML configuration `file`")
		root       = fs.String("root", "", "state `directory` (default /var/lib/cocoon)")
		address    = fs.String("address", "", "unix `socket` serving containerd's snapshots API (default /run/cocoon/cocoon.sock)")
		metrics    = fs.String("metrics-address", "", "serve Prometheus metrics on `host:port` (/metrics)")
		logLevel   = fs.String("log-level", "", "log `level`: debug, info, warn, error (default info)")
		logFormat  = fs.String("log-format", "", "log format: text or json (default text)")
		restAddr   = fs.String("rest-api", "", "serve the guest REST API (/aa, /cdh) on `host:port`, normally 127.0.0.1:8006")
		restFeat   = fs.String("rest-features", "", "REST API features: all, attestation or resource (default resource, or the kernel command line's "+kernelCmdlineKey+")")
		kbsURL     = fs.String("kbs-url", "", "Key Broker Service `URL`, e.g. http://127.0.0.1:8080")
		tee        = fs.String("tee", "", "force the attester: sample, tdx, snp or tpm (default: detect)")
		initData   = fs.String("initdata", "", "init-data TOML `file`; its digest must match the TEE's binding field")
		aaConfig   = fs.String("aa-config", "", "upstream aa.toml `file` (default: from init-data)")
		cdhConfig  = fs.String("cdh-config", "", "upstream cdh.toml `file` (default: from init-data)")
		storageVol = fs.String("storage-volume", "", "put image storage on an encrypted volume on this block device or `file` (key and header in memory only)")
		storageSz  = fs.String("storage-volume-size", "", "size of a file --storage-volume, e.g. 20G")
		secretsDir = fs.String("secrets-mount", "", "mount the secrets filesystem (sealed secrets, KBS resources) on `dir`")
		secretsSrc stringList
		cmdline    = fs.String("kernel-cmdline", "/proc/cmdline", "kernel command line `file` read for "+kernelCmdlineKey)
		insecure   stringList
	)
	fs.Var(&insecure, "insecure-registry", "plain-HTTP registry `host:port` (repeatable)")
	fs.Var(&secretsSrc, "secrets-source", "`NAME=SRCDIR`: the secrets mount's NAME/ mirrors SRCDIR, unsealing sealed secrets (repeatable)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %q", fs.Args())
	}

	cfg, warnings, err := loadConfig(*configPath)
	if err != nil {
		return err
	}
	set := func(dst *string, v string) {
		if v != "" {
			*dst = v
		}
	}
	set(&cfg.Root, *root)
	set(&cfg.Address, *address)
	set(&cfg.MetricsAddress, *metrics)
	set(&cfg.LogLevel, *logLevel)
	set(&cfg.LogFormat, *logFormat)
	set(&cfg.REST.Address, *restAddr)
	set(&cfg.Attestation.KBSURL, *kbsURL)
	set(&cfg.Attestation.TEE, *tee)
	set(&cfg.Attestation.InitData, *initData)
	set(&cfg.Attestation.AAConfig, *aaConfig)
	set(&cfg.Attestation.CDHConfig, *cdhConfig)
	set(&cfg.Secrets.Mount, *secretsDir)
	set(&cfg.Storage.Volume, *storageVol)
	set(&cfg.Storage.Size, *storageSz)
	cfg.Secrets.Sources = append(cfg.Secrets.Sources, secretsSrc...)
	cfg.Registry.Insecure = append(cfg.Registry.Insecure, insecure...)
	if err := cfg.validate(); err != nil {
		return err
	}
	if err := log.SetLevel(cfg.LogLevel); err != nil {
		return fmt.Errorf("log level: %w", err)
	}
	if cfg.LogFormat == "json" {
		if err := log.SetFormat(log.JSONFormat); err != nil {
			return err
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	for _, w := range warnings {
		log.G(ctx).Warn(w)
	}
	features, source, err := restFeatures(*restFeat, *cmdline, cfg.REST.Features)
	if err != nil {
		return fmt.Errorf("rest features (from %s): %w", source, err)
	}
	return serve(ctx, cfg, features)
}

func serve(ctx context.Context, cfg Config, features restapi.Features) error {
	root, err := filepath.Abs(cfg.Root)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(root, 0o700); err != nil {
		return fmt.Errorf("create root: %w", err)
	}
	sizes, _ := cfg.Unpack.sizes()

	// Trusted configuration first: a mismatched init-data refuses to start
	// before anything is served.
	var at *attestation
	if cfg.Attestation.needed(cfg.REST) || cfg.Secrets.Mount != "" {
		if at, err = newAttestation(ctx, cfg.Attestation); err != nil {
			return err
		}
		if err := provisionCredentials(ctx, at); err != nil {
			return err
		}
	}
	if cfg.Secrets.Mount != "" {
		unmount, err := mountSecrets(ctx, cfg.Secrets, at)
		if err != nil {
			return err
		}
		defer unmount()
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	pm := pull.NewMetrics()
	if err := pm.Register(reg); err != nil {
		return err
	}

	storage, err := storageDir(ctx, root, cfg.Storage)
	if err != nil {
		return err
	}
	ropts, err := registryOptions(ctx, cfg, at)
	if err != nil {
		return err
	}
	client := registry.New(ropts)
	dopts, err := decryptOptions(cfg.Decryption, at)
	if err != nil {
		return err
	}
	policy := imagePolicy(ctx, at, client, cfg.Attestation.ImageSecurityDir)
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
	if err != nil {
		return err
	}
	defer puller.Close()
	if n, err := puller.CleanStaging(ctx); err != nil {
		return err
	} else if n > 0 {
		log.G(ctx).WithField("count", n).Warn("removed staging directories left by a previous run")
	}

	sn, err := snapshotter.New(ctx, snapshotter.Options{
		Root:          filepath.Join(storage, "snapshotter"),
		Layers:        puller,
		MountOptions:  cfg.Snapshotter.MountOptions,
		RequireLabels: requireLabels,
	})
	if err != nil {
		return err
	}
	defer sn.Close()
	if cfg.NRI.Enable {
		nctx, stopNRI := context.WithCancel(ctx)
		nriDone := make(chan struct{})
		go func() { runNRI(nctx, cfg.NRI, sn); close(nriDone) }()
		defer func() { stopNRI(); <-nriDone }()
		log.G(ctx).WithField("socket", cfg.NRI.SocketPath).Info("NRI plugin \"cocoon\" admits containers whose image passed the image security policy")
	}

	if err := os.MkdirAll(filepath.Dir(cfg.Address), 0o711); err != nil {
		return fmt.Errorf("create socket directory: %w", err)
	}
	if err := os.Remove(cfg.Address); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove stale socket: %w", err)
	}
	l, err := net.Listen("unix", cfg.Address)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", cfg.Address, err)
	}
	if err := os.Chmod(cfg.Address, 0o660); err != nil {
		l.Close()
		return err
	}
	rpc := grpc.NewServer()
	snapshotsapi.RegisterSnapshotsServer(rpc, snapshotservice.FromSnapshotter(sn))
	hs := health.NewServer()
	healthpb.RegisterHealthServer(rpc, hs)

	errc := make(chan error, 2)
	go func() { errc <- rpc.Serve(l) }()

	if cfg.REST.Address != "" {
		stopREST, err := startREST(ctx, cfg.REST.Address, features, at)
		if err != nil {
			rpc.Stop()
			return err
		}
		defer stopREST()
	}

	var metricsSrv *http.Server
	if cfg.MetricsAddress != "" {
		ml, err := net.Listen("tcp", cfg.MetricsAddress)
		if err != nil {
			rpc.Stop()
			return fmt.Errorf("metrics listener: %w", err)
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
		metricsSrv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		go func() {
			if err := metricsSrv.Serve(ml); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("metrics server: %w", err)
			}
		}()
		log.G(ctx).WithField("address", ml.Addr().String()).Info("serving metrics")
	}
	log.G(ctx).WithFields(log.Fields{
		"address":  cfg.Address,
		"root":     root,
		"insecure": cfg.Registry.Insecure,
	}).Info("cocoond serving the snapshots API (snapshotter \"cocoon\")")

	select {
	case <-ctx.Done():
		log.G(ctx).Info("stopping")
	case err = <-errc:
		log.G(ctx).WithError(err).Error("server failed")
	}
	hs.Shutdown()
	if metricsSrv != nil {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if err := metricsSrv.Shutdown(sctx); err != nil {
			log.G(ctx).WithError(err).Warn("metrics server shutdown")
		}
		cancel()
	}
	stopped := make(chan struct{})
	go func() { rpc.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(10 * time.Second):
		log.G(ctx).Warn("in-flight requests did not finish within 10s; closing")
		rpc.Stop()
	}
	os.Remove(cfg.Address)
	return err
}
