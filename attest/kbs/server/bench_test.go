package server_test

import (
	"os"
	"slices"
	"testing"
	"time"

	"github.com/containerd/log"

	"github.com/cocoon-cc/cocoon/attest"
	"github.com/cocoon-cc/cocoon/attest/kbs"
	"github.com/cocoon-cc/cocoon/attest/kbs/server"
	"github.com/cocoon-cc/cocoon/attest/sample"
)

func TestMain(m *testing.M) {
	// One log line per request is right for cocoon-kbs, noise here.
	_ = log.SetLevel("warn")
	os.Exit(m.Run())
}

const benchRuns = 200

func percentile(d []time.Duration, p float64) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	i := int(p*float64(len(s)-1) + 0.5)
	return s[i]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// benchTEE measures, against one KBS on loopback: a full RCAR handshake
// plus resource fetch with a fresh client (new TEE key, new evidence) and,
// as the baseline in the same run, a fetch with the client's cached token.
// Each b.N iteration is benchRuns of each; percentiles are over all runs.
func benchTEE(b *testing.B, a attest.Attester, v attest.Verifier) {
	// The benchmark measures the protocol, not the appraisal: the allow-all
	// policy serves every TEE, including fake hardware the default policy
	// does not affirm (sample, TDX without collateral).
	policy := server.AllowAllPolicy
	var extra []attest.Verifier
	if v != nil {
		extra = append(extra, v)
	}
	e := newEnv(b, server.Options{Policy: policy}, extra...)
	e.writeResource(b, "default/key/1", make([]byte, 32))
	var full, cached []time.Duration
	for b.Loop() {
		for range benchRuns {
			start := time.Now()
			c, err := kbs.NewClient(kbs.Config{URL: e.url(), Attester: a})
			if err != nil {
				b.Fatal(err)
			}
			if _, err := c.GetResource(bg, "kbs:///default/key/1"); err != nil {
				b.Fatal(err)
			}
			full = append(full, time.Since(start))
		}
		c, err := kbs.NewClient(kbs.Config{URL: e.url(), Attester: a})
		if err != nil {
			b.Fatal(err)
		}
		if _, err := c.Token(bg); err != nil {
			b.Fatal(err)
		}
		for range benchRuns {
			start := time.Now()
			if _, err := c.GetResource(bg, "kbs:///default/key/1"); err != nil {
				b.Fatal(err)
			}
			cached = append(cached, time.Since(start))
		}
		if c.Handshakes() != 1 {
			b.Fatalf("cached fetches re-attested: %d handshakes", c.Handshakes())
		}
	}
	b.ReportMetric(ms(percentile(full, 0.50)), "handshake+fetch-p50-ms")
	b.ReportMetric(ms(percentile(full, 0.99)), "handshake+fetch-p99-ms")
	b.ReportMetric(ms(percentile(cached, 0.50)), "cached-fetch-p50-ms")
	b.ReportMetric(ms(percentile(cached, 0.99)), "cached-fetch-p99-ms")
	b.ReportMetric(float64(percentile(full, 0.50))/float64(percentile(cached, 0.50)), "handshake/cached-p50-ratio")
	b.ReportMetric(float64(len(full)), "runs")
}

func BenchmarkAttestAndFetch(b *testing.B) {
	b.Run("sample", func(b *testing.B) { benchTEE(b, sample.NewAttester(), nil) })
	b.Run("tdx", func(b *testing.B) {
		a, v := tdxFixture.pair(b, nil, false)
		benchTEE(b, a, v)
	})
	b.Run("snp", func(b *testing.B) {
		a, v := snpFixture.pair(b, nil, false)
		benchTEE(b, a, v)
	})
	for _, f := range extraBenchFixtures {
		b.Run(f.tee, func(b *testing.B) {
			a, v := f.pair(b, nil, false)
			benchTEE(b, a, v)
		})
	}
}
