package main

import (
	"context"
	"fmt"
	"io"
	"iter"
	"os"
	"sort"
	"strings"

	srvconfig "github.com/containerd/containerd/v2/cmd/containerd/server/config"
	"github.com/containerd/log"
	"github.com/containerd/plugin"
	"github.com/pelletier/go-toml/v2"
	"github.com/sirupsen/logrus"
)

// Plugin IDs whose sections doctor reads. containerd 1.7 (config version
// 2) keeps the CRI settings in one plugin; containerd 2.x (version 3 and
// later) splits them into the images and runtime plugins.
const (
	pluginCRIv2      = "io.containerd.grpc.v1.cri"
	pluginCRIImages  = "io.containerd.cri.v1.images"
	pluginCRIRuntime = "io.containerd.cri.v1.runtime"
	pluginTransfer   = "io.containerd.transfer.v1.local"
)

// criImagesConfig is the part of the CRI images plugin's configuration
// doctor reads (containerd v2.4.2 internal/cri/config/config.go,
// ImageConfig).
type criImagesConfig struct {
	Snapshotter                string `toml:"snapshotter"`
	DisableSnapshotAnnotations *bool  `toml:"disable_snapshot_annotations"`
	UseLocalImagePull          bool   `toml:"use_local_image_pull"`
	RuntimePlatforms           map[string]struct {
		Platform    string `toml:"platform"`
		Snapshotter string `toml:"snapshotter"`
	} `toml:"runtime_platforms"`
}

// criRuntimeConfig is the part of the CRI runtime plugin's configuration
// doctor reads: each runtime handler's snapshotter.
type criRuntimeConfig struct {
	Containerd struct {
		Runtimes map[string]struct {
			Snapshotter string `toml:"snapshotter"`
		} `toml:"runtimes"`
	} `toml:"containerd"`
}

// transferConfig is the transfer service's unpack configuration
// (containerd plugins/transfer/plugin.go, transferConfig).
type transferConfig struct {
	UnpackConfig []struct {
		Platform    string `toml:"platform"`
		Snapshotter string `toml:"snapshotter"`
	} `toml:"unpack_config"`
}

// containerdView is containerd's merged configuration as doctor reads it.
type containerdView struct {
	path        string
	mainVersion int // the main file's version: 2 or less is containerd 1.7's schema
	imports     []string
	proxy       map[string]srvconfig.ProxyPlugin
	images      criImagesConfig
	runtime     criRuntimeConfig
	transfer    transferConfig
}

// quiet keeps the libraries doctor calls from logging (containerd's
// loader its warnings on unknown keys and migration, the KBS client its
// retries) in the middle of doctor's lines, which say what matters.
func quiet(ctx context.Context) context.Context {
	l := logrus.New()
	l.SetOutput(io.Discard)
	return log.WithLogger(ctx, logrus.NewEntry(l))
}

// loadContainerdConfig reads path with containerd's own loader (imports,
// drop-in globs, merge rules, migration of older versions), registering
// the CRI plugins' version 2 to 3 migration so that a containerd 1.7
// configuration is read the way containerd 2.x reads it.
func loadContainerdConfig(path string) (*containerdView, error) {
	ctx := quiet(context.Background())
	v := &containerdView{path: path}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var head struct {
		Version int `toml:"version"`
	}
	if err := toml.Unmarshal(b, &head); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	v.mainVersion = max(head.Version, 1) // containerd reads no version as 1
	cfg := srvconfig.Config{Version: 3}
	migrations := func() iter.Seq[plugin.Registration] {
		return func(yield func(plugin.Registration) bool) {
			yield(plugin.Registration{Type: "io.containerd.internal.v1", ID: "cocoonctl-doctor", ConfigMigration: migrateCRIConfig})
		}
	}
	if err := srvconfig.LoadConfigWithPlugins(ctx, path, migrations, &cfg); err != nil {
		return nil, err
	}
	v.proxy, v.imports = cfg.ProxyPlugins, cfg.Imports
	for id, out := range map[string]any{pluginCRIImages: &v.images, pluginCRIRuntime: &v.runtime, pluginTransfer: &v.transfer} {
		if _, err := cfg.Decode(ctx, id, out); err != nil {
			return nil, fmt.Errorf("plugins.%q: %w", id, err)
		}
	}
	return v, nil
}

