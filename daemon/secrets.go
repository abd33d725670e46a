package daemon

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/containerd/log"

	"github.com/cocoon-cc/cocoon/secretsfs"
	"github.com/cocoon-cc/cocoon/secretsfs/sealed"
)

// provisionCredentials writes cdh.toml's [[credentials]] (KBS resources at
// fixed paths, tmpfs only) before anything else reads them.
func provisionCredentials(ctx context.Context, at *attestation) error {
	if at == nil || at.cdh == nil || len(at.cdh.Credentials) == 0 {
		return nil
	}
	creds := make([]secretsfs.Credential, 0, len(at.cdh.Credentials))
	for _, c := range at.cdh.Credentials {
		creds = append(creds, secretsfs.Credential(c))
	}
	if err := secretsfs.ProvisionCredentials(ctx, at.resources(), creds); err != nil {
		return fmt.Errorf("cdh.toml [[credentials]]: %w", err)
	}
	log.G(ctx).WithField("count", len(creds)).Info("credentials provisioned from the KBS")
	return nil
}

// unsealer resolves sealed secrets as cdh.toml says (verification keys and
// vault secrets from the KBS, envelope keys from the KBS or, with
// localKeyDir, local files), for the secrets filesystem and the CDH.
func (at *attestation) unsealer(localKeyDir string) *sealed.Unsealer {
	getter := at.resources()
	providers := map[string]sealed.EnvelopeProvider{sealed.ProviderKBS: &sealed.KBSProvider{Resources: getter}}
	if localKeyDir != "" {
		providers[sealed.ProviderLocal] = &sealed.LocalProvider{Dir: localKeyDir}
	}
	return &sealed.Unsealer{
		Resources:        getter,
		KeyDir:           sealed.DefaultKeyDir,
		SkipVerification: at.cdh != nil && at.cdh.SkipSealedSecretVerification,
		Providers:        providers,
	}
}

// mountSecrets mounts the secrets filesystem; the returned function
// unmounts it.
func mountSecrets(ctx context.Context, cfg SecretsConfig, at *attestation) (func(), error) {
	sources, err := secretsfs.ParseSources(cfg.Sources)
	if err != nil {
		return nil, fmt.Errorf("--secrets-source: %w", err)
	}
	ttl := secretsfs.DefaultTTL
	if cfg.TTL != "" {
		ttl, _ = time.ParseDuration(cfg.TTL) // validated with the config
	}
	getter := at.resources()
	if err := os.MkdirAll(cfg.Mount, 0o755); err != nil {
		return nil, fmt.Errorf("secrets mount point: %w", err)
	}
	fsys, err := secretsfs.Mount(ctx, secretsfs.Options{
		Dir:       cfg.Mount,
		Sources:   sources,
		Unsealer:  at.unsealer(cfg.LocalKeyDir),
		Resources: getter,
		UID:       cfg.UID,
		GID:       cfg.GID,
		TTL:       ttl,
	})
	if err != nil {
		return nil, fmt.Errorf("mount secrets filesystem on %s: %w", cfg.Mount, err)
	}
	log.G(ctx).WithFields(log.Fields{"mount": cfg.Mount, "sources": len(sources), "ttl": ttl}).Info("secrets filesystem mounted")
	return func() {
		if err := fsys.Unmount(); err != nil {
			log.G(ctx).WithError(err).Warn("unmount secrets filesystem")
		}
	}, nil
}
