package tpm

import (
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"

	"github.com/cocoon-cc/cocoon/attest/eventlog"
)

// AAEL verification model.
//
// The evidence's "aa_eventlog" (see Evidence) is the Attestation Agent's
// runtime event log. On a vTPM each record's index is the PCR it extended
// (init_pcr, 17 by default), and the verifier assumes the AAEL is the only
// thing that extends the PCRs its records name: replaying the records of
// one index, in log order, from the PCR's reset value must give exactly the
// quoted value. The reset value is zero, except for PCRs 17–22 (the DRTM
// PCRs, which the TCG PC Client profile resets to all ones and a dynamic
// launch resets to zero), for which both are accepted. A log that omits,
// reorders, alters or adds a record, or a PCR the quote does not cover, is
// refused. PCRs that no record names are not checked against the log,
// unless they are among VerifierOptions.AAELPCRs: those must replay from
// the log (to their reset value when it has no record for them, or when
// the evidence carries no log at all), so a log emptied or removed after
// its entries reached the TPM is refused too.
//
// Every record must be an AAEL EV_EVENT_TAG entry carrying a SHA-256
// digest equal to SHA-256 of its event data, since the PCR binds the
// digest only and a policy reads the text.

// firstDRTMPCR..lastDRTMPCR are the PCRs whose reset value is all ones
// without a dynamic launch.
const firstDRTMPCR, lastDRTMPCR = 17, 22

// aaelClaims is the claim name of the verified AAEL entries.
const aaelClaims = "aa_eventlog"

// checkAAEL decodes and parses the evidence's aa_eventlog, requires it to
// replay to the quoted PCRs and returns its events as claims shaped like
// Trustee's event-log entries (index, type_name, digests, event,
// digest_matches_event, details{unicode_name "AAEL", string,
// data{domain, operation, content}}).
func checkAAEL(b64 string, quoted map[int][]byte, reserved []int) ([]any, error) {
	raw, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		return nil, fmt.Errorf("tpm: decode aa_eventlog: %w", err)
	}
	events, err := eventlog.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("tpm: parse aa_eventlog: %w", err)
	}
	alg := eventlog.SHA256.String()
	chains := map[int][][]byte{} // PCR → digests in log order
	for i, ev := range events {
		if ev.Type != eventlog.EvEventTag || ev.AAEL == nil {
			return nil, fmt.Errorf("tpm: aa_eventlog event %d (%s) is not an AAEL entry", i, ev.TypeName)
		}
		if ev.Index >= NumPCRs {
			return nil, fmt.Errorf("tpm: aa_eventlog event %d names PCR %d: %w", i, ev.Index, ErrBadRegister)
		}
		if len(reserved) > 0 && !slices.Contains(reserved, int(ev.Index)) {
			return nil, fmt.Errorf("tpm: aa_eventlog event %d names PCR %d, not one of the AAEL PCRs %v", i, ev.Index, reserved)
		}
		d, err := hex.DecodeString(ev.Digests[alg])
		if err != nil || len(d) != sha256.Size {
			return nil, fmt.Errorf("tpm: aa_eventlog event %d (PCR %d) has no %s digest", i, ev.Index, alg)
		}
		if !ev.DigestMatchesEvent {
			return nil, fmt.Errorf("tpm: aa_eventlog event %d (PCR %d): entry %q does not match its digest", i, ev.Index, ev.AAEL.Text)
		}
		chains[int(ev.Index)] = append(chains[int(ev.Index)], d)
	}
	indexes := slices.Clone(reserved)
	for pcr := range chains {
		indexes = append(indexes, pcr)
	}
	slices.Sort(indexes)
	indexes = slices.Compact(indexes)
	for _, pcr := range indexes {
		got, ok := quoted[pcr]
		if !ok {
			return nil, fmt.Errorf("tpm: the quote does not cover PCR %d, which aa_eventlog must replay to", pcr)
		}
		if !replaysTo(pcr, chains[pcr], got) {
			return nil, fmt.Errorf("tpm: aa_eventlog does not replay to PCR %d of the quote", pcr)
		}
	}
	out := make([]any, 0, len(events))
	for _, ev := range events {
		out = append(out, aaelEventClaim(ev))
	}
	return out, nil
}

// replaysTo reports whether extending pcr's reset value(s) with digests
// gives want.
func replaysTo(pcr int, digests [][]byte, want []byte) bool {
	starts := [][]byte{make([]byte, sha256.Size)}
	if pcr >= firstDRTMPCR && pcr <= lastDRTMPCR {
		starts = append(starts, bytes.Repeat([]byte{0xFF}, sha256.Size))
	}
	ok := 0
	for _, cur := range starts {
		for _, d := range digests {
			h := sha256.New()
			h.Write(cur)
			h.Write(d)
			cur = h.Sum(nil)
		}
		ok |= subtle.ConstantTimeCompare(cur, want)
	}
	return ok == 1
}

func aaelEventClaim(ev eventlog.Event) map[string]any {
	algs := make([]string, 0, len(ev.Digests))
	for a := range ev.Digests {
		algs = append(algs, a)
	}
	slices.Sort(algs)
	digests := make([]any, 0, len(algs))
	for _, a := range algs {
		digests = append(digests, map[string]any{"alg": a, "digest": ev.Digests[a]})
	}
	return map[string]any{
		"index":                ev.Index,
		"type_name":            ev.TypeName,
		"digests":              digests,
		"event":                base64.StdEncoding.EncodeToString(ev.Data),
		"digest_matches_event": ev.DigestMatchesEvent,
		"details": map[string]any{
			"unicode_name": "AAEL",
			"string":       ev.AAEL.Text,
			"data": map[string]any{
				"domain":    ev.AAEL.Domain,
				"operation": ev.AAEL.Operation,
				"content":   contentClaim(ev.AAEL.Content),
			},
		},
	}
}

// contentClaim is content parsed as JSON when it is exactly one JSON
// value, else the string, as Trustee's event-log parser reports it.
func contentClaim(content string) any {
	if !json.Valid([]byte(content)) {
		return content
	}
	dec := json.NewDecoder(bytes.NewReader([]byte(content)))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return content
	}
	return v
}
