package daemon

import (
	"context"
	"crypto/sha256"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cocoon-cc/cocoon/attest"
	"github.com/cocoon-cc/cocoon/attest/initdata"
	"github.com/cocoon-cc/cocoon/attest/snp"
	"github.com/cocoon-cc/cocoon/attest/snp/snptest"
	"github.com/cocoon-cc/cocoon/attest/tdx"
	"github.com/cocoon-cc/cocoon/attest/tdx/tdxtest"
	"github.com/cocoon-cc/cocoon/restapi"
)

func writeFile(t *testing.T, name, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func initDataDoc(aaToml, policy string) string {
	return "version = \"0.1.0\"\nalgorithm = \"sha256\"\n[data]\n\"aa.toml\" = '''\n" + aaToml + "'''\n\"policy.rego\" = '''\n" + policy + "'''\n"
}

const okPolicy = "package agent_policy\n\ndefault CreateContainerRequest := true\n"

func serveConfig(t *testing.T) Config {
	dir := t.TempDir()
	cfg := Default()
	cfg.Root = filepath.Join(dir, "root")
	cfg.Address = filepath.Join(dir, "cocoon.sock")
	cfg.Attestation.EventlogDir = filepath.Join(dir, "eventlog")
	return cfg
}

// serveOnce runs serve until it is ready or fails at start.
func serveOnce(t *testing.T, cfg Config) error {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- serve(ctx, cfg, restapi.FeatureAll) }()
	select {
	case err := <-done:
		cancel()
		return err
	case <-waitSocket(cfg.Address):
		cancel()
		return <-done
	}
}

func waitSocket(path string) <-chan struct{} {
	c := make(chan struct{})
	go func() {
		for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
			if _, err := os.Stat(path); err == nil {
				close(c)
				return
			}
		}
	}()
	return c
}

func withAttester(t *testing.T, a attest.Attester) {
	t.Helper()
	old := detectAttester
	detectAttester = func(string, string) (attest.Attester, error) { return a, nil }
	t.Cleanup(func() { detectAttester = old })
}

func TestInitDataMismatchRefusesToStart(t *testing.T) {
	doc := initDataDoc("[token_configs.kbs]\nurl = \"http://127.0.0.1:1\"\n", okPolicy)
	digest := sha256.Sum256([]byte(doc))
	other := sha256.Sum256([]byte("another document"))
	const upstream = "The initdata supplied by the parameter is inconsistent with that of the current platform."
	for _, tc := range []struct {
		name  string
		make  func(t *testing.T, d []byte) attest.Attester
		match bool
	}{
		{"snp match", func(t *testing.T, d []byte) attest.Attester {
			a, _ := snptest.New(t, snptest.WithHostData(snp.HostDataForInitData(d)))
			return a
		}, true},
		{"snp mismatch", func(t *testing.T, d []byte) attest.Attester {
			a, _ := snptest.New(t, snptest.WithHostData(snp.HostDataForInitData(other[:])))
			return a
		}, false},
		{"tdx match", func(t *testing.T, d []byte) attest.Attester {
			a, _ := tdxtest.New(t, tdxtest.WithMRConfigID(tdx.MRConfigIDForInitData(d)))
			return a
		}, true},
		{"tdx mismatch", func(t *testing.T, d []byte) attest.Attester {
			a, _ := tdxtest.New(t, tdxtest.WithMRConfigID(tdx.MRConfigIDForInitData(other[:])))
			return a
		}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			withAttester(t, tc.make(t, digest[:]))
			cfg := serveConfig(t)
			cfg.Attestation.InitData = writeFile(t, "initdata.toml", doc)
			err := serveOnce(t, cfg)
			if tc.match && err != nil {
				t.Fatalf("refused a matching init-data: %v", err)
			}
			if !tc.match && (err == nil || err.Error() != upstream) {
				t.Fatalf("error = %v, want upstream's %q", err, upstream)
			}
			if !tc.match {
				if _, statErr := os.Stat(cfg.Address); !os.IsNotExist(statErr) {
					t.Error("the snapshots socket was created before the init-data check")
				}
			}
		})
	}
}

func TestInitDataPolicySyntaxErrorRefusesToStart(t *testing.T) {
	cfg := serveConfig(t)
	cfg.Attestation.TEE = "sample"
	cfg.Attestation.InitData = writeFile(t, "initdata.toml", initDataDoc("", "package agent_policy\n\ndefault X := true\nthis is not rego\n"))
	err := serveOnce(t, cfg)
	if err == nil || !strings.Contains(err.Error(), "policy.rego") || !strings.Contains(err.Error(), "4") {
		t.Fatalf("error = %v, want a policy.rego error naming line 4", err)
	}
}

func TestInitDataConfiguresKBS(t *testing.T) {
	// aa.toml inside init-data names the KBS: /aa/token goes there, with
	// the init-data attached to the attestation.
	addr := freeAddr(t, "127.0.0.1")
	url := startKBSOnly(t)
	cfg := serveConfig(t)
	cfg.Attestation.TEE = "sample"
	cfg.REST.Address = addr
	cfg.Attestation.InitData = writeFile(t, "initdata.toml", initDataDoc("[token_configs.kbs]\nurl = \""+url+"\"\n", okPolicy))
	runServe(t, cfg, restapi.FeatureAll)
	code, body := get(t, "GET", "http://"+addr+"/aa/token?token_type=kbs", "")
	if code != 200 || !strings.Contains(body, `"token":"`) {
		t.Fatalf("/aa/token = %d %.100s", code, body)
	}
	code, body = get(t, "GET", "http://"+addr+"/cdh/resource/default/key/1", "")
	if code != 200 || body != "resource-bytes" {
		t.Errorf("/cdh/resource through aa.toml's KBS = %d %q", code, body)
	}
}

func TestInitDataBlockDeviceForm(t *testing.T) {
	doc := initDataDoc("", okPolicy)
	dev, err := initdata.EncodeDevice([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	digest := sha256.Sum256([]byte(doc))
	a, _ := snptest.New(t, snptest.WithHostData(snp.HostDataForInitData(digest[:])))
	withAttester(t, a)
	cfg := serveConfig(t)
	cfg.Attestation.InitData = writeFile(t, "initdata.img", string(dev))
	if err := serveOnce(t, cfg); err != nil {
		t.Fatalf("block-device init-data: %v", err)
	}
}

// serve runs the daemon with the REST features given, as cocoond does
// after resolving them.
func serve(ctx context.Context, cfg Config, features restapi.Features) error {
	cfg.REST.Features = string(features)
	return Serve(ctx, cfg)
}
