package daemon

import (
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/cocoon-cc/cocoon/internal/flagutil"
)

// Config is cocoond's own TOML configuration. Upstream formats (aa.toml,
// cdh.toml, policy.json) are read by the packages that own them; this file
// holds only cocoon's settings. Flags override it.
type Config struct {
	Root           string `toml:"root"`
	Address        string `toml:"address"`
	MetricsAddress string `toml:"metrics_address"`
	LogLevel       string `toml:"log_level"`
	LogFormat      string `toml:"log_format"`
	// Mode is guest (default: containerd in the guest), kata-guest (the
	// kata-agent's AA and CDH ttRPC services and the REST shim) or kata-host
	// (the snapshots API of a Kata node, guest pull); see ModeGuest,
	// ModeKataGuest, ModeKataHost.
	Mode string `toml:"mode"`
	// Serve overrides the mode's services: any of snapshotter, aa, cdh,
	// rest (the REST shim on rest.address, default 127.0.0.1:8006).
	Serve []string `toml:"serve"`

	Registry    RegistryConfig    `toml:"registry"`
	Unpack      UnpackConfig      `toml:"unpack"`
	Snapshotter SnapshotterConfig `toml:"snapshotter"`
	Attestation AttestationConfig `toml:"attestation"`
	REST        RESTConfig        `toml:"rest"`
	Secrets     SecretsConfig     `toml:"secrets"`
	Storage     StorageConfig     `toml:"storage"`
	Decryption  DecryptionConfig  `toml:"decryption"`
	NRI         NRIConfig         `toml:"nri"`
	Lazy        LazyConfig        `toml:"lazy"`
	Kata        KataConfig        `toml:"kata"`

	// Version is what the REST API's /info reports (not read from TOML).
	Version string `toml:"-"`
}

// DecryptionConfig holds local keys for encrypted layers. Layers wrapped for
// the attestation-agent key provider need none: their keys come from the
// KBS after attestation.
type DecryptionConfig struct {
	// PrivateKeyFiles are PEM or JWK private keys of JWE recipients
	// (org.opencontainers.image.enc.keys.jwe), as imgcrypt's node keys.
	PrivateKeyFiles []string `toml:"private_key_files"`
}

// SecretsConfig mounts the secrets filesystem (sealed secrets and KBS
// resources as files).
type SecretsConfig struct {
	// Mount is the mount point; empty disables the filesystem.
	Mount string `toml:"mount"`
	// Sources are NAME=SRCDIR pairs: Mount/NAME mirrors SRCDIR, unsealing
	// sealed secrets.
	Sources []string `toml:"sources"`
	UID     uint32   `toml:"uid"`
	GID     uint32   `toml:"gid"`
	// TTL of cached plaintext, e.g. "5m" (default 5 minutes).
	TTL string `toml:"ttl"`
	// LocalKeyDir holds KEKs of envelope secrets sealed with the local
	// provider (must be on tmpfs in a guest).
	LocalKeyDir string `toml:"local_key_dir"`
}

// AttestationConfig selects the attester and the KBS. Upstream aa.toml and
// cdh.toml settings, when given, take precedence over kbs_url and kbs_cert.
type AttestationConfig struct {
	// TEE forces an attester (sample, tdx, snp, tpm); empty detects.
	TEE             string `toml:"tee"`
	KBSURL          string `toml:"kbs_url"`
	KBSCertFile     string `toml:"kbs_cert_file"`
	TEEKeyAlgorithm string `toml:"tee_key_algorithm"`
	// InitData is the init-data TOML file (Kata writes it to
	// /run/confidential-containers/initdata/initdata.toml); its digest must
	// match the TEE's binding field or cocoond refuses to start. Its aa.toml,
	// cdh.toml and policy.rego are used unless the files below are given.
	InitData string `toml:"initdata"`
	// AAConfig and CDHConfig are upstream aa.toml and cdh.toml files.
	AAConfig  string `toml:"aa_config"`
	CDHConfig string `toml:"cdh_config"`
	// EventlogDir holds the AAEL event log when aa.toml enables it
	// (default /run/attestation-agent, upstream's path).
	EventlogDir string `toml:"eventlog_dir"`
	// ImageSecurityDir holds the materialised image policy, its public keys
	// and the registry credentials it needs; it must be on tmpfs in a guest
	// (default /run/cocoon/image-security).
	ImageSecurityDir string `toml:"image_security_dir"`
}

// RESTConfig enables the guest REST shim (upstream api-server-rest).
type RESTConfig struct {
	// Address is host:port, normally 127.0.0.1:8006; empty disables the shim.
	Address string `toml:"address"`
	// Features is resource, attestation or all. The kernel command line's
	// agent.guest_components_rest_api, when present, overrides it; the
	// --rest-features flag overrides both.
	Features string `toml:"features"`
}

