package tpm

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"slices"
	"strconv"
	"sync"

	"github.com/containerd/log"
	"github.com/google/go-tpm/legacy/tpm2"

	"github.com/cocoon-cc/cocoon/attest"
)

// tpmGeneratedValue is TPM_GENERATED_VALUE, the magic of TPMS_ATTEST.
const tpmGeneratedValue = 0xff544347

// VerifierOptions configures NewVerifier.
type VerifierOptions struct {
	// TrustedAKs are the attestation keys to trust (*rsa.PublicKey or
	// *ecdsa.PublicKey). Empty accepts any AK: the quote is still checked,
	// but the claims say "ak_trusted": false and a warning is logged once.
	// Anyone can sign such a quote with a software key; cocoon-kbs
	// appraises it as contraindicated.
	TrustedAKs []crypto.PublicKey
	// AAELPCRs are the PCRs only the Attestation Agent event log extends
	// (the attester's init_pcr). When set, each must be quoted and replay
	// from the evidence's aa_eventlog, even when the evidence carries none
	// (the PCR must then hold its reset value), and log records naming
	// other PCRs are refused. Empty checks only the PCRs the log names.
	AAELPCRs []int
}

// Verifier checks TPM evidence.
type Verifier struct {
	trusted  []crypto.PublicKey
	aaelPCRs []int
	warnOnce sync.Once
}

var _ attest.Verifier = (*Verifier)(nil)

type equaler interface{ Equal(crypto.PublicKey) bool }

// NewVerifier returns a TPM verifier.
func NewVerifier(opts VerifierOptions) (attest.Verifier, error) {
	for i, k := range opts.TrustedAKs {
		switch k.(type) {
		case *rsa.PublicKey, *ecdsa.PublicKey:
		default:
			return nil, fmt.Errorf("tpm: trusted AK %d has unsupported type %T", i, k)
		}
	}
	for _, p := range opts.AAELPCRs {
		if p < 0 || p >= NumPCRs {
			return nil, fmt.Errorf("tpm: AAEL PCR %d: %w", p, ErrBadRegister)
		}
	}
	return &Verifier{trusted: append([]crypto.PublicKey(nil), opts.TrustedAKs...), aaelPCRs: slices.Clone(opts.AAELPCRs)}, nil
}

// TEE returns "tpm".
func (*Verifier) TEE() string { return attest.TEETPM }

// legacyReportDataSize is the nonce size of older upstream attesters.
const legacyReportDataSize = 64

// verifiedQuote is a decoded, signature-checked TPM quote.
type verifiedQuote struct {
	attest *tpm2.AttestationData
	pcrs   map[int][]byte
}

// Verify checks the quote signature with the evidence's AK, that the AK is
// trusted (when TrustedAKs is set), that the qualifying data equals
// expectedReportData resized to 32 bytes (64 for evidence of older upstream
// attesters), that the PCR values match the quoted PCR digest, and, when
// the evidence carries aa_eventlog, that it replays to the quoted PCRs its
// records name and to the AAELPCRs (see checkAAEL); its entries are then
// claimed as "aa_eventlog".
func (v *Verifier) Verify(ctx context.Context, evidence json.RawMessage, expectedReportData []byte) (attest.Claims, error) {
	var ev Evidence
	if err := json.Unmarshal(evidence, &ev); err != nil {
		return nil, fmt.Errorf("tpm: decode evidence: %w", err)
	}
	akDER, err := base64.StdEncoding.DecodeString(ev.AKPublic)
	if err != nil {
		return nil, fmt.Errorf("tpm: decode ak_public: %w", err)
	}
	ak, err := x509.ParsePKIXPublicKey(akDER)
	if err != nil {
		return nil, fmt.Errorf("tpm: parse ak_public: %w", err)
	}
	trusted := false
	if len(v.trusted) > 0 {
		for _, t := range v.trusted {
			if t.(equaler).Equal(ak) {
				trusted = true
				break
			}
		}
		if !trusted {
			return nil, errors.New("tpm: attestation key is not trusted")
		}
	} else {
		v.warnOnce.Do(func() {
			log.G(ctx).Warn("tpm verifier has no trusted attestation keys: accepting any AK, claims carry ak_trusted=false")
		})
	}
	q, err := verifyQuote(&ev.TPMQuote, ak)
	if err != nil {
		return nil, err
	}
	// Current upstream quotes 32 bytes; attesters before guest-components
	// commit 79554cf8 quoted 64. Both are the expected report data resized.
	size := ReportDataSize
	if len(q.attest.ExtraData) == legacyReportDataSize {
		size = legacyReportDataSize
	}
	want := make([]byte, size)
	copy(want, expectedReportData)
	if subtle.ConstantTimeCompare(q.attest.ExtraData, want) != 1 {
		return nil, errors.New("tpm: quote nonce does not match the expected report data")
	}
	digest := sha256.Sum256(akDER)
	claims := attest.Claims{
		"report_data":      hex.EncodeToString(q.attest.ExtraData),
		"ak_trusted":       trusted,
		"ak_digest":        hex.EncodeToString(digest[:]),
		"firmware_version": q.attest.FirmwareVersion,
		"reset_count":      q.attest.ClockInfo.ResetCount,
		"restart_count":    q.attest.ClockInfo.RestartCount,
	}
	bank := map[string]string{}
	for i, val := range q.pcrs {
		s := hex.EncodeToString(val)
		bank[strconv.Itoa(i)] = s
		claims[fmt.Sprintf("pcr%02d", i)] = s
	}
	claims["pcrs"] = map[string]any{"sha256": bank}
	if pcr8, ok := q.pcrs[InitDataPCR]; ok {
		claims["init_data"] = hex.EncodeToString(pcr8)
	}
	if ev.AAEventLog != "" || len(v.aaelPCRs) > 0 {
		events, err := checkAAEL(ev.AAEventLog, q.pcrs, v.aaelPCRs)
		if err != nil {
			return nil, err
		}
		claims[aaelClaims] = events
	}
	return claims, nil
}

