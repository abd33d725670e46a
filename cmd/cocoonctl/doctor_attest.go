package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cocoon-cc/cocoon/attest/kbs"
	"github.com/cocoon-cc/cocoon/kata/api/aapb"
	"github.com/cocoon-cc/cocoon/kata/api/cdhpb"
	"github.com/cocoon-cc/cocoon/kata/ttrpcsock"
)

// registerKBSFlags registers doctor's KBS flags (kbs token's, prefixed).
func registerKBSFlags(fs *flag.FlagSet, k *kbsFlags) {
	fs.StringVar(&k.url, "kbs-url", "", "KBS base `URL` to attest to (aa.toml's kbs url); empty skips the check")
	fs.StringVar(&k.cert, "kbs-cert", "", "extra trusted root `PEM` for an HTTPS KBS")
	fs.StringVar(&k.tee, "tee", "", "force the attester: sample, tdx, snp or tpm (default: detect)")
	fs.StringVar(&k.keyAlg, "tee-key-algorithm", kbs.DefaultKeyAlgorithm, "TEE key algorithm sent to the KBS")
	fs.StringVar(&k.initData, "initdata", "", "init-data TOML `file` sent with the attestation")
}

// checkKBS: an attestation attempt, as cocoond makes one: detect the TEE,
// run the RCAR handshake with the KBS, get a token. The sample attester
// (no TEE) gets a warning even when the KBS accepts it.
func checkKBS(ctx context.Context, k kbsFlags) result {
	const c = "kbs"
	if k.url == "" {
		return skip(c, "no --kbs-url: no attestation attempted")
	}
	cfg, err := k.config()
	if err != nil {
		return fail(c, err.Error(), "check --kbs-cert and --initdata; outside a TEE guest (TDX, SEV-SNP, vTPM) name an attester with --tee")
	}
	client, err := kbs.NewClient(cfg)
	if err != nil {
		return fail(c, err.Error(), "check --kbs-url and --tee-key-algorithm")
	}
	tok, err := client.Token(quiet(ctx))
	if err != nil {
		return kbsFailure(k.url, cfg.Attester.TEE(), err)
	}
	what := fmt.Sprintf("%s attested %s evidence and issued a token", k.url, cfg.Attester.TEE())
	if tt, err := kbs.ParseTokenTimes(tok); err == nil && !tt.Expiry.IsZero() {
		what += " valid until " + tt.Expiry.UTC().Format(time.RFC3339)
	}
	if cfg.Attester.TEE() == "sample" {
		return warn(c, what+", but the sample attester proves nothing (no TEE)", "run in a TEE guest; a production KBS must refuse sample evidence")
	}
	return ok(c, what)
}

// kbsFailure tells a refused attestation from an unreachable KBS.
func kbsFailure(url, tee string, err error) result {
	const c = "kbs"
	if se, isStatus := errors.AsType[*kbs.StatusError](err); isStatus && se.Status == http.StatusUnauthorized {
		return fail(c, fmt.Sprintf("%s refused the %s evidence: %v", url, tee, err),
			"check the KBS's attestation policy and reference values for this TEE (Trustee: the attestation-service policy and RVPS)")
	}
	return fail(c, fmt.Sprintf("attesting to %s: %v", url, err), "check --kbs-url, the network path to the KBS and, for HTTPS, --kbs-cert")
}

// checkAASocket: the Attestation Agent answers GetTeeType on its ttRPC
// socket, as the kata-agent and api-server-rest call it.
func checkAASocket(ctx context.Context, uri string) result {
	const c = "aa-socket"
	start := "start cocoond --mode kata-guest before the kata-agent, or pass --aa-socket (cdh.toml [aa] aa_socket)"
	client, err := ttrpcsock.Dial(ctx, uri)
	if err != nil {
		return fail(c, err.Error(), start)
	}
	defer client.Close()
	resp, err := aapb.NewAttestationAgentServiceClient(client).GetTeeType(ctx, &aapb.GetTeeTypeRequest{})
	if err != nil {
		return fail(c, fmt.Sprintf("%s: GetTeeType: %v", uri, err), start)
	}
	return ok(c, fmt.Sprintf("%s answers GetTeeType: %s", uri, resp.GetTee()))
}

// checkCDHSocket: the Confidential Data Hub answers on its ttRPC socket.
// The harmless call is UnsealSecret of a string that is no sealed secret:
// a CDH answers with an error of its own; no answer, or Unimplemented
// (something else listens there), fails.
func checkCDHSocket(ctx context.Context, uri string) result {
	const c = "cdh-socket"
	start := "start cocoond --mode kata-guest before the kata-agent, or pass --cdh-socket (cdh.toml socket)"
	client, err := ttrpcsock.Dial(ctx, uri)
	if err != nil {
		return fail(c, err.Error(), start)
	}
	defer client.Close()
	_, err = cdhpb.NewSealedSecretServiceClient(client).UnsealSecret(ctx, &cdhpb.UnsealSecretInput{Secret: []byte("cocoonctl-doctor-probe")})
	st, isStatus := status.FromError(err)
	switch {
	case err == nil:
	case !isStatus || st.Code() == codes.Unavailable || st.Code() == codes.DeadlineExceeded:
		return fail(c, fmt.Sprintf("%s: UnsealSecret: %v", uri, err), start)
	case st.Code() == codes.Unimplemented:
		return fail(c, fmt.Sprintf("%s does not serve the CDH's SealedSecretService: %v", uri, err), "another program listens there: "+start)
	}
	return ok(c, fmt.Sprintf("%s answers UnsealSecret (a probe, refused as a CDH refuses a malformed secret)", uri))
}