// RegistryConfig configures image fetching.
type RegistryConfig struct {
	// Insecure registries (host:port) are reached over plain HTTP.
	Insecure               []string `toml:"insecure"`
	MaxConcurrentDownloads int      `toml:"max_concurrent_downloads"`
	Retries                int      `toml:"retries"`
}

// UnpackConfig bounds what a layer may contain.
type UnpackConfig struct {
	AllowDevices bool `toml:"allow_devices"`
	// Sizes are go-units sizes (flagutil.ParseSize): "8GiB", "512M", "1G";
	// units are powers of 1024.
	MaxEntrySize string `toml:"max_entry_size"` // e.g. "8GiB"
	MaxTotalSize string `toml:"max_total_size"`
	MaxEntries   int    `toml:"max_entries"`
}

// SnapshotterConfig tunes the overlay bookkeeping.
type SnapshotterConfig struct {
	MountOptions []string `toml:"mount_options"`
	// AllowUnlabelledLayers lets containerd fetch and apply an image layer
	// whose Prepare lacks the CRI labels (ctr image pull --local, a
	// containerd without enable_remote_snapshot_annotations) even though an
	// image security policy is configured: such layers are not verified.
	// Off by default: those Prepares are refused.
	// In kata-host mode it lets containerd pull such layers on the host
	// instead of refusing them.
	AllowUnlabelledLayers bool `toml:"allow_unlabelled_layers"`
	// KataMountType is the rootfs mount type in kata-host mode (default
	// "fuse.nydus-overlayfs-cocoon"); "fuse./path/to/nydus-overlayfs-cocoon"
	// names the mount helper by path, as nydus's nydus_overlayfs_path does.
	KataMountType string `toml:"kata_mount_type"`
}

// LazyConfig turns on lazy pull of eStargz layers: a layer whose
// descriptor, in the manifest the image security policy accepted, carries
// the containerd.io/snapshot/stargz/toc.digest annotation is served over
// FUSE, fetching (and verifying) only what containers read, instead of
// being pulled whole. Off by default: turning it on is a rollout decision
// (the FUSE mounts outlive cocoond, the registry reachable while
// containers run); with it off, eStargz images full-pull as any other.
// Local copies of completed blobs live under the storage directory (the
// encrypted storage volume when one is configured) in lazy/.
type LazyConfig struct {
	Enable bool `toml:"enable"`
	// Detached serves the mounts from one detached lazy FUSE server per
	// root (fusefs/server, state in ROOT/lazy-server), so that they keep
	// serving running containers when cocoond is killed or restarted
	// (default true). false serves them from cocoond's own process
	// (snapshotter/lazysource): they die with it.
	Detached bool `toml:"detached"`
	// CacheSize bounds the in-memory cache of verified chunks shared by
	// all lazy layers (flagutil.ParseSize syntax; default "64MiB").
	CacheSize string `toml:"cache_size"`
	// Prefetch fetches the files a layer's builder placed before its
	// .prefetch.landmark right after the mount (default true).
	Prefetch bool `toml:"prefetch"`
	// CoalesceGap: missing chunks at most this far apart are fetched in one
	// range request (default "256KiB").
	CoalesceGap string `toml:"coalesce_gap"`
	// BackgroundCompletion fetches each lazy blob whole after the prefetch,
	// checks its digest (encrypted: ciphertext digest and HMAC) and diff ID,
	// and serves reads from that local copy afterwards (default true).
	BackgroundCompletion bool `toml:"background_completion"`
	// CompletionConcurrency bounds the blobs completed at once (default 2),
	// each with four segment fetches at a time. The detached server takes
	// it when it starts.
	CompletionConcurrency int `toml:"completion_concurrency"`
}

// Default is the configuration cocoond runs with when no file names a key.
func Default() Config {
	return Config{
		Version:   "dev",
		Root:      "/var/lib/cocoon",
		Address:   "/run/cocoon/cocoon.sock",
		LogLevel:  "info",
		LogFormat: "text",
		Registry:  RegistryConfig{MaxConcurrentDownloads: 3, Retries: 5},
		NRI:       NRIConfig{SocketPath: "/var/run/nri/nri.sock", PluginIndex: "10"},
		Lazy: LazyConfig{
			Detached: true, CacheSize: "64MiB", Prefetch: true, CoalesceGap: "256KiB",
			BackgroundCompletion: true, CompletionConcurrency: 2,
		},
		Attestation: AttestationConfig{
			EventlogDir:      "/run/attestation-agent",
			ImageSecurityDir: "/run/cocoon/image-security",
		},
	}
}

