package daemon

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/containerd/log"
	"github.com/containerd/nri/pkg/api"
	"github.com/containerd/nri/pkg/stub"
	"github.com/opencontainers/go-digest"
)

// nriPluginName is the name cocoond registers with containerd's NRI; list
// it in the NRI default validator's required_plugins so that containerd
// refuses containers while cocoond is not connected.
const nriPluginName = "cocoon"

// NRIConfig connects cocoond to containerd's NRI (Node Resource Interface)
// as a plugin that admits a container only if its image passed the image
// security policy itself (see snapshotter.Admit).
type NRIConfig struct {
	// Enable serves the plugin.
	Enable bool `toml:"enable"`
	// SocketPath is containerd's NRI socket (default /var/run/nri/nri.sock).
	SocketPath string `toml:"socket_path"`
	// PluginIndex orders cocoon among NRI plugins (two digits, default "10").
	PluginIndex string `toml:"plugin_index"`
}

// admitter is the snapshotter's admission check.
type admitter interface {
	Admit(ctx context.Context, ref string, dgst digest.Digest) error
}

// nriPlugin refuses CreateContainer for an image without an accepted
// verdict. containerd's metadata store answers a layer Prepare itself when
// the chain ID exists, so an image sharing every layer with an accepted one
// never reaches the snapshotter; CreateContainer is where containerd
// names the image (reference and manifest or index digest from its image
// store) and can still be stopped.
type nriPlugin struct {
	admit admitter
	ctx   context.Context
}

func (p *nriPlugin) CreateContainer(ctx context.Context, pod *api.PodSandbox, ctr *api.Container) (*api.ContainerAdjustment, []*api.ContainerUpdate, error) {
	img := ctr.GetImage()
	l := log.G(p.ctx).WithFields(log.Fields{"pod": pod.GetNamespace() + "/" + pod.GetName(), "container": ctr.GetName()})
	if img == nil {
		err := errors.New("cocoon: the runtime did not name the container's image; refusing (NRI Container.Image is empty)")
		l.Warn(err.Error())
		return nil, nil, err
	}
	l = l.WithFields(log.Fields{"image": img.GetName(), "digest": img.GetDigest()})
	if err := p.admit.Admit(log.WithLogger(ctx, l), img.GetName(), digest.Digest(img.GetDigest())); err != nil {
		l.WithError(err).Warn("container refused: its image has no accepted image security policy verdict")
		return nil, nil, fmt.Errorf("cocoon: container image %s refused: %w", img.GetName(), err)
	}
	l.Info("container admitted: image accepted by the image security policy")
	return nil, nil, nil
}

// Synchronize is NRI's handshake after registration: from here on every
// CreateContainer passes through CreateContainer above.
func (p *nriPlugin) Synchronize(ctx context.Context, pods []*api.PodSandbox, ctrs []*api.Container) ([]*api.ContainerUpdate, error) {
	log.G(p.ctx).WithFields(log.Fields{"pods": len(pods), "containers": len(ctrs)}).Info("NRI plugin registered with the runtime")
	return nil, nil
}

// runNRI keeps cocoond connected to containerd's NRI socket, reconnecting
// when containerd restarts, until ctx ends.
func runNRI(ctx context.Context, cfg NRIConfig, a admitter) {
	p := &nriPlugin{admit: a, ctx: ctx}
	opts := []stub.Option{stub.WithPluginName(nriPluginName), stub.WithPluginIdx(cfg.PluginIndex)}
	if cfg.SocketPath != "" {
		opts = append(opts, stub.WithSocketPath(cfg.SocketPath))
	}
	for ctx.Err() == nil {
		s, err := stub.New(p, opts...)
		if err != nil {
			log.G(ctx).WithError(err).Error("NRI plugin")
			return
		}
		err = s.Run(ctx)
		if ctx.Err() != nil {
			return
		}
		log.G(ctx).WithError(err).WithField("socket", cfg.SocketPath).Warn("NRI connection ended; reconnecting")
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}
