package eventlog

import (
	"crypto/sha256"
	"crypto/sha512"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"strings"

	"github.com/cocoon-cc/cocoon/attest"
)

// Alg is a TCG algorithm identifier as it appears in crypto-agile records.
type Alg uint16

// Algorithms that appear in CCEL and AAEL logs.
const (
	SHA1   Alg = 0x0004
	SHA256 Alg = 0x000B
	SHA384 Alg = 0x000C
	SHA512 Alg = 0x000D
	SM3    Alg = 0x0012
)

// Size returns the digest size, or 0 for an unknown algorithm.
func (a Alg) Size() int {
	switch a {
	case SHA1:
		return 20
	case SHA256, SM3:
		return 32
	case SHA384:
		return 48
	case SHA512:
		return 64
	}
	return 0
}

// String is the name Trustee's parser prints ("SHA-384").
func (a Alg) String() string {
	switch a {
	case SHA1:
		return "SHA-1"
	case SHA256:
		return "SHA-256"
	case SHA384:
		return "SHA-384"
	case SHA512:
		return "SHA-512"
	case SM3:
		return "SM3"
	}
	return fmt.Sprintf("ALG(0x%04x)", uint16(a))
}

// New returns a hash for the algorithm; SM3 and unknown ids are refused.
func (a Alg) New() (hash.Hash, error) {
	switch a {
	case SHA256:
		return sha256.New(), nil
	case SHA384:
		return sha512.New384(), nil
	case SHA512:
		return sha512.New(), nil
	}
	return nil, fmt.Errorf("eventlog: hash algorithm %s is not supported", a)
}

func (a Alg) sum(parts ...[]byte) ([]byte, error) {
	h, err := a.New()
	if err != nil {
		return nil, err
	}
	for _, p := range parts {
		h.Write(p)
	}
	return h.Sum(nil), nil
}

// Platform is implemented by the attest.Platform of a TEE with runtime
// measurement registers.
type Platform interface {
	// EventLogAlg is the platform's CCEL hash, which AAEL entries are
	// measured with.
	EventLogAlg() Alg
	// EventLogMRIndex is the MR index a record of PCR pcr (>= 0) carries.
	EventLogMRIndex(pcr int) (uint32, error)
}

func platform(tee string) (Platform, bool) {
	p, ok := attest.LookupPlatform(tee).(Platform)
	return p, ok
}

// AlgForTEE is the platform CCEL hash upstream measures AAEL entries with
// (the TEE's registered Platform says: SHA-384 on TDX, SHA-256 on vTPM
// platforms). Other TEEs have no runtime measurement.
func AlgForTEE(tee string) (Alg, error) {
	if p, ok := platform(tee); ok {
		return p.EventLogAlg(), nil
	}
	return 0, fmt.Errorf("eventlog: TEE %q has no runtime measurement: %w", tee, attest.ErrNotSupported)
}

// ParseAlg maps an upstream HashAlgorithm name (sha256, sha384, sha512) to
// its TCG id.
func ParseAlg(name string) (Alg, error) {
	switch strings.ToLower(name) {
	case "sha256", "sha-256":
		return SHA256, nil
	case "sha384", "sha-384":
		return SHA384, nil
	case "sha512", "sha-512":
		return SHA512, nil
	case "sm3":
		return 0, errors.New("eventlog: sm3 is not supported by this build")
	}
	return 0, fmt.Errorf("eventlog: unknown hash algorithm %q", name)
}

// TCG event types used here.
const (
	EvNoAction = 0x3
	EvEventTag = 0x6
	// AAELTagID is the tagged-event id of AAEL entries, ASCII "AAEL" as a
	// u32 (its little-endian bytes read "LEAA").
	AAELTagID = 0x4141454C
)

// Entry is one AAEL entry.
type Entry struct {
	Domain    string `json:"domain"`
	Operation string `json:"operation"`
	Content   string `json:"content"`
}

// NewEntry validates an entry as upstream's AAEL Event::new: only a
// newline in the content is refused. Domain and operation are taken as
// given (upstream accepts empty ones, spaces and any UTF-8); the text of
// such an entry still hashes and recovers the same, since only the joined
// text is measured.
func NewEntry(domain, operation, content string) (Entry, error) {
	if strings.ContainsRune(content, '\n') {
		return Entry{}, errors.New("eventlog: content contains newline")
	}
	return Entry{Domain: domain, Operation: operation, Content: content}, nil
}

// ParseEntryText splits an entry text at its first two spaces, as
// upstream and Trustee do; content must not contain a newline.
func ParseEntryText(text string) (Entry, error) {
	domain, rest, ok := strings.Cut(text, " ")
	if !ok {
		return Entry{}, errors.New("eventlog: no space found in entry text")
	}
	operation, content, ok := strings.Cut(rest, " ")
	if !ok {
		return Entry{}, errors.New("eventlog: no second space found in entry text")
	}
	if strings.ContainsRune(content, '\n') {
		return Entry{}, errors.New("eventlog: content contains newline")
	}
	return Entry{Domain: domain, Operation: operation, Content: content}, nil
}

// Text is the measured text "domain operation content".
func (e Entry) Text() string { return e.Domain + " " + e.Operation + " " + e.Content }

// TaggedEvent returns the EV_EVENT_TAG event data for an entry text.
func TaggedEvent(text string) []byte {
	b := make([]byte, 8, 8+len(text))
	binary.LittleEndian.PutUint32(b, AAELTagID)
	binary.LittleEndian.PutUint32(b[4:], uint32(len(text)))
	return append(b, text...)
}