// migrateCRIConfig moves the settings doctor reads from a version 2
// file's CRI plugin to the version 3 plugins, as containerd v2.4.2's
// plugins/cri/images/plugin.go and plugins/cri/runtime/plugin.go
// (configMigration) do: snapshotter, disable_snapshot_annotations and
// discard_unpacked_layers go to the images plugin, the runtimes (with
// their snapshotter) to the runtime plugin.
func migrateCRIConfig(_ context.Context, version int, plugins map[string]any) error {
	if version != 2 {
		return nil
	}
	src, _ := plugins[pluginCRIv2].(map[string]any)
	ctrd, _ := src["containerd"].(map[string]any)
	if ctrd == nil {
		return nil
	}
	images := subMap(plugins, pluginCRIImages)
	for _, k := range []string{"snapshotter", "disable_snapshot_annotations", "discard_unpacked_layers"} {
		if val, ok := ctrd[k]; ok {
			images[k] = val
		}
	}
	if runtimes, ok := ctrd["runtimes"].(map[string]any); ok {
		dst := subMap(subMap(subMap(plugins, pluginCRIRuntime), "containerd"), "runtimes")
		for name, r := range runtimes {
			if _, exists := dst[name]; !exists {
				dst[name] = r
			}
		}
	}
	return nil
}

// subMap returns m[key] as a table, creating it when absent.
func subMap(m map[string]any, key string) map[string]any {
	if t, ok := m[key].(map[string]any); ok {
		return t
	}
	t := map[string]any{}
	m[key] = t
	return t
}

// containerdChecks loads the configuration once for the three checks
// that read it; when it cannot be loaded, the first fails and the others
// are skipped.
func containerdChecks(o *doctorOptions) []check {
	var (
		view *containerdView
		err  error
	)
	return []check{
		func(context.Context) result {
			view, err = loadContainerdConfig(o.containerdConfig)
			if err != nil {
				return fail("containerd-config", fmt.Sprintf("cannot read %s: %v", o.containerdConfig, err),
					"pass --containerd-config, or write the file (cocoonctl containerd-config prints cocoon's part)")
			}
			return checkProxyPlugin(view, o.snapshotter, o.address)
		},
		func(context.Context) result {
			if view == nil {
				return skip("cri-labels", "containerd configuration not read")
			}
			return checkCRILabels(view, o.snapshotter)
		},
		func(context.Context) result {
			if view == nil {
				return skip("cri-snapshotter", "containerd configuration not read")
			}
			return checkCRISnapshotter(view, o.snapshotter, o.runtimeHandler)
		},
	}
}

// checkProxyPlugin: containerd knows cocoon as a snapshot proxy plugin at
// cocoond's socket.
func checkProxyPlugin(v *containerdView, name, address string) result {
	const c = "containerd-config"
	where := fmt.Sprintf("%s (version %d)", v.path, v.mainVersion)
	if len(v.imports) > 0 {
		where = fmt.Sprintf("%s (version %d, imports %s)", v.path, v.mainVersion, strings.Join(v.imports, " "))
	}
	p, found := v.proxy[name]
	switch {
	case !found:
		return fail(c, fmt.Sprintf("%s has no [proxy_plugins.%s]", where, name),
			"add the fragment `cocoonctl containerd-config` prints (or a file the imports name), then restart containerd")
	case p.Type != "snapshot":
		return fail(c, fmt.Sprintf("%s: proxy_plugins.%s has type = %q", where, name, p.Type),
			fmt.Sprintf("set type = \"snapshot\" in [proxy_plugins.%s]", name))
	case p.Address != address:
		return fail(c, fmt.Sprintf("%s: proxy_plugins.%s has address = %q, cocoond listens on %q", where, name, p.Address, address),
			fmt.Sprintf("make [proxy_plugins.%s] address and cocoond's address (--address here) the same socket", name))
	}
	return ok(c, fmt.Sprintf("%s: proxy_plugins.%s is a snapshot plugin at %s", where, name, address))
}

