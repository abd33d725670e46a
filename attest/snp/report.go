package snp

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"

	"github.com/google/uuid"
)

// Layout of the SEV-SNP ATTESTATION_REPORT (AMD SEV-SNP firmware ABI,
// table "ATTESTATION_REPORT Structure"). Only the offsets this package reads
// or writes are named.
const (
	// ReportSize is the size of a raw attestation report.
	ReportSize = 0x4A0

	offVersion         = 0x00
	offGuestSVN        = 0x04
	offPolicy          = 0x08
	offFamilyID        = 0x10
	offImageID         = 0x20
	offVMPL            = 0x30
	offSigAlgo         = 0x34
	offCurrentTCB      = 0x38
	offPlatInfo        = 0x40
	offKeyInfo         = 0x48
	offReportData      = 0x50
	offMeasurement     = 0x90
	offHostData        = 0xC0
	offIDKeyDigest     = 0xE0
	offAuthorKeyDigest = 0x110
	offReportID        = 0x140
	offReportIDMA      = 0x160
	offReportedTCB     = 0x180
	offCPUIDFamID      = 0x188
	offCPUIDModID      = 0x189
	offCPUIDStep       = 0x18A
	offChipID          = 0x1A0
	offCommittedTCB    = 0x1E0
	offCurrentVersion  = 0x1E8
	offCommittedVer    = 0x1EC
	offLaunchTCB       = 0x1F0
	offLaunchMitVector = 0x1F8
	offCurrentMitVec   = 0x200
	offSignature       = 0x2A0
	sigComponentSize   = 72

	// ReportDataSize is the size of REPORT_DATA; shorter report data is
	// zero-padded to it.
	ReportDataSize = 64
	// HostDataSize is the size of HOST_DATA, which carries the init-data
	// digest (zero-padded or truncated to 32 bytes).
	HostDataSize = 32
)

// Bytes is a byte string that serialises as a JSON array of numbers, the way
// serde serialises fixed-size byte arrays (and Vec<u8>) in the sev crate.
type Bytes []byte

// MarshalJSON writes b as [n,n,...].
func (b Bytes) MarshalJSON() ([]byte, error) {
	out := make([]byte, 0, 2+4*len(b))
	out = append(out, '[')
	for i, v := range b {
		if i > 0 {
			out = append(out, ',')
		}
		out = strconv.AppendUint(out, uint64(v), 10)
	}
	return append(out, ']'), nil
}

// UnmarshalJSON reads a JSON array of integers in 0..255. null leaves b nil.
func (b *Bytes) UnmarshalJSON(data []byte) error {
	var nums []uint8
	if err := json.Unmarshal(data, &nums); err != nil {
		return fmt.Errorf("byte array: %w", err)
	}
	*b = nums
	return nil
}

// TCBVersion is the sev crate's TcbVersion: fmc is present (Turin) or null.
type TCBVersion struct {
	FMC        *uint8 `json:"fmc"`
	Bootloader uint8  `json:"bootloader"`
	TEE        uint8  `json:"tee"`
	SNP        uint8  `json:"snp"`
	Microcode  uint8  `json:"microcode"`
}

// FirmwareVersion is the sev crate's Version (the CurrentVersion and
// CommittedVersion fields).
type FirmwareVersion struct {
	Major uint8 `json:"major"`
	Minor uint8 `json:"minor"`
	Build uint8 `json:"build"`
}

// Signature is the report's ECDSA P-384 signature, r and s as 72-byte
// little-endian integers (AMD format).
type Signature struct {
	R Bytes `json:"r"`
	S Bytes `json:"s"`
}

