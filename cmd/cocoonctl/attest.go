package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/cocoon-cc/cocoon/attest"
	"github.com/cocoon-cc/cocoon/attest/detect"
	"github.com/cocoon-cc/cocoon/attest/kbs"
)

func init() {
	register(command{
		name:    "evidence",
		summary: "print the evidence JSON of the detected attester for --runtime-data",
		run:     func(ctx context.Context, args []string) error { return runEvidence(ctx, args, os.Stdout) },
	})
	register(command{
		name:    "kbs token",
		summary: "attest to a KBS (RCAR) and print the attestation token",
		run:     func(ctx context.Context, args []string) error { return runKBSToken(ctx, args, os.Stdout) },
	})
	register(command{
		name:    "kbs get-resource",
		summary: "attest to a KBS and write a resource (kbs:///repo/type/tag) to stdout",
		run:     func(ctx context.Context, args []string) error { return runKBSGetResource(ctx, args, os.Stdout) },
	})
}

// newAttester is swapped by tests.
var newAttester = detect.Attester

func runEvidence(ctx context.Context, args []string, out io.Writer) error {
	fs := newFlags("evidence")
	runtimeData := fs.String("runtime-data", "", "runtime data passed to the attester verbatim (padded or refused as the TEE does)")
	tee := fs.String("tee", "", "force the attester: sample, tdx, snp or tpm (default: detect)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q: %w", fs.Args(), errUsage)
	}
	a, err := newAttester(*tee)
	if err != nil {
		return err
	}
	ev, err := a.Evidence(ctx, []byte(*runtimeData))
	if err != nil {
		return fmt.Errorf("%s evidence: %w", a.TEE(), err)
	}
	_, err = fmt.Fprintf(out, "%s\n", ev)
	return err
}

type kbsFlags struct {
	url, cert, tee, keyAlg, initData string
	timeout                          time.Duration
}

func (k *kbsFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&k.url, "url", "", "KBS base `URL`, e.g. http://127.0.0.1:8080 (required)")
	fs.StringVar(&k.cert, "cert", "", "extra trusted root `PEM` for an HTTPS KBS (aa.toml kbs cert)")
	fs.StringVar(&k.tee, "tee", "", "force the attester: sample, tdx, snp or tpm (default: detect)")
	fs.StringVar(&k.keyAlg, "tee-key-algorithm", kbs.DefaultKeyAlgorithm, "TEE key: ECDH-ES+A256KW-P256, ECDH-ES+A256KW-P521 or RSA-OAEP-256")
	fs.StringVar(&k.initData, "initdata", "", "init-data TOML `file` sent with the attestation")
	fs.DurationVar(&k.timeout, "timeout", 60*time.Second, "HTTP timeout")
}

func (k *kbsFlags) client() (*kbs.Client, error) {
	if k.url == "" {
		return nil, fmt.Errorf("--url is required: %w", errUsage)
	}
	cfg, err := k.config()
	if err != nil {
		return nil, err
	}
	return kbs.NewClient(cfg)
}

// config reads the files the flags name and picks the attester.
func (k *kbsFlags) config() (kbs.Config, error) {
	cfg := kbs.Config{URL: k.url, TEEKeyAlgorithm: k.keyAlg, HTTPTimeout: k.timeout}
	var err error
	if k.cert != "" {
		if cfg.CertPEM, err = os.ReadFile(k.cert); err != nil {
			return kbs.Config{}, fmt.Errorf("read --cert: %w", err)
		}
	}
	if k.initData != "" {
		if cfg.InitDataTOML, err = os.ReadFile(k.initData); err != nil {
			return kbs.Config{}, fmt.Errorf("read --initdata: %w", err)
		}
	}
	var a attest.Attester
	if a, err = newAttester(k.tee); err != nil {
		return kbs.Config{}, fmt.Errorf("no attester: %w", err)
	}
	cfg.Attester = a
	return cfg, nil
}

func runKBSToken(ctx context.Context, args []string, out io.Writer) error {
	fs := newFlags("kbs token")
	var k kbsFlags
	k.register(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q: %w", fs.Args(), errUsage)
	}
	c, err := k.client()
	if err != nil {
		return err
	}
	tok, err := c.Token(ctx)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(out, tok)
	return err
}

func runKBSGetResource(ctx context.Context, args []string, out io.Writer) error {
	fs := newFlags("kbs get-resource")
	var k kbsFlags
	k.register(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return fmt.Errorf("want exactly one resource URI (kbs:///repo/type/tag): %w", errUsage)
	}
	c, err := k.client()
	if err != nil {
		return err
	}
	b, err := c.GetResource(ctx, fs.Arg(0))
	if err != nil {
		return err
	}
	_, err = out.Write(b)
	return err
}
