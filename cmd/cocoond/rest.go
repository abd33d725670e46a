package main

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

// version is reported by /info; set with -ldflags "-X main.version=...".
var version = "dev"

// kernelCmdlineKey is Kata's switch for the REST API features.
const kernelCmdlineKey = "agent.guest_components_rest_api"

// restFeatures decides the feature set: flag, then the kernel command line,
// then the config file, then upstream's default (resource).
func restFeatures(flagValue, cmdlinePath, configValue string) (restapi.Features, string, error) {
	if flagValue != "" {
		f, err := restapi.ParseFeatures(flagValue)
		return f, "--rest-features", err
	}
	if b, err := os.ReadFile(cmdlinePath); err == nil {
		for _, field := range strings.Fields(string(b)) {
			if v, ok := strings.CutPrefix(field, kernelCmdlineKey+"="); ok {
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

// startREST serves the REST shim until ctx ends; it returns a stop function.
func startREST(ctx context.Context, address string, features restapi.Features, at *attestation) (func(), error) {
	ag, err := at.agent()
	if err != nil {
		return nil, err
	}
	h := restapi.New(restapi.Options{Version: version, Features: features, Agent: ag, CDH: at.resources()})
	l, err := net.Listen("tcp", address)
	if err != nil {
		return nil, fmt.Errorf("rest api listener: %w", err)
	}
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		MaxHeaderBytes:    64 << 10,
		BaseContext:       func(net.Listener) context.Context { return ctx },
	}
	go func() {
		if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.G(ctx).WithError(err).Error("rest api server failed")
		}
	}()
	log.G(ctx).WithFields(log.Fields{"address": l.Addr().String(), "features": features, "tee": at.attester.TEE()}).Info("serving the guest REST API")
	return func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := srv.Shutdown(sctx); err != nil {
			log.G(ctx).WithError(err).Warn("rest api server shutdown")
		}
	}, nil
}
