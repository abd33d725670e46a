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

// stringList is a repeatable string flag.
type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

func runImageVerify(ctx context.Context, args []string, out, errOut io.Writer) error {
	fs := newFlags("image verify")
	policy := fs.String("policy", "", "containers-policy.json `file` (required)")
	sigstoreConfig := fs.String("sigstore-config", "", "registries.d-style sigstore config YAML `file`")
	authFile := fs.String("auth-file", "", "registry auth `file` (containers-auth.json / docker config.json)")
	caFile := fs.String("ca", "", "extra trusted root `PEM` for registries")
	var insecure stringList
	fs.Var(&insecure, "insecure-registry", "plain-HTTP registry `host:port` (repeatable)")
	kbsURL := fs.String("kbs-url", "", "KBS base `URL` for kbs:/// key paths in the policy")
	kbsCert := fs.String("kbs-cert", "", "extra trusted root `PEM` for an HTTPS KBS")
	tee := fs.String("tee", "", "force the attester for the KBS: sample, tdx, snp or tpm (default: detect)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 || *policy == "" {
		return fmt.Errorf("want --policy FILE and exactly one REF@DIGEST: %w", errUsage)
	}
	ref, dgst, err := splitRefDigest(fs.Arg(0))
	if err != nil {
		return fmt.Errorf("%w: %w", err, errUsage)
	}
	var o signature.Options
	var authBytes, caBytes []byte
	readOpt := func(path, what string, dst *[]byte) error {
		if path == "" {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return fmt.Errorf("read %s: %w", what, err)
		}
		*dst = b
		return nil
	}
	for _, f := range []struct {
		path, what string
		dst        *[]byte
	}{
		{*policy, "--policy", &o.Policy},
		{*sigstoreConfig, "--sigstore-config", &o.SigstoreConfig},
		{*authFile, "--auth-file", &authBytes},
		{*caFile, "--ca", &caBytes},
	} {
		if err := readOpt(f.path, f.what, f.dst); err != nil {
			return err
		}
	}
	// The same registry client settings cocoond gives its puller.
	ropts := registry.Options{Insecure: insecure}
	if len(caBytes) > 0 {
		ropts.Network.ExtraRootCAs = []string{string(caBytes)}
		if _, err := registry.NewTransport(ropts.Network); err != nil {
			return fmt.Errorf("--ca: %w", err)
		}
	}
	if len(authBytes) > 0 {
		af, err := registry.ParseAuthFile(authBytes)
		if err != nil {
			return fmt.Errorf("--auth-file: %w", err)
		}
		ropts.Keychain = af
	}
	o.Registry = registry.New(ropts)
	if *kbsURL != "" {
		k := kbsFlags{url: *kbsURL, cert: *kbsCert, tee: *tee, timeout: 60 * time.Second}
		c, err := k.client()
		if err != nil {
			return err
		}
		o.Resources = c
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
