package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/cocoon-cc/cocoon/attest/kbs"
	"github.com/cocoon-cc/cocoon/internal/flagutil"
	"github.com/cocoon-cc/cocoon/secretsfs/sealed"
)

func init() {
	register(command{
		name:    "secret seal vault",
		summary: "print a signed sealed secret pointing at a KBS resource (upstream CDH format)",
		run: func(ctx context.Context, args []string) error {
			return runSecretSealVault(ctx, args, os.Stdout)
		},
	})
	register(command{
		name:    "secret seal envelope",
		summary: "encrypt a value (A256GCM) under a KBS or local key and print it as a signed sealed secret",
		run: func(ctx context.Context, args []string) error {
			return runSecretSealEnvelope(ctx, args, os.Stdin, os.Stdout)
		},
	})
	register(command{
		name:    "secret unseal",
		summary: "verify and resolve a sealed secret (attesting to the KBS) and write the plaintext to stdout",
		run: func(ctx context.Context, args []string) error {
			return runSecretUnseal(ctx, args, os.Stdin, os.Stdout)
		},
	})
}

// signingFlags are shared by the seal commands.
type signingFlags struct {
	kid, jwkPath string
}

func (s *signingFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&s.kid, "signing-kid", "", "`kid` the verifier resolves: kbs:///repo/type/tag holding the public JWK, or a local credential name (required)")
	fs.StringVar(&s.jwkPath, "signing-jwk-path", "", "`file` with the EC P-256 private JWK that signs (required)")
}

func (s *signingFlags) sign(secret *sealed.Secret, out io.Writer) error {
	if s.kid == "" || s.jwkPath == "" {
		return fmt.Errorf("--signing-kid and --signing-jwk-path are required: %w", errUsage)
	}
	b, err := os.ReadFile(s.jwkPath)
	if err != nil {
		return fmt.Errorf("read --signing-jwk-path: %w", err)
	}
	key, err := sealed.ParsePrivateJWK(b)
	clear(b)
	if err != nil {
		return fmt.Errorf("--signing-jwk-path %s: %w", s.jwkPath, err)
	}
	str, err := sealed.Sign(secret, key, s.kid)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(out, str)
	return err
}

func runSecretSealVault(_ context.Context, args []string, out io.Writer) error {
	fs := newFlags("secret seal vault")
	uri := fs.String("resource-uri", "", "kbs:///repo/type/tag `URI` whose bytes are the secret (required)")
	provider := fs.String("provider", sealed.ProviderKBS, "vault provider (cocoon resolves only kbs)")
	var sf signingFlags
	sf.register(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q: %w", fs.Args(), errUsage)
	}
	if *uri == "" {
		return fmt.Errorf("--resource-uri is required: %w", errUsage)
	}
	if *provider == sealed.ProviderKBS {
		if _, err := kbs.ParseResourceURI(*uri); err != nil {
			return fmt.Errorf("--resource-uri: %w", err)
		}
	}
	return sf.sign(&sealed.Secret{Version: sealed.Version, Vault: &sealed.Vault{Name: *uri, Provider: *provider}}, out)
}

func runSecretSealEnvelope(_ context.Context, args []string, stdin io.Reader, out io.Writer) error {
	fs := newFlags("secret seal envelope")
	provider := fs.String("provider", sealed.ProviderKBS, "provider that unwraps the data key in the TEE: kbs (key-id is the KEK's kbs:/// URI) or local (key-id is a key file name)")
	keyID := fs.String("key-id", "", "key-encryption key `id` (required)")
	kekPath := fs.String("kek-path", "", "`file` with the 32-byte key-encryption key, raw or base64 (required; the same key the KBS resource or local key file holds)")
	ptPath := fs.String("plaintext-path", "-", "`file` with the secret value; - reads stdin")
	var sf signingFlags
	sf.register(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q: %w", fs.Args(), errUsage)
	}
	if *keyID == "" || *kekPath == "" {
		return fmt.Errorf("--key-id and --kek-path are required: %w", errUsage)
	}
	if err := checkEnvelopeKeyID(*provider, *keyID); err != nil {
		return err
	}
	if sf.kid == "" || sf.jwkPath == "" {
		return fmt.Errorf("--signing-kid and --signing-jwk-path are required: %w", errUsage)
	}
	raw, err := os.ReadFile(*kekPath)
	if err != nil {
		return fmt.Errorf("read --kek-path: %w", err)
	}
	kek, err := sealed.ParseKEK(raw)
	clear(raw)
	if err != nil {
		return fmt.Errorf("--kek-path %s: %w", *kekPath, err)
	}
	defer clear(kek)
	pt, err := readPlaintext(*ptPath, stdin)
	if err != nil {
		return err
	}
	defer clear(pt)
	env, err := sealed.SealEnvelope(pt, kek, *provider, *keyID)
	if err != nil {
		return err
	}
	return sf.sign(&sealed.Secret{Version: sealed.Version, Envelope: env}, out)
}

