package secretsfs_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/cocoon-cc/cocoon/attest/kbs/server"
	"github.com/cocoon-cc/cocoon/secretsfs"
	"github.com/cocoon-cc/cocoon/secretsfs/internal/devkbs"
	"github.com/cocoon-cc/cocoon/secretsfs/sealed"
)

// percentile returns the p-th percentile (0..100) of sorted durations.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(float64(len(sorted)-1) * p / 100)
	return sorted[i]
}

// quiet keeps the KBS access log (info level) out of benchmark output.
func quiet(b *testing.B) {
	std := logrus.StandardLogger()
	level := std.GetLevel()
	std.SetLevel(logrus.WarnLevel)
	b.Cleanup(func() { std.SetLevel(level) })
}

func report(b *testing.B, name string, d []time.Duration) time.Duration {
	slices.Sort(d)
	p50, p99 := percentile(d, 50), percentile(d, 99)
	b.ReportMetric(float64(p50.Nanoseconds()), name+"-p50-ns")
	b.ReportMetric(float64(p99.Nanoseconds()), name+"-p99-ns")
	return p50
}

// BenchmarkCachedSecretRead: open+read+close of a sealed file whose
// plaintext is cached, through secretsfs, against the same bytes in a file
// on /dev/shm (tmpfs), interleaved in the same run. Reports p50/p99 of
// both and the p50 ratio.
func BenchmarkCachedSecretRead(b *testing.B) {
	requireFUSE(b)
	quiet(b)
	ctx := context.Background()
	k := devkbs.Start(b, server.AllowAllPolicy)
	signer, jwk := newSigner(b)
	k.Put(b, "default/signing-key/sealed-secret", jwk)
	pt := bytes.Repeat([]byte("s"), 64)
	k.Put(b, "default/sealed-secret/bench", pt)
	src := b.TempDir()
	writeFile(b, filepath.Join(src, "secret"), sign(b, vault("kbs:///default/sealed-secret/bench"), signer, kid))
	client := k.Client(b)
	mnt := b.TempDir()
	mount(b, ctx, secretsfs.Options{Dir: mnt, Sources: map[string]string{"s": src}, Unsealer: &sealed.Unsealer{Resources: client}, TTL: time.Hour})
	fusePath := filepath.Join(mnt, "s", "secret")
	shm, err := os.CreateTemp("/dev/shm", "secretsfs-bench-")
	if err != nil {
		b.Skipf("no /dev/shm: %v", err)
	}
	b.Cleanup(func() { _ = os.Remove(shm.Name()) })
	if _, err := shm.Write(pt); err != nil {
		b.Fatal(err)
	}
	_ = shm.Close()
	if got, err := os.ReadFile(fusePath); err != nil || !bytes.Equal(got, pt) { // warm the cache
		b.Fatalf("warm read: %v", err)
	}
	fuseTimes := make([]time.Duration, 0, b.N)
	shmTimes := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		got, err := os.ReadFile(fusePath)
		t1 := time.Now()
		if err != nil || len(got) != len(pt) {
			b.Fatalf("read through secretsfs: %v", err)
		}
		got, err = os.ReadFile(shm.Name())
		t2 := time.Now()
		if err != nil || len(got) != len(pt) {
			b.Fatalf("read tmpfs: %v", err)
		}
		fuseTimes = append(fuseTimes, t1.Sub(t0))
		shmTimes = append(shmTimes, t2.Sub(t1))
	}
	b.StopTimer()
	f50 := report(b, "secretsfs", fuseTimes)
	s50 := report(b, "tmpfs", shmTimes)
	if s50 > 0 {
		b.ReportMetric(float64(f50)/float64(s50), "p50-ratio")
	}
}

// BenchmarkUnsealWarmToken: unseal of a vault secret (kid fetch, ES256
// verify, vault fetch) with a KBS token already held, so no RCAR handshake
// is in the measured path.
func BenchmarkUnsealWarmToken(b *testing.B) {
	quiet(b)
	ctx := context.Background()
	k := devkbs.Start(b, server.AllowAllPolicy)
	signer, jwk := newSigner(b)
	k.Put(b, "default/signing-key/sealed-secret", jwk)
	pt := []byte("unseal benchmark value")
	k.Put(b, "default/sealed-secret/bench", pt)
	s := sign(b, vault("kbs:///default/sealed-secret/bench"), signer, kid)
	client := k.Client(b)
	u := &sealed.Unsealer{Resources: client}
	if _, err := client.Token(ctx); err != nil {
		b.Fatal(err)
	}
	handshakes := client.Handshakes()
	times := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		got, err := u.Unseal(ctx, s)
		times = append(times, time.Since(t0))
		if err != nil || !bytes.Equal(got, pt) {
			b.Fatalf("unseal: %v", err)
		}
	}
	b.StopTimer()
	if client.Handshakes() != handshakes {
		b.Fatalf("token was not warm: %d handshakes during the run", client.Handshakes()-handshakes)
	}
	report(b, "unseal", times)
}
