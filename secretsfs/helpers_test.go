package secretsfs_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/hex"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containerd/log"
	"github.com/sirupsen/logrus"

	"github.com/cocoon-cc/cocoon/attest/kbs"
	"github.com/cocoon-cc/cocoon/secretsfs"
	"github.com/cocoon-cc/cocoon/secretsfs/sealed"
)

// requireFUSE skips tests that mount: they need root and /dev/fuse.
func requireFUSE(tb testing.TB) {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Skip("mounting FUSE needs root")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		tb.Skipf("no /dev/fuse: %v", err)
	}
}

// syncBuffer is a log sink safe for concurrent writers.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) Bytes() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return bytes.Clone(b.buf.Bytes())
}

// captureLogs sends containerd/log output at debug level, both through
// the returned context and through the global logrus logger (which the
// KBS server and any log.L user write to), into a buffer until the test
// ends.
func captureLogs(tb testing.TB) (context.Context, *syncBuffer) {
	tb.Helper()
	buf := &syncBuffer{}
	std := logrus.StandardLogger()
	out, level := std.Out, std.GetLevel()
	std.SetOutput(buf)
	std.SetLevel(logrus.TraceLevel)
	tb.Cleanup(func() {
		std.SetOutput(out)
		std.SetLevel(level)
	})
	l := logrus.New()
	l.SetOutput(buf)
	l.SetLevel(logrus.TraceLevel)
	return log.WithLogger(context.Background(), logrus.NewEntry(l)), buf
}

// countingGetter counts fetches per URI on the way to a real KBS client.
type countingGetter struct {
	g  kbs.ResourceGetter
	mu sync.Mutex
	n  map[string]int
}

func (c *countingGetter) GetResource(ctx context.Context, uri string) ([]byte, error) {
	c.mu.Lock()
	if c.n == nil {
		c.n = map[string]int{}
	}
	c.n[uri]++
	c.mu.Unlock()
	return c.g.GetResource(ctx, uri)
}

func (c *countingGetter) count(uri string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[uri]
}

// clock is a test clock for the TTL.
type clock struct{ offset atomic.Int64 }

func (c *clock) Now() time.Time          { return time.Now().Add(time.Duration(c.offset.Load())) }
func (c *clock) Advance(d time.Duration) { c.offset.Add(int64(d)) }

func marker(tb testing.TB, label string) []byte {
	tb.Helper()
	var b [12]byte
	if _, err := rand.Read(b[:]); err != nil {
		tb.Fatal(err)
	}
	return []byte(label + "-" + hex.EncodeToString(b[:]))
}

func newSigner(tb testing.TB) (*ecdsa.PrivateKey, []byte) {
	tb.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	jwk, err := sealed.PublicJWK(&k.PublicKey, "")
	if err != nil {
		tb.Fatal(err)
	}
	return k, jwk
}

func sign(tb testing.TB, s *sealed.Secret, k *ecdsa.PrivateKey, kid string) []byte {
	tb.Helper()
	out, err := sealed.Sign(s, k, kid)
	if err != nil {
		tb.Fatal(err)
	}
	return []byte(out)
}

func vault(uri string) *sealed.Secret {
	return &sealed.Secret{Version: sealed.Version, Vault: &sealed.Vault{Name: uri, Provider: sealed.ProviderKBS}}
}

func writeFile(tb testing.TB, path string, b []byte) {
	tb.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		tb.Fatal(err)
	}
	tmp := path + ".new"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		tb.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		tb.Fatal(err)
	}
}

// mount mounts opts and unmounts in t.Cleanup, also when the test fails.
func mount(tb testing.TB, ctx context.Context, opts secretsfs.Options) *secretsfs.FS {
	tb.Helper()
	f, err := secretsfs.Mount(ctx, opts)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := f.Unmount(); err != nil {
			tb.Errorf("unmount: %v", err)
		}
	})
	return f
}

// assertNotUnder fails if any regular file below dir contains one of the
// secrets.
func assertNotUnder(tb testing.TB, dir string, secrets ...[]byte) {
	tb.Helper()
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.Type().IsRegular() {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		for _, s := range secrets {
			if bytes.Contains(b, s) {
				tb.Errorf("plaintext %q found in %s", s, p)
			}
		}
		return nil
	})
	if err != nil {
		tb.Fatalf("scan %s: %v", dir, err)
	}
}