// checkEnvelopeKeyID checks --key-id fits the provider that resolves it.
func checkEnvelopeKeyID(provider, keyID string) error {
	switch provider {
	case sealed.ProviderKBS:
		if _, err := kbs.ParseResourceURI(keyID); err != nil {
			return fmt.Errorf("--key-id for the kbs provider: %w", err)
		}
	case sealed.ProviderLocal:
		if strings.ContainsAny(keyID, `/\`) || keyID == "." || keyID == ".." {
			return fmt.Errorf("--key-id for the local provider must be a file name: %w", errUsage)
		}
	default:
		return fmt.Errorf("--provider %q: want kbs or local: %w", provider, errUsage)
	}
	return nil
}

// readPlaintext reads the secret value from path ("-": stdin), bounded by
// the sealed secret size limit.
func readPlaintext(path string, stdin io.Reader) ([]byte, error) {
	var pt []byte
	var err error
	if path == "-" {
		pt, err = io.ReadAll(io.LimitReader(stdin, sealed.MaxSize+1))
	} else {
		pt, err = os.ReadFile(path)
	}
	if err != nil {
		return nil, fmt.Errorf("read plaintext: %w", err)
	}
	if len(pt) > sealed.MaxSize {
		clear(pt)
		return nil, fmt.Errorf("plaintext exceeds %d bytes", sealed.MaxSize)
	}
	return pt, nil
}

func runSecretUnseal(ctx context.Context, args []string, stdin io.Reader, out io.Writer) error {
	fs := newFlags("secret unseal")
	var k kbsFlags
	fs.StringVar(&k.url, "kbs-url", "", "KBS base `URL`, e.g. http://127.0.0.1:8080 (needed for kbs:/// kids, vault secrets and the kbs envelope provider)")
	fs.StringVar(&k.cert, "kbs-cert", "", "extra trusted root `PEM` for an HTTPS KBS")
	fs.StringVar(&k.tee, "tee", "", "force the attester: sample, tdx, snp or tpm (default: detect)")
	fs.StringVar(&k.keyAlg, "tee-key-algorithm", kbs.DefaultKeyAlgorithm, "TEE key: ECDH-ES+A256KW-P256, ECDH-ES+A256KW-P521 or RSA-OAEP-256")
	fs.StringVar(&k.initData, "initdata", "", "init-data TOML `file` sent with the attestation")
	fs.DurationVar(&k.timeout, "timeout", 60*time.Second, "HTTP timeout")
	var credList flagutil.StringList
	fs.Var(&credList, "credential", "local verification key for a kid that is not a resource URI, `KID=FILE` (public JWK; repeatable)")
	keyDir := fs.String("key-dir", "", "resolve other local kids as files in `dir` (upstream: "+sealed.DefaultKeyDir+")")
	localKeys := fs.String("local-key-dir", "", "`dir` of key-encryption keys for the local envelope provider")
	skip := fs.Bool("skip-verification", false, "accept unsigned secrets and skip signature checks (cdh.toml skip_sealed_secret_verification)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return fmt.Errorf("want exactly one sealed secret (or - for stdin): %w", errUsage)
	}
	creds, err := flagutil.Pairs(credList, "KID=FILE")
	if err != nil {
		return fmt.Errorf("--credential %w: %w", err, errUsage)
	}
	in := []byte(fs.Arg(0))
	if fs.Arg(0) == "-" {
		b, err := io.ReadAll(io.LimitReader(stdin, sealed.MaxSize+1))
		if err != nil {
			return fmt.Errorf("read stdin: %w", err)
		}
		in = []byte(strings.TrimSpace(string(b)))
	}
	u := &sealed.Unsealer{Credentials: creds, KeyDir: *keyDir, SkipVerification: *skip, Providers: map[string]sealed.EnvelopeProvider{}}
	if k.url != "" {
		c, err := k.client()
		if err != nil {
			return err
		}
		u.Resources = c
		u.Providers[sealed.ProviderKBS] = &sealed.KBSProvider{Resources: c}
	}
	if *localKeys != "" {
		u.Providers[sealed.ProviderLocal] = &sealed.LocalProvider{Dir: *localKeys}
	}
	pt, err := u.Unseal(ctx, in)
	if err != nil {
		return err
	}
	defer clear(pt)
	_, err = out.Write(pt)
	return err
}
