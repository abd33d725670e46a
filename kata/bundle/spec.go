package bundle

import (
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// What image-rs writes (image-rs src/bundle.rs create_runtime_config, over
// oci-spec-rs's Spec::default()): the default spec below, hostname
// "image-rs", the image config's verbatim fields in process, the
// annotations the image-spec conversion names, and a tmpfs mount per
// volume. User is the one field image-rs leaves at its default (root);
// here it is resolved as the conversion says (see user.go).

// Hostname is the hostname image-rs gives every bundle.
const Hostname = "image-rs"

// ociVersion is oci-spec-rs's Spec::default() version.
const ociVersion = "1.0.2-dev"

const (
	annotationOS          = "org.opencontainers.image.os"
	annotationOSVersion   = "org.opencontainers.image.os.version"
	annotationOSFeatures  = "org.opencontainers.image.os.features"
	annotationArch        = "org.opencontainers.image.architecture"
	annotationVariant     = "org.opencontainers.image.variant"
	annotationAuthor      = "org.opencontainers.image.author"
	annotationCreated     = "org.opencontainers.image.created"
	annotationStopSignal  = "org.opencontainers.image.stopSignal"
	annotationExposedPort = "org.opencontainers.image.exposedPorts"
)

// defaultCaps is oci-spec-rs's LinuxCapabilities::default() (a set there,
// sorted here).
var defaultCaps = []string{"CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"}

// defaultSpec is oci-spec-rs's Spec::default() with image-rs's hostname.
func defaultSpec() *specs.Spec {
	return &specs.Spec{
		Version: ociVersion,
		Process: &specs.Process{
			User: specs.User{UID: 0, GID: 0},
			Args: []string{"sh"},
			Env:  []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"},
			Cwd:  "/",
			Capabilities: &specs.LinuxCapabilities{
				Bounding:    slices.Clone(defaultCaps),
				Effective:   slices.Clone(defaultCaps),
				Inheritable: slices.Clone(defaultCaps),
				Permitted:   slices.Clone(defaultCaps),
				Ambient:     slices.Clone(defaultCaps),
			},
			Rlimits:         []specs.POSIXRlimit{{Type: "RLIMIT_NOFILE", Hard: 1024, Soft: 1024}},
			NoNewPrivileges: true,
		},
		Root:     &specs.Root{Path: rootfsDir, Readonly: true},
		Hostname: Hostname,
		Mounts: []specs.Mount{
			{Destination: "/proc", Type: "proc", Source: "proc"},
			{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
			{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"}},
			{Destination: "/dev/shm", Type: "tmpfs", Source: "shm", Options: []string{"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}},
			{Destination: "/dev/mqueue", Type: "mqueue", Source: "mqueue", Options: []string{"nosuid", "noexec", "nodev"}},
			{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "noexec", "nodev", "ro"}},
			{Destination: "/sys/fs/cgroup", Type: "cgroup", Source: "cgroup", Options: []string{"nosuid", "noexec", "nodev", "relatime", "ro"}},
		},
		Annotations: map[string]string{},
		Linux: &specs.Linux{
			Resources: &specs.LinuxResources{},
			Namespaces: []specs.LinuxNamespace{
				{Type: specs.PIDNamespace}, {Type: specs.NetworkNamespace}, {Type: specs.IPCNamespace},
				{Type: specs.UTSNamespace}, {Type: specs.MountNamespace}, {Type: specs.CgroupNamespace},
			},
			MaskedPaths: []string{
				"/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
				"/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi",
			},
			ReadonlyPaths: []string{"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"},
		},
	}
}

// runtimeSpec converts an image config into the bundle's runtime config as
// image-rs does. user is the resolved process user (resolveUser).
func runtimeSpec(img *ocispec.Image, user specs.User) (*specs.Spec, error) {
	if img.OS != "linux" {
		return nil, fmt.Errorf("unsupported OS image %q: only linux images run in a bundle", img.OS)
	}
	spec := defaultSpec()
	cfg := img.Config
	p := spec.Process
	// Verbatim fields: WorkingDir, Env, Entrypoint + Cmd. An empty value
	// means absent (Go's image config cannot tell them apart); the default
	// stays.
	if cfg.WorkingDir != "" {
		p.Cwd = cfg.WorkingDir
	}
	if cfg.Env != nil {
		p.Env = slices.Clone(cfg.Env)
	}
	if args := append(slices.Clone(cfg.Entrypoint), cfg.Cmd...); len(args) > 0 {
		p.Args = args
	}
	p.User = user

	// Annotations: Config.Labels win over the implicit ones, except the
	// exposed ports, which image-rs sets after the labels.
	ann := spec.Annotations
	for k, v := range cfg.Labels {
		ann[k] = v
	}
	implicit := func(k, v string) {
		if _, ok := cfg.Labels[k]; !ok && v != "" {
			ann[k] = v
		}
	}
	implicit(annotationStopSignal, cfg.StopSignal)
	if len(cfg.ExposedPorts) > 0 {
		ann[annotationExposedPort] = strings.Join(sortedKeys(cfg.ExposedPorts), ",")
	}
	if _, ok := cfg.Labels[annotationOS]; !ok {
		ann[annotationOS] = img.OS
	}
	implicit(annotationOSVersion, img.OSVersion)
	if img.OSFeatures != nil {
		// serde_json's form: compact, without Go's HTML escaping.
		var b strings.Builder
		enc := json.NewEncoder(&b)
		enc.SetEscapeHTML(false)
		if err := enc.Encode(img.OSFeatures); err != nil {
			return nil, err
		}
		implicit(annotationOSFeatures, strings.TrimSuffix(b.String(), "\n"))
	}
	if _, ok := cfg.Labels[annotationArch]; !ok {
		ann[annotationArch] = img.Architecture
	}
	implicit(annotationVariant, img.Variant)
	implicit(annotationAuthor, img.Author)
	if img.Created != nil {
		implicit(annotationCreated, img.Created.Format(time.RFC3339Nano))
	}

	// Volumes become tmpfs mounts, placed before the default mounts.
	if len(cfg.Volumes) > 0 {
		var vols []specs.Mount
		for _, v := range sortedKeys(cfg.Volumes) {
			vols = append(vols, specs.Mount{Destination: v, Type: "tmpfs", Options: []string{"nosuid", "noexec", "nodev", "relatime", "rw"}})
		}
		spec.Mounts = append(vols, spec.Mounts...)
	}
	return spec, nil
}

func sortedKeys(m map[string]struct{}) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
