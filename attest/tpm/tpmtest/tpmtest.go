//go:build cgo

package tpmtest

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"testing"

	"github.com/google/go-tpm-tools/simulator"

	"github.com/cocoon-cc/cocoon/attest"
	"github.com/cocoon-cc/cocoon/attest/tpm"
)

type config struct {
	pcrs        []int
	initData    []byte
	untrustedAK bool
	anyAK       bool
	aaelPath    string
	aaelPCRs    []int
}

// Option customises New.
type Option func(*config)

// WithPCRs quotes only these PCRs (default: all 24, as upstream).
func WithPCRs(pcrs ...int) Option { return func(c *config) { c.pcrs = pcrs } }

// WithInitData extends PCR8 with a 32-byte init-data digest before New
// returns, as the Attestation Agent does at start.
func WithInitData(digest []byte) Option { return func(c *config) { c.initData = digest } }

// WithUntrustedAK makes the verifier trust a different key, so the
// attester's evidence must be refused.
func WithUntrustedAK() Option { return func(c *config) { c.untrustedAK = true } }

// WithAAELPath sets the attester's AAELPath: the Attestation Agent event
// log file (attest/eventlog) whose bytes go into the evidence.
func WithAAELPath(path string) Option { return func(c *config) { c.aaelPath = path } }

// WithAAELPCRs sets the verifier's AAELPCRs: PCRs that must replay from
// the evidence's aa_eventlog even when it carries none.
func WithAAELPCRs(pcrs ...int) Option { return func(c *config) { c.aaelPCRs = pcrs } }

// WithAnyAK makes the verifier trust any AK (no TrustedAKs).
func WithAnyAK() Option { return func(c *config) { c.anyAK = true } }

// New starts a simulator and returns an attester on it and a verifier. The
// simulator is closed in tb.Cleanup.
func New(tb testing.TB, opts ...Option) (attest.Attester, attest.Verifier) {
	tb.Helper()
	var cfg config
	for _, o := range opts {
		o(&cfg)
	}
	sim, err := simulator.Get()
	if err != nil {
		tb.Fatalf("tpmtest: start simulator: %v", err)
	}
	a, err := tpm.NewAttester(tpm.AttesterOptions{TPM: sim, PCRs: cfg.pcrs, AAELPath: cfg.aaelPath})
	if err != nil {
		sim.Close()
		tb.Fatalf("tpmtest: attester: %v", err)
	}
	ta := a.(*tpm.Attester)
	tb.Cleanup(func() {
		if err := ta.Close(); err != nil {
			tb.Errorf("tpmtest: close simulator: %v", err)
		}
	})
	if cfg.initData != nil {
		if err := ta.ExtendRuntimeMeasurement(context.Background(), tpm.InitDataPCR, cfg.initData); err != nil {
			tb.Fatalf("tpmtest: extend init-data: %v", err)
		}
	}
	var trusted []crypto.PublicKey
	switch {
	case cfg.anyAK:
	case cfg.untrustedAK:
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			tb.Fatalf("tpmtest: generate key: %v", err)
		}
		trusted = []crypto.PublicKey{&k.PublicKey}
	default:
		ak, err := ta.AKPublic()
		if err != nil {
			tb.Fatalf("tpmtest: attestation key: %v", err)
		}
		trusted = []crypto.PublicKey{ak}
	}
	v, err := tpm.NewVerifier(tpm.VerifierOptions{TrustedAKs: trusted, AAELPCRs: cfg.aaelPCRs})
	if err != nil {
		tb.Fatalf("tpmtest: verifier: %v", err)
	}
	return a, v
}

// Tamper returns evidence whose signed quote message has one bit flipped
// (in the qualifying data); a verifier must reject it.
func Tamper(tb testing.TB, evidence json.RawMessage) json.RawMessage {
	tb.Helper()
	return Modify(tb, evidence, func(ev *tpm.Evidence, msg []byte) []byte {
		// TPMS_ATTEST: magic(4) type(2) qualifiedSigner(2+n) extraData(2+m).
		n := int(msg[6])<<8 | int(msg[7])
		msg[8+n+2] ^= 1
		return msg
	})
}

// Modify decodes evidence, lets f change it and the decoded quote message,
// and re-encodes both.
func Modify(tb testing.TB, evidence json.RawMessage, f func(ev *tpm.Evidence, msg []byte) []byte) json.RawMessage {
	tb.Helper()
	var ev tpm.Evidence
	if err := json.Unmarshal(evidence, &ev); err != nil {
		tb.Fatalf("tpmtest: decode evidence: %v", err)
	}
	msg, err := base64.StdEncoding.DecodeString(ev.TPMQuote.Message)
	if err != nil {
		tb.Fatalf("tpmtest: decode message: %v", err)
	}
	ev.TPMQuote.Message = base64.StdEncoding.EncodeToString(f(&ev, msg))
	out, err := json.Marshal(&ev)
	if err != nil {
		tb.Fatalf("tpmtest: encode evidence: %v", err)
	}
	return out
}
