package daemon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/containerd/log"

	"github.com/cocoon-cc/cocoon/restapi"
)

// KernelCmdlineKey is Kata's switch for the REST API features.
const KernelCmdlineKey = "agent.guest_components_rest_api"

// RESTFeatures decides the feature set: flag, then the kernel command line
// (read from cmdlinePath), then the config file, then upstream's default
// (resource). It also names where the answer came from.
func RESTFeatures(flagValue, cmdlinePath, configValue string) (restapi.Features, string, error) {
	if flagValue != "" {
		f, err := restapi.ParseFeatures(flagValue)
		return f, "--rest-features", err
	}
	if b, err := os.ReadFile(cmdlinePath); err == nil {
		for _, field := range strings.Fields(string(b)) {
			if v, ok := strings.CutPrefix(field, KernelCmdlineKey+"="); ok {
				f, err := restapi.ParseFeatures(v)
				return f, "kernel command line", err
			}
		}
	}
	if configValue != "" {
		f, err := restapi.ParseFeatures(configValue)
		return f, "config rest.features", err
	}
	return restapi.FeatureResource, "default", nil
}

// startREST serves the REST shim until Close.
func (d *Daemon) startREST(ctx context.Context) error {
	at := d.at
	features, err := d.cfg.restFeatures()
	if err != nil {
		return fmt.Errorf("rest.features: %w", err)
	}
	ag, err := d.sharedAgent()
	if err != nil {
		return err
	}
	h := restapi.New(restapi.Options{Version: d.cfg.Version, Features: features, Agent: ag, CDH: at.resources()})
	addr := d.cfg.REST.Address
	if addr == "" {
		addr = DefaultRESTAddress
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("rest api listener: %w", err)
	}
	d.restAddr = l.Addr().String()
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		MaxHeaderBytes:    64 << 10,
		BaseContext:       func(net.Listener) context.Context { return ctx },
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.G(ctx).WithError(err).Error("rest api server failed")
		}
	}()
	log.G(ctx).WithFields(log.Fields{"address": d.restAddr, "features": features, "tee": at.attester.TEE()}).Info("serving the guest REST API")
	d.onClose(func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := srv.Shutdown(sctx); err != nil {
			log.G(ctx).WithError(err).Warn("rest api server shutdown")
		}
		<-done
	})
	return nil
}
