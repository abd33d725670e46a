package pull

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the pipeline's Prometheus collectors.
type Metrics struct {
	images   prometheus.Counter
	layers   prometheus.Counter
	failures *prometheus.CounterVec
	bytesIn  prometheus.Counter
	duration prometheus.Histogram
	inflight prometheus.Gauge
}

// NewMetrics returns unregistered collectors; Register adds them to a registry.
func NewMetrics() *Metrics {
	return &Metrics{
		images: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "cocoon", Subsystem: "pull", Name: "images_total",
			Help: "Image manifests resolved and verified for guest pulls.",
		}),
		layers: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "cocoon", Subsystem: "pull", Name: "layers_total",
			Help: "Layers pulled, unpacked and verified by cocoond.",
		}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "cocoon", Subsystem: "pull", Name: "failures_total",
			Help: "Failed layer pulls by reason.",
		}, []string{"reason"}),
		bytesIn: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "cocoon", Subsystem: "pull", Name: "bytes_total",
			Help: "Compressed layer bytes downloaded from registries.",
		}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "cocoon", Subsystem: "pull", Name: "layer_duration_seconds",
			Help:    "Time to download, unpack and verify one layer.",
			Buckets: prometheus.ExponentialBuckets(0.05, 2, 14),
		}),
		inflight: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "cocoon", Subsystem: "pull", Name: "layers_in_flight",
			Help: "Layers being downloaded and unpacked now.",
		}),
	}
}

// Register adds the collectors to r.
func (m *Metrics) Register(r prometheus.Registerer) error {
	for _, c := range []prometheus.Collector{m.images, m.layers, m.failures, m.bytesIn, m.duration, m.inflight} {
		if err := r.Register(c); err != nil {
			return err
		}
	}
	return nil
}

func (m *Metrics) image()           { m.images.Inc() }
func (m *Metrics) started()         { m.inflight.Inc() }
func (m *Metrics) finished()        { m.inflight.Dec() }
func (m *Metrics) bytes(n int)      { m.bytesIn.Add(float64(n)) }
func (m *Metrics) failure(r string) { m.failures.WithLabelValues(r).Inc() }

func (m *Metrics) done(d time.Duration) {
	m.layers.Inc()
	m.duration.Observe(d.Seconds())
}