// Report is an attestation report in the JSON shape the sev crate (6.x,
// used by guest-components' snp attester) serialises its AttestationReport:
// field names and order, numbers for bitfields, arrays of numbers for bytes,
// null for fields the report version does not carry.
type Report struct {
	Version          uint32          `json:"version"`
	GuestSVN         uint32          `json:"guest_svn"`
	Policy           uint64          `json:"policy"`
	FamilyID         Bytes           `json:"family_id"`
	ImageID          Bytes           `json:"image_id"`
	VMPL             uint32          `json:"vmpl"`
	SigAlgo          uint32          `json:"sig_algo"`
	CurrentTCB       TCBVersion      `json:"current_tcb"`
	PlatInfo         uint64          `json:"plat_info"`
	KeyInfo          uint32          `json:"key_info"`
	ReportData       Bytes           `json:"report_data"`
	Measurement      Bytes           `json:"measurement"`
	HostData         Bytes           `json:"host_data"`
	IDKeyDigest      Bytes           `json:"id_key_digest"`
	AuthorKeyDigest  Bytes           `json:"author_key_digest"`
	ReportID         Bytes           `json:"report_id"`
	ReportIDMA       Bytes           `json:"report_id_ma"`
	ReportedTCB      TCBVersion      `json:"reported_tcb"`
	CPUIDFamID       *uint8          `json:"cpuid_fam_id"`
	CPUIDModID       *uint8          `json:"cpuid_mod_id"`
	CPUIDStep        *uint8          `json:"cpuid_step"`
	ChipID           Bytes           `json:"chip_id"`
	CommittedTCB     TCBVersion      `json:"committed_tcb"`
	Current          FirmwareVersion `json:"current"`
	Committed        FirmwareVersion `json:"committed"`
	LaunchTCB        TCBVersion      `json:"launch_tcb"`
	LaunchMitVector  *uint64         `json:"launch_mit_vector"`
	CurrentMitVector *uint64         `json:"current_mit_vector"`
	Signature        Signature       `json:"signature"`
}

// CertType is the sev crate's CertType enum: "ARK", "ASK", "VCEK", "VLEK",
// "CRL", "Empty", or {"OTHER":"<guid>"}.
type CertType struct {
	// Name is the variant name; "OTHER" when GUID is set.
	Name string
	// GUID is set for OTHER entries.
	GUID uuid.UUID
}

var certTypeGUIDs = map[string]string{
	"Empty": "00000000-0000-0000-0000-000000000000",
	"ARK":   "c0b406a4-a803-4952-9743-3fb6014cd0ae",
	"ASK":   "4ab7b379-bbac-4fe4-a02f-05aef327c782",
	"VCEK":  "63da758d-e664-4564-adc5-f4b93be8accd",
	"VLEK":  "a8074bc2-a25a-483e-aae6-39c045a0b8a1",
	"CRL":   "92f81bc3-5811-4d3d-97ff-d19f88dc67ea",
}

// CertTypeFromGUID maps a certificate-table GUID to its CertType, as the
// sev crate does.
func CertTypeFromGUID(g uuid.UUID) CertType {
	s := g.String()
	for name, guid := range certTypeGUIDs {
		if guid == s {
			return CertType{Name: name}
		}
	}
	return CertType{Name: "OTHER", GUID: g}
}

// MarshalJSON follows serde's externally tagged enum encoding.
func (c CertType) MarshalJSON() ([]byte, error) {
	if c.Name == "OTHER" {
		return json.Marshal(map[string]string{"OTHER": c.GUID.String()})
	}
	if _, ok := certTypeGUIDs[c.Name]; !ok {
		return nil, fmt.Errorf("unknown certificate type %q", c.Name)
	}
	return json.Marshal(c.Name)
}

// UnmarshalJSON accepts a variant name or {"OTHER":"<guid>"}.
func (c *CertType) UnmarshalJSON(data []byte) error {
	var name string
	if err := json.Unmarshal(data, &name); err == nil {
		if _, ok := certTypeGUIDs[name]; !ok {
			return fmt.Errorf("unknown certificate type %q", name)
		}
		*c = CertType{Name: name}
		return nil
	}
	var other map[string]string
	if err := json.Unmarshal(data, &other); err != nil {
		return fmt.Errorf("certificate type: %w", err)
	}
	s, ok := other["OTHER"]
	if !ok || len(other) != 1 {
		return errors.New(`certificate type object must be {"OTHER":"<guid>"}`)
	}
	g, err := uuid.Parse(s)
	if err != nil {
		return fmt.Errorf("certificate type OTHER guid: %w", err)
	}
	*c = CertType{Name: "OTHER", GUID: g}
	return nil
}

// CertTableEntry is the sev crate's CertTableEntry.
type CertTableEntry struct {
	CertType CertType `json:"cert_type"`
	Data     Bytes    `json:"data"`
}

// Evidence is the SNP evidence JSON of guest-components' snp attester.
type Evidence struct {
	AttestationReport Report           `json:"attestation_report"`
	CertChain         []CertTableEntry `json:"cert_chain"`
}

// generation is the processor family as far as TCB encoding is concerned.
type generation int

const (
	genLegacy generation = iota // Milan, Genoa
	genTurin
)