// Load reads path over the defaults ("" is the defaults). Unknown keys are returned as
// warnings; invalid values are errors naming the key.
func Load(path string) (Config, []string, error) {
	cfg := Default()
	if path == "" {
		return cfg, nil, nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return cfg, nil, fmt.Errorf("read config: %w", err)
	}
	md, err := toml.Decode(string(b), &cfg)
	if err != nil {
		return cfg, nil, fmt.Errorf("parse config %s: %w", path, err)
	}
	var warnings []string
	for _, k := range md.Undecoded() {
		warnings = append(warnings, fmt.Sprintf("%s: unknown key %q ignored", path, k.String()))
	}
	return cfg, warnings, cfg.Validate()
}

// Validate checks every value; an error names the TOML key at fault.
func (c *Config) Validate() error {
	if c.Root == "" {
		return fmt.Errorf("root: must not be empty")
	}
	if err := c.validateServices(); err != nil {
		return err
	}
	if c.Registry.MaxConcurrentDownloads < 1 {
		return fmt.Errorf("registry.max_concurrent_downloads: must be at least 1, got %d", c.Registry.MaxConcurrentDownloads)
	}
	if c.Registry.Retries < 0 {
		return fmt.Errorf("registry.retries: must not be negative")
	}
	for _, h := range c.Registry.Insecure {
		if h == "" || strings.ContainsAny(h, "/ ") {
			return fmt.Errorf("registry.insecure: %q is not a HOST[:PORT]", h)
		}
	}
	if _, err := c.Unpack.sizes(); err != nil {
		return err
	}
	if _, err := c.Lazy.sizes(); err != nil {
		return err
	}
	if c.Storage.Size != "" {
		if _, err := flagutil.ParseSize(c.Storage.Size); err != nil {
			return fmt.Errorf("storage.size: %w", err)
		}
	}
	switch c.Attestation.TEE {
	case "", "sample", "tdx", "snp", "tpm":
	default:
		return fmt.Errorf("attestation.tee: %q is not sample, tdx, snp or tpm", c.Attestation.TEE)
	}
	switch c.Attestation.TEEKeyAlgorithm {
	case "", "ECDH-ES+A256KW-P256", "ECDH-ES+A256KW-P521", "RSA-OAEP-256":
	default:
		return fmt.Errorf("attestation.tee_key_algorithm: %q is not ECDH-ES+A256KW-P256, ECDH-ES+A256KW-P521 or RSA-OAEP-256", c.Attestation.TEEKeyAlgorithm)
	}
	if c.Secrets.TTL != "" {
		if d, err := time.ParseDuration(c.Secrets.TTL); err != nil || d <= 0 {
			return fmt.Errorf("secrets.ttl: %q is not a positive duration", c.Secrets.TTL)
		}
	}
	if len(c.NRI.PluginIndex) != 2 || c.NRI.PluginIndex[0] < '0' || c.NRI.PluginIndex[0] > '9' || c.NRI.PluginIndex[1] < '0' || c.NRI.PluginIndex[1] > '9' {
		return fmt.Errorf("nri.plugin_index: %q is not two digits", c.NRI.PluginIndex)
	}
	switch c.LogFormat {
	case "text", "json":
	default:
		return fmt.Errorf("log_format: %q is not text or json", c.LogFormat)
	}
	return nil
}

type unpackSizes struct{ entry, total int64 }

func (u UnpackConfig) sizes() (unpackSizes, error) {
	var s unpackSizes
	var err error
	if u.MaxEntrySize != "" {
		if s.entry, err = flagutil.ParseSize(u.MaxEntrySize); err != nil {
			return s, fmt.Errorf("unpack.max_entry_size: invalid size %q", u.MaxEntrySize)
		}
	}
	if u.MaxTotalSize != "" {
		if s.total, err = flagutil.ParseSize(u.MaxTotalSize); err != nil {
			return s, fmt.Errorf("unpack.max_total_size: invalid size %q", u.MaxTotalSize)
		}
	}
	if u.MaxEntries < 0 {
		return s, fmt.Errorf("unpack.max_entries: must not be negative")
	}
	return s, nil
}

type lazySizes struct{ cache, gap int64 }

func (l LazyConfig) sizes() (lazySizes, error) {
	var s lazySizes
	var err error
	if l.CacheSize != "" {
		if s.cache, err = flagutil.ParseSize(l.CacheSize); err != nil || s.cache <= 0 {
			return s, fmt.Errorf("lazy.cache_size: invalid size %q", l.CacheSize)
		}
	}
	if l.CoalesceGap != "" {
		if s.gap, err = flagutil.ParseSize(l.CoalesceGap); err != nil {
			return s, fmt.Errorf("lazy.coalesce_gap: invalid size %q", l.CoalesceGap)
		}
	}
	if l.CompletionConcurrency < 0 {
		return s, fmt.Errorf("lazy.completion_concurrency: must not be negative")
	}
	return s, nil
}
