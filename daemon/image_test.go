package daemon

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"

	"github.com/cocoon-cc/cocoon/attest/config"
	"github.com/cocoon-cc/cocoon/attest/kbs"
	"github.com/cocoon-cc/cocoon/attest/sample"
)

func TestRegistryCredentialsFromKBS(t *testing.T) {
	url := startKBSOnly(t)
	repo := kbsRepos[url]
	if err := os.MkdirAll(filepath.Join(repo, "default", "credential"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(repo, "default", "credential", "auth"), []byte(`{"auths":{"127.0.0.1:5000":{"auth":"dXNlcjpwYXNz"}}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	client, err := kbs.NewClient(kbs.Config{URL: url, Attester: sample.NewAttester()})
	if err != nil {
		t.Fatal(err)
	}
	uri := "kbs:///default/credential/auth"
	cdh, _, err := config.ParseCDH([]byte("[kbc]\nname = \"cc_kbc\"\nurl = \""+url+"\"\n[image]\nauthenticated_registry_credentials_uri = \""+uri+"\"\n[image.image_pull_proxy]\nno_proxy = \"127.0.0.1\"\n"), config.TOML)
	if err != nil {
		t.Fatal(err)
	}
	at := &attestation{cdh: cdh, kbs: client}
	o, err := registryOptions(context.Background(), Default(), at)
	if err != nil {
		t.Fatal(err)
	}
	kc, ok := o.Keychain.(*kbsKeychain)
	if !ok || o.Network.NoProxy != "127.0.0.1" {
		t.Fatalf("options = %+v", o)
	}
	r, _ := name.NewRepository("127.0.0.1:5000/private/app")
	a, err := kc.ResolveContext(context.Background(), r)
	if err != nil {
		t.Fatal(err)
	}
	ac, _ := a.Authorization()
	if ac.Username != "user" || ac.Password != "pass" {
		t.Errorf("credentials = %+v", ac)
	}
	other, _ := name.NewRepository("quay.io/x/y")
	if a, _ := kc.Resolve(other); a == nil {
		t.Error("nil authenticator for a registry without credentials")
	}
}

func TestFetchURIForms(t *testing.T) {
	p := filepath.Join(t.TempDir(), "policy.json")
	if err := os.WriteFile(p, []byte("{}"), 0o600); err != nil {
		t.Fatal(err)
	}
	if b, err := fetchURI(context.Background(), noKBS{}, "file://"+p); err != nil || string(b) != "{}" {
		t.Errorf("file:// = %q, %v", b, err)
	}
	if _, err := fetchURI(context.Background(), noKBS{}, "https://example.com/x"); err == nil {
		t.Error("https:// accepted")
	}
	if _, err := fetchURI(context.Background(), noKBS{}, "kbs:///a/b/c"); err == nil {
		t.Error("kbs:// without a KBS succeeded")
	}
}

func TestRegistryConfigurationURI(t *testing.T) {
	conf := filepath.Join(t.TempDir(), "registries.conf")
	if err := os.WriteFile(conf, []byte("[[registry]]\nprefix = \"quay.io/mirrored\"\n[[registry.mirror]]\nlocation = \"127.0.0.1:5000/quay\"\ninsecure = true\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cdh, _, err := config.ParseCDH([]byte("[kbc]\nname = \"cc_kbc\"\n[image]\nregistry_configuration_uri = \"file://"+conf+"\"\n[image.registry_config]\n[[image.registry_config.registry]]\nprefix = \"inline.example\"\nblocked = true\n"), config.TOML)
	if err != nil {
		t.Fatal(err)
	}
	o, err := registryOptions(context.Background(), Default(), &attestation{cdh: cdh})
	if err != nil {
		t.Fatal(err)
	}
	locs, err := o.Hosts.Locations("quay.io/mirrored/app")
	if err != nil || len(locs) != 2 || locs[0].Repository != "127.0.0.1:5000/quay/app" || !locs[0].Insecure {
		t.Errorf("locations = %+v, %v", locs, err)
	}
	if _, err := o.Hosts.Locations("inline.example/x"); err != nil {
		t.Errorf("the inline table was used although the URI wins: %v", err)
	}
}
