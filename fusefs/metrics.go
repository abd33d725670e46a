package fusefs

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the lazy layers' Prometheus collectors, shared by all layers.
type Metrics struct {
	verifyFailures prometheus.Counter
	requests       prometheus.Counter
	fetched        prometheus.Counter
	badLayers      prometheus.Counter
}

// NewMetrics returns the collectors registered on r.
func NewMetrics(r prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		verifyFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "cocoon", Subsystem: "lazy", Name: "chunk_verify_failures_total",
			Help: "Chunks of lazily read layers whose bytes did not match their TOC digest (reads refused with EIO).",
		}),
		requests: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "cocoon", Subsystem: "lazy", Name: "range_requests_total",
			Help: "Range reads of lazily read layer blobs (coalesced chunk fetches).",
		}),
		fetched: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "cocoon", Subsystem: "lazy", Name: "fetched_bytes_total",
			Help: "Compressed bytes fetched by range for lazily read layers (background completion excluded).",
		}),
		badLayers: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "cocoon", Subsystem: "lazy", Name: "bad_layers_total",
			Help: "Lazy layers whose completed blob failed its digest or diff ID check.",
		}),
	}
	for _, c := range []prometheus.Collector{m.verifyFailures, m.requests, m.fetched, m.badLayers} {
		if err := r.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}