// Digest returns H(tagged event), the value extended into the register.
func (e Entry) Digest(alg Alg) ([]byte, error) { return alg.sum(TaggedEvent(e.Text())) }

// Record returns the TCG2 crypto-agile record for the entry and its digest.
func (e Entry) Record(mrIndex uint32, alg Alg) (record, digest []byte, err error) {
	ev := TaggedEvent(e.Text())
	digest, err = alg.sum(ev)
	if err != nil {
		return nil, nil, err
	}
	record = make([]byte, 0, 12+2+len(digest)+4+len(ev))
	record = binary.LittleEndian.AppendUint32(record, mrIndex)
	record = binary.LittleEndian.AppendUint32(record, EvEventTag)
	record = binary.LittleEndian.AppendUint32(record, 1)
	record = binary.LittleEndian.AppendUint16(record, uint16(alg))
	record = append(record, digest...)
	record = binary.LittleEndian.AppendUint32(record, uint32(len(ev)))
	record = append(record, ev...)
	return record, digest, nil
}

// MRIndex is the record MR index for a PCR on a TEE, as its registered
// Platform maps it (the CC measurement register on TDX: 1,7→1; 2–6→2;
// 8–15→3; others →4); the PCR itself on vTPM platforms and any TEE that
// does not say.
func MRIndex(tee string, pcr int) (uint32, error) {
	if pcr < 0 {
		return 0, fmt.Errorf("eventlog: register %d is not a PCR index", pcr)
	}
	if p, ok := platform(tee); ok {
		return p.EventLogMRIndex(pcr)
	}
	return uint32(pcr), nil
}

// InitPCRChooser is implemented by the Platform of a TEE on which a guest
// cannot extend some registers that aa.toml's init_pcr may name.
type InitPCRChooser interface {
	// EventLogInitPCR returns the register to record the AAEL's init
	// event in instead of requested, and why, or requested and "".
	EventLogInitPCR(requested int) (pcr int, why string)
}

// InitPCR is the register the AAEL's init event goes to on a TEE when
// aa.toml asks for requested: requested itself unless the TEE's Platform
// says its guests cannot extend it (why then says so).
func InitPCR(tee string, requested int) (pcr int, why string) {
	if c, ok := attest.LookupPlatform(tee).(InitPCRChooser); ok {
		return c.EventLogInitPCR(requested)
	}
	return requested, ""
}

// specIDHeader is the fixed EV_NO_ACTION record upstream puts in front of
// the AAEL when the platform has no CCEL: PCR 0, type 3, 20 zero bytes,
// size 37; 16 zero signature bytes, zeroed version fields, two algorithms
// (SHA-384/48, SM3/32), vendorInfoSize 0.
var specIDHeader = func() []byte {
	b := make([]byte, 0, 69)
	b = binary.LittleEndian.AppendUint32(b, 0)
	b = binary.LittleEndian.AppendUint32(b, EvNoAction)
	b = append(b, make([]byte, 20)...)
	b = binary.LittleEndian.AppendUint32(b, 37)
	b = append(b, make([]byte, 16+4+4)...) // signature, platformClass, version/errata/uintnSize
	b = binary.LittleEndian.AppendUint32(b, 2)
	b = binary.LittleEndian.AppendUint16(b, uint16(SHA384))
	b = binary.LittleEndian.AppendUint16(b, 48)
	b = binary.LittleEndian.AppendUint16(b, uint16(SM3))
	b = binary.LittleEndian.AppendUint16(b, 32)
	return append(b, 0)
}()

// SpecIDHeader returns a copy of the 69-byte header used without a CCEL.
func SpecIDHeader() []byte { return append([]byte(nil), specIDHeader...) }

var endFlag = []byte{0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF}

// CCELWithAAEL builds the (not yet base64-encoded) TDX evidence
// `cc_eventlog` value as upstream does: the CCEL ACPI table data trimmed at
// its first 8-byte all-0xFF or all-0x00 terminator, or the fixed Spec ID
// header when there is no CCEL but an AAEL exists, then the AAEL bytes,
// then 0xFF×8. aael == nil means "no AAEL file"; it returns nil when there
// is neither a CCEL nor an AAEL.
func CCELWithAAEL(ccel, aael []byte) ([]byte, error) {
	var out []byte
	switch {
	case len(ccel) > 0:
		n, err := trimLen(ccel)
		if err != nil {
			return nil, err
		}
		out = append(out, ccel[:n]...)
	case aael != nil:
		out = append(out, specIDHeader...)
	default:
		return nil, nil
	}
	out = append(out, aael...)
	return append(out, endFlag...), nil
}

// trimLen walks a CCEL and returns the offset of its terminator. Like
// upstream, a CCEL without a terminator is an error.
func trimLen(ccel []byte) (int, error) {
	r := &reader{b: ccel}
	hdr, err := r.specIDRecord()
	if err != nil {
		return 0, fmt.Errorf("eventlog: invalid CCEL: %w", err)
	}
	for {
		if r.left() < 8 {
			return 0, errors.New("eventlog: invalid CCEL: no end flag")
		}
		if r.terminated() {
			return r.off, nil
		}
		if _, err := r.record(hdr); err != nil {
			return 0, fmt.Errorf("eventlog: invalid CCEL: %w", err)
		}
	}
}