// checkCRILabels: CRI pulls reach cocoon with the cri.* labels
// (containerd.io/snapshot/cri.image-ref, ...), without which kata-host
// mode refuses a layer and guest mode cannot pull it itself. containerd
// 1.7 passes them when disable_snapshot_annotations = false (its Linux
// default is true). containerd 2.x passes them either on a local pull
// (disable_snapshot_annotations = false, which also forces local pulls)
// or through the transfer service (containerd >= 2.1) when the proxy
// plugin exports enable_remote_snapshot_annotations = "true" and an
// unpack_config entry names the snapshotter (containerd v2.4.2
// internal/cri/config CheckLocalImagePullConfigs, core/transfer/local/pull.go).
func checkCRILabels(v *containerdView, name string) result {
	const c = "cri-labels"
	if d := v.images.DisableSnapshotAnnotations; d != nil && !*d {
		return ok(c, "disable_snapshot_annotations = false: CRI pulls pass the cri.* labels")
	}
	if v.mainVersion <= 2 {
		return fail(c, "disable_snapshot_annotations is not false (containerd's Linux default is true): CRI pulls reach cocoon without the cri.* labels",
			fmt.Sprintf("set disable_snapshot_annotations = false in [plugins.%q.containerd]", pluginCRIv2))
	}
	localFix := fmt.Sprintf("set disable_snapshot_annotations = false in [plugins.%q]", pluginCRIImages)
	if v.images.UseLocalImagePull {
		return fail(c, "use_local_image_pull = true but disable_snapshot_annotations is not false: CRI pulls pass no cri.* labels", localFix)
	}
	if v.proxy[name].Exports["enable_remote_snapshot_annotations"] != "true" {
		return fail(c, "disable_snapshot_annotations is not false (the default) and proxy_plugins."+name+" does not export enable_remote_snapshot_annotations: CRI pulls pass no cri.* labels",
			fmt.Sprintf("set enable_remote_snapshot_annotations = \"true\" in [proxy_plugins.%s.exports] (transfer service, containerd >= 2.1), or %s", name, localFix))
	}
	for _, u := range v.transfer.UnpackConfig {
		if u.Snapshotter == name {
			return ok(c, fmt.Sprintf("transfer-service pulls pass the cri.* labels (enable_remote_snapshot_annotations, unpack_config %s/%s; containerd 2.0 pulls locally and needs disable_snapshot_annotations = false)", u.Platform, name))
		}
	}
	return fail(c, fmt.Sprintf("no [[plugins.%q.unpack_config]] entry has snapshotter = %q: the transfer service skips unpacking into cocoon", pluginTransfer, name),
		fmt.Sprintf("add [[plugins.%q.unpack_config]] with platform and snapshotter = %q (cocoonctl containerd-config prints it)", pluginTransfer, name))
}

// checkCRISnapshotter: the pods meant for cocoon get it, both for their
// images (PullImage) and their containers' root filesystems. With a
// runtime handler, containerd 2.x takes the runtime's snapshotter for
// containers and, for pulls, runtime_platforms (older 2.x) or the
// runtime's snapshotter (newer 2.x); a runtime_platforms entry naming
// another snapshotter splits the two.
func checkCRISnapshotter(v *containerdView, name, handler string) result {
	const c = "cri-snapshotter"
	def := v.images.Snapshotter
	if def == "" {
		def = "overlayfs"
	}
	if handler == "" {
		if def == name {
			return ok(c, fmt.Sprintf("the default CRI snapshotter is %s: every pod uses cocoon", name))
		}
		if hs := handlersUsing(v, name); len(hs) > 0 {
			return ok(c, fmt.Sprintf("runtime handlers %s use %s (the default snapshotter is %s); pass --runtime-handler to check one", strings.Join(hs, ", "), name, def))
		}
		return fail(c, fmt.Sprintf("the default CRI snapshotter is %s and no runtime handler uses %s", def, name),
			fmt.Sprintf("set snapshotter = %q for the runtime handler (cocoonctl containerd-config --runtime-handler NAME) or as the default", name))
	}
	rt, found := v.runtime.Containerd.Runtimes[handler]
	if !found {
		return fail(c, fmt.Sprintf("no runtime handler %q in [plugins.%q.containerd.runtimes]", handler, pluginCRIRuntime),
			"check --runtime-handler against the RuntimeClass's handler, or install the runtime (kata-deploy)")
	}
	forContainers := rt.Snapshotter
	if forContainers == "" {
		forContainers = def
	}
	forPulls := forContainers
	if p, set := v.images.RuntimePlatforms[handler]; set && p.Snapshotter != "" {
		forPulls = p.Snapshotter
	}
	fix := fmt.Sprintf("set snapshotter = %q in [plugins.%q.containerd.runtimes.%s] and in [plugins.%q.runtime_platforms.%s] (cocoonctl containerd-config --runtime-handler %s)",
		name, pluginCRIRuntime, handler, pluginCRIImages, handler, handler)
	if forContainers != name || forPulls != name {
		return fail(c, fmt.Sprintf("runtime handler %s: containers use snapshotter %s, its image pulls %s", handler, forContainers, forPulls), fix)
	}
	finding := fmt.Sprintf("runtime handler %s uses %s for its images and containers", handler, name)
	if def != name {
		// Which handler a pull is for comes from the pod (SNAPSHOTTERS.md
		// section 5: "image was pulled on the host anyway").
		finding += fmt.Sprintf("; image pulls use it only when the kubelet passes the handler (feature gate RuntimeClassInImageCriApi) or the pod carries the annotation io.containerd.cri.runtime-handler: %s, else they use %s", handler, def)
	}
	return ok(c, finding)
}

// handlersUsing lists the runtime handlers whose snapshotter is name.
func handlersUsing(v *containerdView, name string) []string {
	var hs []string
	for h, r := range v.runtime.Containerd.Runtimes {
		if r.Snapshotter == name {
			hs = append(hs, h)
		}
	}
	sort.Strings(hs)
	return hs
}
