// Command cocoon-kbs is a development Key Broker Service speaking Trustee's
// KBS protocol (RCAR 0.4.0): it attests sample, TDX, SNP and TPM evidence,
// issues EAR tokens and serves resources from a Trustee local-fs
// repository (DIR/<repo>/<type>/<tag>, or Trustee's flat local_fs names
// DIR/<repo>\x2F<type>\x2F<tag>; read at request time) as JWE.
//
//	cocoon-kbs --listen ADDR --repository DIR [--resource-policy FILE.rego]
//	           [--admin-public-key FILE] [--cert FILE --key FILE] ...
//
// It is for demos and tests. It must never log resource bytes, tokens or
// keys. Unlike Trustee (InsecureAllowAll by default), admin endpoints are
// denied unless --admin-public-key is given or --insecure-admin is set.
package main

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/containerd/log"

	"github.com/cocoon-cc/cocoon/attest"
	"github.com/cocoon-cc/cocoon/attest/kbs/server"
	"github.com/cocoon-cc/cocoon/attest/sample"
	"github.com/cocoon-cc/cocoon/attest/snp"
	"github.com/cocoon-cc/cocoon/attest/tdx"
	"github.com/cocoon-cc/cocoon/attest/tpm"
	"github.com/cocoon-cc/cocoon/internal/flagutil"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], nil)
	stop()
	switch {
	case err == nil:
	case errors.Is(err, flag.ErrHelp):
	default:
		fmt.Fprintf(os.Stderr, "cocoon-kbs: %v\n", err)
		os.Exit(1)
	}
}

type config struct {
	listen, repository, policyFile, adminKeyFile string
	insecureAdmin                                bool
	tokenKeyFile, certFile, keyFile, logLevel    string
	tokenLifetime, sessionTimeout                time.Duration
	maxSessions                                  int
	snpRoots, tpmAKs, tpmAAELPCRs                flagutil.StringList
	tdxRoots                                     string
	snpNoFetch, tdxCollateral                    bool
}

func parseFlags(args []string) (*config, error) {
	var c config
	fs := flag.NewFlagSet("cocoon-kbs", flag.ContinueOnError)
	fs.StringVar(&c.listen, "listen", "127.0.0.1:8080", "address to listen on")
	fs.StringVar(&c.repository, "repository", "", "resource directory: DIR/<repo>/<type>/<tag>, or Trustee local_fs's flat DIR/<repo>\\x2F<type>\\x2F<tag> (required)")
	fs.StringVar(&c.policyFile, "resource-policy", "", "resource policy (Rego, package policy, rule allow); default: Trustee's default policy, which denies the sample TEE")
	fs.StringVar(&c.adminKeyFile, "admin-public-key", "", "Ed25519 public key (PEM) verifying admin bearer JWTs")
	fs.BoolVar(&c.insecureAdmin, "insecure-admin", false, "allow admin endpoints without authentication (Trustee's InsecureAllowAll)")
	fs.StringVar(&c.tokenKeyFile, "token-key", "", "P-256 private key (PEM) signing tokens; default: generated at start")
	fs.DurationVar(&c.tokenLifetime, "token-lifetime", server.DefaultTokenLifetime, "attestation token lifetime")
	fs.DurationVar(&c.sessionTimeout, "session-timeout", server.DefaultSessionTimeout, "RCAR session timeout")
	fs.IntVar(&c.maxSessions, "max-sessions", server.DefaultMaxSessions, "most RCAR sessions open at once; /auth is refused beyond it")
	fs.StringVar(&c.certFile, "cert", "", "TLS certificate (PEM); with --key serves HTTPS")
	fs.StringVar(&c.keyFile, "key", "", "TLS private key (PEM)")
	fs.StringVar(&c.tdxRoots, "tdx-roots", "", "PEM `file` of trusted Intel SGX root CAs for TDX quotes; default: Intel's root")
	fs.BoolVar(&c.tdxCollateral, "tdx-collateral", false, "fetch Intel's TDX collateral (PCS) and refuse quotes whose TCB level is not UpToDate; without it tcb_status is Unknown and the default policy releases nothing to TDX")
	fs.Var(&c.snpRoots, "snp-roots", "PRODUCT=FILE: trusted AMD ASK+ARK PEM bundle for a product line (Milan, Genoa, Turin); repeatable; default: AMD's published roots")
	fs.BoolVar(&c.snpNoFetch, "snp-no-fetch", false, "never fetch VCEKs from AMD KDS")
	fs.Var(&c.tpmAAELPCRs, "tpm-aael-pcr", "`PCR` that only the AAEL event log extends (repeatable): evidence without a log that replays to it is refused")
	fs.Var(&c.tpmAKs, "tpm-trusted-ak", "PEM file of trusted TPM attestation public keys; repeatable; default: none, so tpm evidence verifies but is appraised contraindicated (ak_trusted=false) and the default policy releases nothing to it")
	fs.StringVar(&c.logLevel, "log-level", "info", "log level")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if c.repository == "" {
		return nil, errors.New("--repository is required")
	}
	if (c.certFile == "") != (c.keyFile == "") {
		return nil, errors.New("--cert and --key go together")
	}
	return &c, nil
}

