package secretsfs_test

import (
	"context"
	"time"

	"github.com/containerd/log"

	"github.com/cocoon-cc/cocoon/attest/kbs"
	"github.com/cocoon-cc/cocoon/attest/sample"
	"github.com/cocoon-cc/cocoon/secretsfs"
	"github.com/cocoon-cc/cocoon/secretsfs/sealed"
)

// Example shows how cocoond wires the secrets filesystem: cdh.toml's
// [[credentials]] first, then the mount from --secrets-mount and the
// repeatable --secrets-source NAME=SRCDIR, unmounted at shutdown.
func Example() {
	ctx := context.Background()
	client, err := kbs.NewClient(kbs.Config{URL: "http://127.0.0.1:8080", Attester: sample.NewAttester()})
	if err != nil {
		log.G(ctx).WithError(err).Fatal("kbs client")
	}
	// cdh.toml [[credentials]]: written to tmpfs before anything reads them.
	creds := []secretsfs.Credential{{ResourceURI: "kbs:///default/signing-key/local", Path: "/run/confidential-containers/cdh/kbs/signing-key"}}
	if err := secretsfs.ProvisionCredentials(ctx, client, creds); err != nil {
		log.G(ctx).WithError(err).Fatal("credentials")
	}
	sources, err := secretsfs.ParseSources([]string{"app=/run/kata-containers/shared/containers/app-secret"})
	if err != nil {
		log.G(ctx).WithError(err).Fatal("--secrets-source")
	}
	unsealer := &sealed.Unsealer{
		Resources:        client,
		KeyDir:           sealed.DefaultKeyDir, // upstream's local kid directory
		SkipVerification: false,                // cdh.toml skip_sealed_secret_verification
		Providers: map[string]sealed.EnvelopeProvider{
			sealed.ProviderKBS:   &sealed.KBSProvider{Resources: client},
			sealed.ProviderLocal: &sealed.LocalProvider{Dir: "/run/cocoon/envelope-keys"},
		},
	}
	fsys, err := secretsfs.Mount(ctx, secretsfs.Options{
		Dir:       "/run/cocoon/secrets",
		Sources:   sources,
		Unsealer:  unsealer,
		Resources: client,
		UID:       1000,
		GID:       1000,
		TTL:       5 * time.Minute,
	})
	if err != nil {
		log.G(ctx).WithError(err).Fatal("mount secrets")
	}
	defer func() {
		if err := fsys.Unmount(); err != nil {
			log.G(ctx).WithError(err).Error("unmount secrets")
		}
	}()
}