// verifyQuote checks the signature over TPMS_ATTEST, that it is a quote of
// the SHA-256 bank, and that the listed PCR values hash to its PCR digest.
func verifyQuote(quote *Quote, ak crypto.PublicKey) (*verifiedQuote, error) {
	msg, err := base64.StdEncoding.DecodeString(quote.Message)
	if err != nil {
		return nil, fmt.Errorf("tpm: decode quote message: %w", err)
	}
	rawSig, err := base64.StdEncoding.DecodeString(quote.Signature)
	if err != nil {
		return nil, fmt.Errorf("tpm: decode quote signature: %w", err)
	}
	sig, err := tpm2.DecodeSignature(bytes.NewBuffer(rawSig))
	if err != nil {
		return nil, fmt.Errorf("tpm: parse quote signature: %w", err)
	}
	if err := checkSignature(msg, sig, ak); err != nil {
		return nil, err
	}
	ad, err := tpm2.DecodeAttestationData(msg)
	if err != nil {
		return nil, fmt.Errorf("tpm: parse quote message: %w", err)
	}
	if ad.Magic != tpmGeneratedValue || ad.Type != tpm2.TagAttestQuote || ad.AttestedQuoteInfo == nil {
		return nil, fmt.Errorf("tpm: quote message is not a TPM-generated quote (magic %#x, type %#x)", ad.Magic, ad.Type)
	}
	sel := ad.AttestedQuoteInfo.PCRSelection
	if sel.Hash != tpm2.AlgSHA256 {
		return nil, fmt.Errorf("tpm: quote covers PCR bank %v, want SHA-256", sel.Hash)
	}
	if len(quote.PCRs) != len(sel.PCRs) {
		return nil, fmt.Errorf("tpm: evidence lists %d PCR values, quote selects %d", len(quote.PCRs), len(sel.PCRs))
	}
	h := sha256.New()
	pcrs := make(map[int][]byte, len(sel.PCRs))
	for i, idx := range sel.PCRs {
		val, err := hex.DecodeString(quote.PCRs[i])
		if err != nil || len(val) != sha256.Size {
			return nil, fmt.Errorf("tpm: PCR %d value %q is not 32 bytes of hex", idx, quote.PCRs[i])
		}
		h.Write(val)
		pcrs[idx] = val
	}
	if subtle.ConstantTimeCompare(h.Sum(nil), ad.AttestedQuoteInfo.PCRDigest) != 1 {
		return nil, errors.New("tpm: PCR values do not match the quoted PCR digest")
	}
	return &verifiedQuote{attest: ad, pcrs: pcrs}, nil
}

func checkSignature(msg []byte, sig *tpm2.Signature, ak crypto.PublicKey) error {
	var hashAlg tpm2.Algorithm
	switch {
	case sig.RSA != nil:
		hashAlg = sig.RSA.HashAlg
	case sig.ECC != nil:
		hashAlg = sig.ECC.HashAlg
	default:
		return fmt.Errorf("tpm: unsupported quote signature algorithm %v", sig.Alg)
	}
	hash, err := hashAlg.Hash()
	if err != nil {
		return fmt.Errorf("tpm: quote signature hash: %w", err)
	}
	if hash != crypto.SHA256 && hash != crypto.SHA384 && hash != crypto.SHA512 {
		return fmt.Errorf("tpm: quote signature hash %v is not allowed", hash)
	}
	hh := hash.New()
	hh.Write(msg)
	digest := hh.Sum(nil)
	switch pub := ak.(type) {
	case *rsa.PublicKey:
		switch sig.Alg {
		case tpm2.AlgRSASSA:
			err = rsa.VerifyPKCS1v15(pub, hash, digest, sig.RSA.Signature)
		case tpm2.AlgRSAPSS:
			err = rsa.VerifyPSS(pub, hash, digest, sig.RSA.Signature, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthAuto})
		default:
			err = fmt.Errorf("signature algorithm %v does not fit an RSA key", sig.Alg)
		}
	case *ecdsa.PublicKey:
		if sig.Alg != tpm2.AlgECDSA || sig.ECC == nil {
			err = fmt.Errorf("signature algorithm %v does not fit an ECDSA key", sig.Alg)
		} else if !ecdsa.Verify(pub, digest, sig.ECC.R, new(big.Int).Set(sig.ECC.S)) {
			err = errors.New("ECDSA verification failure")
		}
	default:
		err = fmt.Errorf("unsupported attestation key type %T", ak)
	}
	if err != nil {
		return fmt.Errorf("tpm: quote signature: %w", err)
	}
	return nil
}