func options(c *config) (server.Options, error) {
	opts := server.Options{
		Repository:     c.repository,
		InsecureAdmin:  c.insecureAdmin,
		TokenLifetime:  c.tokenLifetime,
		SessionTimeout: c.sessionTimeout,
		MaxSessions:    c.maxSessions,
	}
	if c.policyFile != "" {
		b, err := os.ReadFile(c.policyFile)
		if err != nil {
			return opts, fmt.Errorf("read resource policy: %w", err)
		}
		opts.Policy = string(b)
	}
	if c.adminKeyFile != "" {
		b, err := os.ReadFile(c.adminKeyFile)
		if err != nil {
			return opts, fmt.Errorf("read admin public key: %w", err)
		}
		if opts.AdminPublicKey, err = server.ParseAdminPublicKey(b); err != nil {
			return opts, err
		}
	}
	if c.tokenKeyFile != "" {
		k, err := readTokenKey(c.tokenKeyFile)
		if err != nil {
			return opts, err
		}
		opts.TokenKey = k
	}
	verifiers, err := verifiers(c)
	if err != nil {
		return opts, err
	}
	opts.Verifiers = verifiers
	return opts, nil
}

func readTokenKey(path string) (*ecdsa.PrivateKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read token key: %w", err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, fmt.Errorf("token key %s: no PEM block", path)
	}
	var k any
	switch blk.Type {
	case "EC PRIVATE KEY":
		k, err = x509.ParseECPrivateKey(blk.Bytes)
	default:
		k, err = x509.ParsePKCS8PrivateKey(blk.Bytes)
	}
	if err != nil {
		return nil, fmt.Errorf("token key %s: %w", path, err)
	}
	ek, ok := k.(*ecdsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("token key %s is %T, want an EC P-256 key", path, k)
	}
	return ek, nil
}

// verifiers builds one verifier per TEE; the sample verifier is always
// present (the default policy still denies sample evidence).
func verifiers(c *config) ([]attest.Verifier, error) {
	vs := []attest.Verifier{sample.NewVerifier()}
	for _, build := range []func(*config) (attest.Verifier, error){tdxVerifier, snpVerifier, tpmVerifier} {
		v, err := build(c)
		if err != nil {
			return nil, err
		}
		vs = append(vs, v)
	}
	return vs, nil
}