// reportGeneration decides the TCB encoding the way the sev crate does:
// for version 2 reports from the shape of CHIP_ID, otherwise from the CPUID
// family and model the report carries.
func reportGeneration(version uint32, famID, modID uint8, chipID []byte) (generation, error) {
	if version == 2 {
		if allZero(chipID) {
			// Masked chip ID: the sev crate refuses; Milan and Genoa
			// share the legacy encoding, which is the only one a
			// version 2 report can sensibly use.
			return genLegacy, nil
		}
		if allZero(chipID[8:]) {
			return genTurin, nil
		}
		return genLegacy, nil
	}
	switch famID {
	case 0x19:
		if modID <= 0x0F || (modID >= 0x10 && modID <= 0x1F) || (modID >= 0xA0 && modID <= 0xAF) {
			return genLegacy, nil
		}
	case 0x1A:
		if modID <= 0x11 {
			return genTurin, nil
		}
	}
	return 0, fmt.Errorf("unknown SEV-SNP processor: family %#x model %#x", famID, modID)
}

func allZero(b []byte) bool {
	for _, v := range b {
		if v != 0 {
			return false
		}
	}
	return true
}

func parseTCB(b []byte, g generation) TCBVersion {
	if g == genTurin {
		fmc := b[0]
		return TCBVersion{FMC: &fmc, Bootloader: b[1], TEE: b[2], SNP: b[3], Microcode: b[7]}
	}
	return TCBVersion{Bootloader: b[0], TEE: b[1], SNP: b[6], Microcode: b[7]}
}

func putTCB(b []byte, t TCBVersion, g generation) {
	if g == genTurin {
		if t.FMC != nil {
			b[0] = *t.FMC
		}
		b[1], b[2], b[3], b[7] = t.Bootloader, t.TEE, t.SNP, t.Microcode
		return
	}
	b[0], b[1], b[6], b[7] = t.Bootloader, t.TEE, t.SNP, t.Microcode
}

func cloneBytes(b []byte) Bytes { return append(Bytes(nil), b...) }

// ParseReport decodes a raw attestation report into its JSON form. Reserved
// bytes are dropped, as the sev crate does; they are zero in real reports.
func ParseReport(raw []byte) (*Report, error) {
	if len(raw) != ReportSize {
		return nil, fmt.Errorf("attestation report is %d bytes, want %d", len(raw), ReportSize)
	}
	le32 := func(off int) uint32 { return binary.LittleEndian.Uint32(raw[off:]) }
	le64 := func(off int) uint64 { return binary.LittleEndian.Uint64(raw[off:]) }
	r := &Report{Version: le32(offVersion)}
	if r.Version < 2 {
		return nil, fmt.Errorf("attestation report version %d is not supported", r.Version)
	}
	gen, err := reportGeneration(r.Version, raw[offCPUIDFamID], raw[offCPUIDModID], raw[offChipID:offChipID+64])
	if err != nil {
		return nil, err
	}
	r.GuestSVN = le32(offGuestSVN)
	r.Policy = le64(offPolicy)
	r.FamilyID = cloneBytes(raw[offFamilyID : offFamilyID+16])
	r.ImageID = cloneBytes(raw[offImageID : offImageID+16])
	r.VMPL = le32(offVMPL)
	r.SigAlgo = le32(offSigAlgo)
	r.CurrentTCB = parseTCB(raw[offCurrentTCB:offCurrentTCB+8], gen)
	r.PlatInfo = le64(offPlatInfo)
	r.KeyInfo = le32(offKeyInfo)
	r.ReportData = cloneBytes(raw[offReportData : offReportData+64])
	r.Measurement = cloneBytes(raw[offMeasurement : offMeasurement+48])
	r.HostData = cloneBytes(raw[offHostData : offHostData+32])
	r.IDKeyDigest = cloneBytes(raw[offIDKeyDigest : offIDKeyDigest+48])
	r.AuthorKeyDigest = cloneBytes(raw[offAuthorKeyDigest : offAuthorKeyDigest+48])
	r.ReportID = cloneBytes(raw[offReportID : offReportID+32])
	r.ReportIDMA = cloneBytes(raw[offReportIDMA : offReportIDMA+32])
	r.ReportedTCB = parseTCB(raw[offReportedTCB:offReportedTCB+8], gen)
	if r.Version >= 3 {
		fam, mod, step := raw[offCPUIDFamID], raw[offCPUIDModID], raw[offCPUIDStep]
		r.CPUIDFamID, r.CPUIDModID, r.CPUIDStep = &fam, &mod, &step
	}
	r.ChipID = cloneBytes(raw[offChipID : offChipID+64])
	r.CommittedTCB = parseTCB(raw[offCommittedTCB:offCommittedTCB+8], gen)
	r.Current = FirmwareVersion{Build: raw[offCurrentVersion], Minor: raw[offCurrentVersion+1], Major: raw[offCurrentVersion+2]}
	r.Committed = FirmwareVersion{Build: raw[offCommittedVer], Minor: raw[offCommittedVer+1], Major: raw[offCommittedVer+2]}
	r.LaunchTCB = parseTCB(raw[offLaunchTCB:offLaunchTCB+8], gen)
	if r.Version >= 5 {
		l, c := le64(offLaunchMitVector), le64(offCurrentMitVec)
		r.LaunchMitVector, r.CurrentMitVector = &l, &c
	}
	r.Signature = Signature{
		R: cloneBytes(raw[offSignature : offSignature+sigComponentSize]),
		S: cloneBytes(raw[offSignature+sigComponentSize : offSignature+2*sigComponentSize]),
	}
	return r, nil
}

