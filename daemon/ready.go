package daemon

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/cocoon-cc/cocoon/kata/ttrpcsock"
)

// probeTimeout bounds each readiness probe.
const probeTimeout = 2 * time.Second

// readiness is what /readyz looks at besides the listeners New opened.
type readiness struct {
	// serving is true while Run serves (false before and once stopping).
	serving atomic.Bool
	// lazy is the detached lazy FUSE server's mounter (nil when lazy pull
	// is off or in process).
	lazy *lazyServer
}

// readinessProbe names one part cocoond serves and asks whether it
// answers.
type readinessProbe struct {
	name  string
	check func(ctx context.Context) error
}

// readinessProbes lists what /readyz requires, from what New started:
// Run serving; the snapshots socket accepting connections and its gRPC
// health SERVING; each kata-agent ttRPC socket and the REST shim
// accepting connections; the detached lazy FUSE server answering with
// every lazy layer mounted on it (after a server crash, until watch has
// mounted them again, containers reading them get ENOTCONN).
//
// The KBS is not probed: cocoond attests on demand (a pull, a secret, a
// mount), a probe every few seconds would load the KBS, and a KBS outage
// is not cured by taking the node out of service; `cocoonctl doctor
// --kbs-url` makes an attestation attempt. Registries are not probed for
// the same reasons.
func (d *Daemon) readinessProbes() []readinessProbe {
	ps := []readinessProbe{{"serving", func(context.Context) error {
		if !d.ready.serving.Load() {
			return fmt.Errorf("not serving (starting or stopping)")
		}
		return nil
	}}}
	if d.rpc != nil {
		ps = append(ps, readinessProbe{"snapshots-socket", d.probeSnapshots})
	}
	for _, uri := range d.kataSockets {
		ps = append(ps, readinessProbe{"ttrpc " + uri, func(ctx context.Context) error {
			path, err := ttrpcsock.SocketPath(uri)
			if err != nil {
				return err
			}
			return dialProbe(ctx, "unix", path)
		}})
	}
	if d.restAddr != "" {
		ps = append(ps, readinessProbe{"rest " + d.restAddr, func(ctx context.Context) error { return dialProbe(ctx, "tcp", d.restAddr) }})
	}
	if d.ready.lazy != nil {
		ps = append(ps, readinessProbe{"lazy-fuse-server", d.ready.lazy.probe})
	}
	return ps
}

// probeSnapshots dials the snapshots socket (which catches a socket file
// removed or replaced by someone else) and asks the health service.
func (d *Daemon) probeSnapshots(ctx context.Context) error {
	if err := dialProbe(ctx, "unix", d.cfg.Address); err != nil {
		return err
	}
	hr, err := d.health.Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		return err
	}
	if s := hr.GetStatus(); s != healthpb.HealthCheckResponse_SERVING {
		return fmt.Errorf("gRPC health %s", s)
	}
	return nil
}

func dialProbe(ctx context.Context, network, addr string) error {
	var dl net.Dialer
	c, err := dl.DialContext(ctx, network, addr)
	if err != nil {
		return err
	}
	return c.Close()
}

// probe asks the lazy FUSE server for its mounts and reports the lazy
// layers not (yet) mounted on it again after it changed.
func (m *lazyServer) probe(ctx context.Context) error {
	if _, err := m.c.List(ctx); err != nil {
		return err
	}
	m.smu.Lock()
	n := len(m.failed)
	m.smu.Unlock()
	if n > 0 {
		return fmt.Errorf("%d lazy layers not mounted on the current server", n)
	}
	return nil
}

// serveReadyz answers 200 "ok" when every probe passes, else 503 with one
// line per probe ("[+]name ok" or "[-]name: error"); ?verbose lists the
// probes on 200 as well.
func (d *Daemon) serveReadyz(w http.ResponseWriter, r *http.Request) {
	var b strings.Builder
	failed := false
	for _, p := range d.readinessProbes() {
		ctx, cancel := context.WithTimeout(r.Context(), probeTimeout)
		err := p.check(ctx)
		cancel()
		if err != nil {
			failed = true
			fmt.Fprintf(&b, "[-]%s: %v\n", p.name, err)
		} else {
			fmt.Fprintf(&b, "[+]%s ok\n", p.name)
		}
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	switch {
	case failed:
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = w.Write([]byte(b.String()))
	case r.URL.Query().Has("verbose"):
		_, _ = w.Write([]byte(b.String() + "ok\n"))
	default:
		_, _ = w.Write([]byte("ok\n"))
	}
}

// serveHealthz is liveness: the process answers HTTP. It does not depend
// on the parts /readyz probes (restarting cocoond does not cure a part
// that is starting or a server being replaced; a snapshots server that
// fails ends Run, and with it the process).
func serveHealthz(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, _ = w.Write([]byte("ok\n"))
}

// handleHealth registers /readyz and /healthz on the metrics mux.
func (d *Daemon) handleHealth(mux *http.ServeMux) {
	mux.HandleFunc("/readyz", d.serveReadyz)
	mux.HandleFunc("/healthz", serveHealthz)
}