func tdxVerifier(c *config) (attest.Verifier, error) {
	tdxOpts := tdx.VerifierOptions{GetCollateral: c.tdxCollateral}
	if c.tdxRoots != "" {
		b, err := os.ReadFile(c.tdxRoots)
		if err != nil {
			return nil, fmt.Errorf("read TDX roots: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(b) {
			return nil, fmt.Errorf("TDX roots %s: no PEM certificate", c.tdxRoots)
		}
		tdxOpts.TrustedRoots = pool
	}
	xv, err := tdx.NewVerifier(tdxOpts)
	if err != nil {
		return nil, fmt.Errorf("TDX verifier: %w", err)
	}
	return xv, nil
}

func snpVerifier(c *config) (attest.Verifier, error) {
	snpOpts := snp.VerifierOptions{DisableCertFetching: c.snpNoFetch}
	for _, spec := range c.snpRoots {
		product, file, ok := strings.Cut(spec, "=")
		if !ok || product == "" || file == "" {
			return nil, fmt.Errorf("--snp-roots %q: want PRODUCT=FILE", spec)
		}
		b, err := os.ReadFile(file)
		if err != nil {
			return nil, fmt.Errorf("read SNP roots: %w", err)
		}
		if snpOpts.TrustedRootsPEM == nil {
			snpOpts.TrustedRootsPEM = map[string][]byte{}
		}
		snpOpts.TrustedRootsPEM[product] = append(snpOpts.TrustedRootsPEM[product], b...)
	}
	sv, err := snp.NewVerifier(snpOpts)
	if err != nil {
		return nil, fmt.Errorf("SNP verifier: %w", err)
	}
	return sv, nil
}

func tpmVerifier(c *config) (attest.Verifier, error) {
	var aks []crypto.PublicKey
	for _, file := range c.tpmAKs {
		keys, err := readPublicKeys(file)
		if err != nil {
			return nil, fmt.Errorf("TPM trusted AKs: %w", err)
		}
		aks = append(aks, keys...)
	}
	var aaelPCRs []int
	for _, v := range c.tpmAAELPCRs {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 || n > 23 {
			return nil, fmt.Errorf("--tpm-aael-pcr %q: want a PCR index 0-23", v)
		}
		aaelPCRs = append(aaelPCRs, n)
	}
	tv, err := tpm.NewVerifier(tpm.VerifierOptions{TrustedAKs: aks, AAELPCRs: aaelPCRs})
	if err != nil {
		return nil, fmt.Errorf("TPM verifier: %w", err)
	}
	return tv, nil
}

func readPublicKeys(path string) ([]crypto.PublicKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var keys []crypto.PublicKey
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		k, err := x509.ParsePKIXPublicKey(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		keys = append(keys, k)
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("%s: no PEM public key", path)
	}
	return keys, nil
}

// run serves until ctx ends (SIGTERM or SIGINT in main). ready, when not
// nil, receives the listening address.
func run(ctx context.Context, args []string, ready func(addr string)) error {
	c, err := parseFlags(args)
	if err != nil {
		return err
	}
	if err := log.SetLevel(c.logLevel); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	opts, err := options(c)
	if err != nil {
		return err
	}
	srv, err := server.New(opts)
	if err != nil {
		return err
	}
	defer srv.Close()

	ln, err := net.Listen("tcp", c.listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	hs := &http.Server{
		Handler:           srv,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       2 * time.Minute,
		WriteTimeout:      2 * time.Minute,
		IdleTimeout:       2 * time.Minute,
		BaseContext:       func(net.Listener) context.Context { return ctx },
	}
	scheme := "http"
	if c.certFile != "" {
		scheme = "https"
	}
	log.G(ctx).WithFields(log.Fields{
		"address": ln.Addr().String(), "scheme": scheme, "repository": c.repository,
		"custom_policy": c.policyFile != "", "admin": adminMode(opts),
	}).Info("cocoon-kbs listening")
	if ready != nil {
		ready(ln.Addr().String())
	}
	return serveUntilDone(ctx, hs, ln, c)
}

// serveUntilDone serves (TLS when a certificate is configured) until ctx
// ends, then shuts down gracefully.
func serveUntilDone(ctx context.Context, hs *http.Server, ln net.Listener, c *config) error {
	errc := make(chan error, 1)
	go func() {
		if c.certFile != "" {
			errc <- hs.ServeTLS(ln, c.certFile, c.keyFile)
		} else {
			errc <- hs.Serve(ln)
		}
	}()
	select {
	case err := <-errc:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	log.G(ctx).Info("cocoon-kbs stopping")
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := hs.Shutdown(sctx); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	return nil
}

func adminMode(o server.Options) string {
	switch {
	case o.AdminPublicKey != nil:
		return "ed25519-jwt"
	case o.InsecureAdmin:
		return "insecure-allow-all"
	default:
		return "deny-all"
	}
}
