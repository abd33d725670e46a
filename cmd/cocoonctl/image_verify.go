package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/cocoon-cc/cocoon/image/registry"
	"github.com/cocoon-cc/cocoon/image/signature"
	"github.com/cocoon-cc/cocoon/internal/flagutil"
)

func init() {
	register(command{
		name:    "image verify",
		summary: "evaluate an image security policy for REF@DIGEST: prints allowed or the image-rs rejection (exit 1)",
		run: func(ctx context.Context, args []string) error {
			return runImageVerify(ctx, args, os.Stdout, os.Stderr)
		},
	})
}

// imageVerifyFlags are image verify's options.
type imageVerifyFlags struct {
	policy, sigstoreConfig, authFile, caFile *string
	insecure                                 flagutil.StringList
	kbs                                      kbsFlags
}

func parseImageVerifyFlags(args []string) (*imageVerifyFlags, string, digest.Digest, error) {
	fs := newFlags("image verify")
	f := &imageVerifyFlags{
		policy:         fs.String("policy", "", "containers-policy.json `file` (required)"),
		sigstoreConfig: fs.String("sigstore-config", "", "registries.d-style sigstore config YAML `file`"),
		authFile:       fs.String("auth-file", "", "registry auth `file` (containers-auth.json / docker config.json)"),
		caFile:         fs.String("ca", "", "extra trusted root `PEM` for registries"),
		kbs:            kbsFlags{timeout: 60 * time.Second},
	}
	fs.Var(&f.insecure, "insecure-registry", "plain-HTTP registry `host:port` (repeatable)")
	fs.StringVar(&f.kbs.url, "kbs-url", "", "KBS base `URL` for kbs:/// key paths in the policy")
	fs.StringVar(&f.kbs.cert, "kbs-cert", "", "extra trusted root `PEM` for an HTTPS KBS")
	fs.StringVar(&f.kbs.tee, "tee", "", "force the attester for the KBS: sample, tdx, snp or tpm (default: detect)")
	if err := fs.Parse(args); err != nil {
		return nil, "", "", err
	}
	if fs.NArg() != 1 || *f.policy == "" {
		return nil, "", "", fmt.Errorf("want --policy FILE and exactly one REF@DIGEST: %w", errUsage)
	}
	ref, dgst, err := splitRefDigest(fs.Arg(0))
	if err != nil {
		return nil, "", "", fmt.Errorf("%w: %w", err, errUsage)
	}
	return f, ref, dgst, nil
}

func runImageVerify(ctx context.Context, args []string, out, errOut io.Writer) error {
	f, ref, dgst, err := parseImageVerifyFlags(args)
	if err != nil {
		return err
	}
	o, err := f.options()
	if err != nil {
		return err
	}
	work, err := os.MkdirTemp("", "cocoonctl-image-verify-")
	if err != nil {
		return fmt.Errorf("create work dir: %w", err)
	}
	defer os.RemoveAll(work)
	o.WorkDir = work

	v, err := signature.New(ctx, o)
	if err != nil {
		return err
	}
	err = v.Check(ctx, ref, dgst)
	var rej *signature.RejectedError
	switch {
	case err == nil:
		_, err = fmt.Fprintln(out, "allowed")
		return err
	case errors.As(err, &rej):
		fmt.Fprintln(out, rej.Error())
		if rej.Reason != "" {
			fmt.Fprintf(errOut, "reason: %s\n", rej.Reason)
		}
		return err
	default:
		return err
	}
}

// readOptionalFile reads path ("" reads nothing).
func readOptionalFile(path, what string) ([]byte, error) {
	if path == "" {
		return nil, nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", what, err)
	}
	return b, nil
}

// options reads the files named and builds the verifier's options with the
// same registry client settings cocoond gives its puller.
func (f *imageVerifyFlags) options() (signature.Options, error) {
	var o signature.Options
	var authBytes, caBytes []byte
	for _, r := range []struct {
		path, what string
		dst        *[]byte
	}{
		{*f.policy, "--policy", &o.Policy},
		{*f.sigstoreConfig, "--sigstore-config", &o.SigstoreConfig},
		{*f.authFile, "--auth-file", &authBytes},
		{*f.caFile, "--ca", &caBytes},
	} {
		b, err := readOptionalFile(r.path, r.what)
		if err != nil {
			return o, err
		}
		*r.dst = b
	}
	ropts := registry.Options{Insecure: f.insecure}
	if len(caBytes) > 0 {
		ropts.Network.ExtraRootCAs = []string{string(caBytes)}
		if _, err := registry.NewTransport(ropts.Network); err != nil {
			return o, fmt.Errorf("--ca: %w", err)
		}
	}
	if len(authBytes) > 0 {
		af, err := registry.ParseAuthFile(authBytes)
		if err != nil {
			return o, fmt.Errorf("--auth-file: %w", err)
		}
		ropts.Keychain = af
	}
	o.Registry = registry.New(ropts)
	if f.kbs.url != "" {
		c, err := f.kbs.client()
		if err != nil {
			return o, err
		}
		o.Resources = c
	}
	return o, nil
}

// splitRefDigest splits REF@DIGEST. A reference without a tag keeps its
// digest (policy scopes then see repo@digest, as a pull by digest would).
func splitRefDigest(s string) (string, digest.Digest, error) {
	i := strings.LastIndex(s, "@")
	if i < 0 {
		return "", "", fmt.Errorf("%q has no @DIGEST", s)
	}
	d := digest.Digest(s[i+1:])
	if err := d.Validate(); err != nil {
		return "", "", fmt.Errorf("digest of %q: %w", s, err)
	}
	name := s[:i]
	if last := name[strings.LastIndex(name, "/")+1:]; strings.Contains(last, ":") {
		return name, d, nil // repo:tag, pinned to d
	}
	return s, d, nil
}