// Raw encodes the report back into the firmware's binary layout (reserved
// bytes zero). Every byte field must have its exact ABI length.
func (r *Report) Raw() ([]byte, error) {
	if r.Version < 2 {
		return nil, fmt.Errorf("attestation report version %d is not supported", r.Version)
	}
	fields := []struct {
		name string
		b    []byte
		off  int
		size int
	}{
		{"family_id", r.FamilyID, offFamilyID, 16},
		{"image_id", r.ImageID, offImageID, 16},
		{"report_data", r.ReportData, offReportData, 64},
		{"measurement", r.Measurement, offMeasurement, 48},
		{"host_data", r.HostData, offHostData, 32},
		{"id_key_digest", r.IDKeyDigest, offIDKeyDigest, 48},
		{"author_key_digest", r.AuthorKeyDigest, offAuthorKeyDigest, 48},
		{"report_id", r.ReportID, offReportID, 32},
		{"report_id_ma", r.ReportIDMA, offReportIDMA, 32},
		{"chip_id", r.ChipID, offChipID, 64},
		{"signature.r", r.Signature.R, offSignature, sigComponentSize},
		{"signature.s", r.Signature.S, offSignature + sigComponentSize, sigComponentSize},
	}
	raw := make([]byte, ReportSize)
	for _, f := range fields {
		if len(f.b) != f.size {
			return nil, fmt.Errorf("attestation report field %s is %d bytes, want %d", f.name, len(f.b), f.size)
		}
		copy(raw[f.off:], f.b)
	}
	var fam, mod uint8
	if r.Version >= 3 {
		if r.CPUIDFamID == nil || r.CPUIDModID == nil || r.CPUIDStep == nil {
			return nil, fmt.Errorf("attestation report version %d lacks cpuid fields", r.Version)
		}
		fam, mod = *r.CPUIDFamID, *r.CPUIDModID
		raw[offCPUIDFamID], raw[offCPUIDModID], raw[offCPUIDStep] = fam, mod, *r.CPUIDStep
	}
	gen, err := reportGeneration(r.Version, fam, mod, r.ChipID)
	if err != nil {
		return nil, err
	}
	binary.LittleEndian.PutUint32(raw[offVersion:], r.Version)
	binary.LittleEndian.PutUint32(raw[offGuestSVN:], r.GuestSVN)
	binary.LittleEndian.PutUint64(raw[offPolicy:], r.Policy)
	binary.LittleEndian.PutUint32(raw[offVMPL:], r.VMPL)
	binary.LittleEndian.PutUint32(raw[offSigAlgo:], r.SigAlgo)
	putTCB(raw[offCurrentTCB:], r.CurrentTCB, gen)
	binary.LittleEndian.PutUint64(raw[offPlatInfo:], r.PlatInfo)
	binary.LittleEndian.PutUint32(raw[offKeyInfo:], r.KeyInfo)
	putTCB(raw[offReportedTCB:], r.ReportedTCB, gen)
	putTCB(raw[offCommittedTCB:], r.CommittedTCB, gen)
	raw[offCurrentVersion], raw[offCurrentVersion+1], raw[offCurrentVersion+2] = r.Current.Build, r.Current.Minor, r.Current.Major
	raw[offCommittedVer], raw[offCommittedVer+1], raw[offCommittedVer+2] = r.Committed.Build, r.Committed.Minor, r.Committed.Major
	putTCB(raw[offLaunchTCB:], r.LaunchTCB, gen)
	if r.Version >= 5 {
		if r.LaunchMitVector != nil {
			binary.LittleEndian.PutUint64(raw[offLaunchMitVector:], *r.LaunchMitVector)
		}
		if r.CurrentMitVector != nil {
			binary.LittleEndian.PutUint64(raw[offCurrentMitVec:], *r.CurrentMitVector)
		}
	}
	return raw, nil
}
