package harness

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// CRIOptions enable containerd's CRI plugin and NRI for StartContainerd.
// Pods run with host networking (no CNI), and the runtime restricts OOM
// score adjustments because sandboxes here lack CAP_SYS_RESOURCE.
type CRIOptions struct {
	// SandboxImage is the pause image reference (pulled on first pod).
	SandboxImage string
	// PlainHTTP registries (host:port) get a hosts.toml reaching them over
	// plain HTTP.
	PlainHTTP []string
	// NRIRequiredPlugins are NRI plugins the default validator requires:
	// containers are refused while one is not connected.
	NRIRequiredPlugins []string
}

// NRISocket is the NRI socket of a containerd started with CRI options.
func (c *Containerd) NRISocket() string { return filepath.Join(c.Dir, "nri.sock") }

// criConfig writes the registry hosts directory and returns the CRI and NRI
// sections of config.toml. It declares no key of the
// [plugins."io.containerd.cri.v1.images"] table itself, which cocoonctl's
// fragment owns.
func (c *Containerd) criConfig(o CRIOptions) (string, error) {
	certs := filepath.Join(c.Dir, "certs.d")
	for _, h := range o.PlainHTTP {
		d := filepath.Join(certs, h)
		if err := os.MkdirAll(d, 0o755); err != nil {
			return "", err
		}
		hosts := fmt.Sprintf("server = %q\n\n[host.%q]\n  capabilities = [\"pull\", \"resolve\"]\n", "http://"+h, "http://"+h)
		if err := os.WriteFile(filepath.Join(d, "hosts.toml"), []byte(hosts), 0o644); err != nil {
			return "", err
		}
	}
	required, err := json.Marshal(o.NRIRequiredPlugins)
	if err != nil {
		return "", err
	}
	if o.NRIRequiredPlugins == nil {
		required = []byte("[]")
	}
	return fmt.Sprintf(`
[plugins."io.containerd.cri.v1.runtime"]
  restrict_oom_score_adj = true
[plugins."io.containerd.cri.v1.runtime".cni]
  bin_dirs = [%[1]q]
  conf_dir = %[2]q

[plugins."io.containerd.cri.v1.images".registry]
  config_path = %[3]q
[plugins."io.containerd.cri.v1.images".pinned_images]
  sandbox = %[4]q

[plugins."io.containerd.grpc.v1.cri"]
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

[plugins."io.containerd.nri.v1.nri"]
  disable = false
  socket_path = %[5]q
  plugin_path = %[6]q
  plugin_config_path = %[7]q
  plugin_request_timeout = "30s"
[plugins."io.containerd.nri.v1.nri".default_validator]
  enable = true
  required_plugins = %[8]s
`, filepath.Join(c.Dir, "cni-bin"), filepath.Join(c.Dir, "cni-conf"), certs, o.SandboxImage,
		c.NRISocket(), filepath.Join(c.Dir, "nri-plugins"), filepath.Join(c.Dir, "nri-conf"), required), nil
}

// Crictl runs crictl against this containerd's CRI socket and returns
// stdout; the error carries stderr.
func (c *Containerd) Crictl(ctx context.Context, args ...string) (string, error) {
	ep := "unix://" + c.Address
	return runTool(ctx, c.env, c.env.Tool("crictl"), append([]string{"--runtime-endpoint", ep, "--image-endpoint", ep, "--timeout", "2m"}, args...)...)
}

// PodSandbox writes the config of a host-network pod and runs it; cleanup
// stops and removes it (and its containers).
func (c *Containerd) PodSandbox(ctx context.Context, name string) (id, configPath string, err error) {
	return c.PodSandboxWith(ctx, name, "")
}

// PodConfig writes the config of a host-network pod; a runtime handler is
// also named by the annotation io.containerd.cri.runtime-handler, which
// `crictl pull --pod-config` passes to PullImage.
func (c *Containerd) PodConfig(name, runtimeHandler string) (string, error) {
	cfg := map[string]any{
		"metadata":      map[string]any{"name": name, "namespace": "default", "uid": name + "-uid", "attempt": 0},
		"log_directory": filepath.Join(c.Dir, "pod-logs", name),
		"linux": map[string]any{
			"security_context": map[string]any{"namespace_options": map[string]any{"network": 2}}, // NODE
		},
	}
	if runtimeHandler != "" {
		cfg["annotations"] = map[string]string{"io.containerd.cri.runtime-handler": runtimeHandler}
	}
	configPath := filepath.Join(c.Dir, "pod-"+name+".json")
	return configPath, writeJSON(configPath, cfg)
}

// PodSandboxWith runs a host-network pod with a runtime handler ("" for
// the default); cleanup stops and removes it (and its containers).
func (c *Containerd) PodSandboxWith(ctx context.Context, name, runtimeHandler string) (id, configPath string, err error) {
	configPath, err = c.PodConfig(name, runtimeHandler)
	if err != nil {
		return "", "", err
	}
	args := []string{"runp", configPath}
	if runtimeHandler != "" {
		args = []string{"runp", "--runtime", runtimeHandler, configPath}
	}
	out, err := c.Crictl(ctx, args...)
	if err != nil {
		return "", "", err
	}
	id = strings.TrimSpace(out)
	c.env.TB.Cleanup(func() {
		cctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if _, err := c.Crictl(cctx, "stopp", id); err != nil {
			c.env.TB.Logf("cleanup: %v", err)
		}
		if _, err := c.Crictl(cctx, "rmp", "--force", id); err != nil {
			c.env.TB.Logf("cleanup: %v", err)
		}
	})
	return id, configPath, nil
}

// CreateContainer creates (does not start) a container of image in pod.
func (c *Containerd) CreateContainer(ctx context.Context, podID, podConfig, name, image string, command ...string) (string, error) {
	cfg := map[string]any{
		"metadata": map[string]any{"name": name},
		"image":    map[string]any{"image": image},
		"log_path": name + ".log",
	}
	if len(command) > 0 {
		cfg["command"] = command
	}
	p := filepath.Join(c.Dir, "ctr-"+name+".json")
	if err := writeJSON(p, cfg); err != nil {
		return "", err
	}
	out, err := c.Crictl(ctx, "create", podID, p, podConfig)
	return strings.TrimSpace(out), err
}

func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o644)
}
