package tdx

import (
	"bytes"
	"crypto/sha512"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// TCG algorithm identifiers and digest sizes found in CC event logs.
var digestSizes = map[uint16]int{0x0004: 20, 0x000B: 32, 0x000C: 48, 0x000D: 64, 0x0012: 32}

var algNames = map[uint16]string{0x0004: "SHA-1", 0x000B: "SHA-256", 0x000C: "SHA-384", 0x000D: "SHA-512", 0x0012: "SM3"}

const (
	algSHA384    = 0x000C
	evNoAction   = 0x00000003
	evEventTag   = 0x00000006
	aaelTaggedID = 0x4141454C // "AAEL", little-endian on the wire
)

var eventTypeNames = map[uint32]string{
	0x0: "EV_PREBOOT_CERT", 0x1: "EV_POST_CODE", 0x2: "EV_UNUSED", 0x3: "EV_NO_ACTION", 0x4: "EV_SEPARATOR",
	0x5: "EV_ACTION", 0x6: "EV_EVENT_TAG", 0x7: "EV_S_CRTM_CONTENTS", 0x8: "EV_S_CRTM_VERSION",
	0x9: "EV_CPU_MICROCODE", 0xA: "EV_PLATFORM_CONFIG_FLAGS", 0xB: "EV_TABLE_OF_DEVICES", 0xC: "EV_COMPACT_HASH",
	0xD: "EV_IPL", 0xE: "EV_IPL_PARTITION_DATA", 0xF: "EV_NONHOST_CODE", 0x10: "EV_NONHOST_CONFIG",
	0x11: "EV_NONHOST_INFO", 0x12: "EV_OMIT_BOOT_DEVICE_EVENTS", 0x13: "EV_POST_CODE2",
	0x80000000: "EV_EFI_EVENT_BASE", 0x80000001: "EV_EFI_VARIABLE_DRIVER_CONFIG", 0x80000002: "EV_EFI_VARIABLE_BOOT",
	0x80000003: "EV_EFI_BOOT_SERVICES_APPLICATION", 0x80000004: "EV_EFI_BOOT_SERVICES_DRIVER",
	0x80000005: "EV_EFI_RUNTIME_SERVICES_DRIVER", 0x80000006: "EV_EFI_GPT_EVENT", 0x80000007: "EV_EFI_ACTION",
	0x80000008: "EV_EFI_PLATFORM_FIRMWARE_BLOB", 0x80000009: "EV_EFI_HANDOFF_TABLES",
	0x8000000A: "EV_EFI_PLATFORM_FIRMWARE_BLOB2", 0x8000000B: "EV_EFI_HANDOFF_TABLES2",
	0x8000000C: "EV_EFI_VARIABLE_BOOT2", 0x8000000D: "EV_EFI_GPT_EVENT2", 0x80000010: "EV_EFI_HCRTM_EVENT",
	0x800000E0: "EV_EFI_VARIABLE_AUTHORITY", 0x800000E1: "EV_EFI_SPDM_FIRMWARE_BLOB",
	0x800000E2: "EV_EFI_SPDM_FIRMWARE_CONFIG",
}

// Event is one record of a CC event log.
type Event struct {
	// MRIndex is the CC measurement register (1..4 = RTMR0..3; 0 = MRTD).
	MRIndex uint32
	Type    uint32
	// Digests maps a TCG algorithm identifier to the event digest.
	Digests map[uint16][]byte
	// algs keeps the digests' order as in the log.
	algs []uint16
	Data []byte
}

// ParseEventLog parses a cc_eventlog: a TCG 1.2 format first record (the
// Spec ID event), then crypto-agile records, up to an 8-byte all-0xFF or
// all-0x00 terminator or the end of the data.
func ParseEventLog(log []byte) ([]Event, error) {
	r := &reader{b: log}
	// First record: PCR, type, SHA-1 digest, event size, event.
	r.u32()
	r.u32()
	r.take(20)
	r.take(int(r.u32()))
	if r.err != nil {
		return nil, fmt.Errorf("tdx: cc_eventlog header: %w", r.err)
	}
	var events []Event
	for len(r.b) > 0 {
		if len(r.b) >= 8 {
			w := binary.LittleEndian.Uint64(r.b)
			if w == ^uint64(0) || w == 0 {
				break
			}
		}
		ev := Event{MRIndex: r.u32(), Type: r.u32(), Digests: map[uint16][]byte{}}
		count := r.u32()
		for i := uint32(0); i < count && r.err == nil; i++ {
			alg := r.u16()
			size, ok := digestSizes[alg]
			if !ok && r.err == nil {
				return nil, fmt.Errorf("tdx: cc_eventlog record %d: unsupported digest algorithm %#x", len(events), alg)
			}
			if _, dup := ev.Digests[alg]; !dup {
				ev.algs = append(ev.algs, alg)
			}
			ev.Digests[alg] = r.take(size)
		}
		ev.Data = r.take(int(r.u32()))
		if r.err != nil {
			return nil, fmt.Errorf("tdx: cc_eventlog record %d: %w", len(events), r.err)
		}
		events = append(events, ev)
	}
	return events, nil
}

type reader struct {
	b   []byte
	err error
}

func (r *reader) take(n int) []byte {
	if r.err != nil {
		return nil
	}
	if n < 0 || n > len(r.b) {
		r.err = errors.New("truncated")
		return nil
	}
	out := r.b[:n:n]
	r.b = r.b[n:]
	return out
}

func (r *reader) u32() uint32 {
	b := r.take(4)
	if b == nil {
		return 0
	}
	return binary.LittleEndian.Uint32(b)
}

func (r *reader) u16() uint16 {
	b := r.take(2)
	if b == nil {
		return 0
	}
	return binary.LittleEndian.Uint16(b)
}

// digestMatchesData reports whether the SHA-384 digest is the digest of
// the event data (true for AAEL events, usually false for firmware events,
// whose digest covers something else).
func (ev Event) digestMatchesData() bool {
	d, ok := ev.Digests[algSHA384]
	if !ok {
		return false
	}
	sum := sha512.Sum384(ev.Data)
	return bytes.Equal(d, sum[:])
}

// isAAEL reports whether ev is an Attestation Agent event.
func (ev Event) isAAEL() bool {
	return ev.Type == evEventTag && len(ev.Data) >= 8 && binary.LittleEndian.Uint32(ev.Data) == aaelTaggedID
}

// ReplayRTMRs extends four zero RTMRs with the SHA-384 digest of every
// event whose MR index is 1..4 (EV_NO_ACTION events are not extended).
func ReplayRTMRs(events []Event) ([4][RTMRSize]byte, error) {
	var rtmrs [4][RTMRSize]byte
	for i, ev := range events {
		if ev.Type == evNoAction || ev.MRIndex == 0 {
			continue
		}
		if ev.MRIndex > 4 {
			return rtmrs, fmt.Errorf("tdx: cc_eventlog event %d has MR index %d, beyond RTMR3", i, ev.MRIndex)
		}
		d, ok := ev.Digests[algSHA384]
		if !ok {
			return rtmrs, fmt.Errorf("tdx: cc_eventlog event %d has no SHA-384 digest", i)
		}
		h := sha512.New384()
		h.Write(rtmrs[ev.MRIndex-1][:])
		h.Write(d)
		copy(rtmrs[ev.MRIndex-1][:], h.Sum(nil))
	}
	return rtmrs, nil
}

// eventClaims renders events as Trustee's uefi_event_logs entries (index,
// type_name, digests, event; details for AAEL entries). The Spec ID and
// other EV_NO_ACTION records are omitted, as Trustee does.
func eventClaims(events []Event) []any {
	out := []any{}
	for _, ev := range events {
		if ev.Type == evNoAction {
			continue
		}
		name, ok := eventTypeNames[ev.Type]
		if !ok {
			name = fmt.Sprintf("%#x", ev.Type)
		}
		var digests []any
		for _, alg := range ev.algs {
			digests = append(digests, map[string]any{"alg": algNames[alg], "digest": hex.EncodeToString(ev.Digests[alg])})
		}
		entry := map[string]any{
			"index":                ev.MRIndex,
			"type_name":            name,
			"digests":              digests,
			"event":                base64.StdEncoding.EncodeToString(ev.Data),
			"digest_matches_event": ev.digestMatchesData(),
		}
		if d := aaelDetails(ev); d != nil {
			entry["details"] = d
		}
		out = append(out, entry)
	}
	return out
}

// aaelDetails decodes an Attestation Agent event (EV_EVENT_TAG with tagged
// event ID "AAEL"): "<domain> <operation> <content>", content parsed as
// JSON when it is JSON.
func aaelDetails(ev Event) map[string]any {
	if !ev.isAAEL() {
		return nil
	}
	size := binary.LittleEndian.Uint32(ev.Data[4:])
	if uint64(size) != uint64(len(ev.Data)-8) {
		return nil
	}
	text := string(ev.Data[8:])
	d := map[string]any{"unicode_name": "AAEL", "string": text}
	parts := strings.SplitN(text, " ", 3)
	if len(parts) == 3 {
		var content any = parts[2]
		var parsed any
		dec := json.NewDecoder(bytes.NewReader([]byte(parts[2])))
		dec.UseNumber()
		if dec.Decode(&parsed) == nil && !dec.More() {
			content = parsed
		}
		d["data"] = map[string]any{"domain": parts[0], "operation": parts[1], "content": content}
	}
	return d
}
