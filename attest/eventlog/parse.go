package eventlog

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
)

// Event is one parsed event-log record.
type Event struct {
	// Index is the record's register index as written: the CC measurement
	// register for CCEL/TDX logs (RTMR = Index−1), the PCR for vTPM logs.
	Index    uint32 `json:"index"`
	Type     uint32 `json:"type"`
	TypeName string `json:"type_name"`
	// Digests maps the algorithm name (Trustee's spelling, "SHA-384") to
	// the lowercase hex digest.
	Digests map[string]string `json:"digests"`
	// Data is the event data (base64 in JSON, as Trustee's "event").
	Data []byte `json:"event"`
	// DigestMatchesEvent reports whether every digest this package can
	// compute equals H(Data). Firmware events often measure something
	// other than their event data, so false is not an error by itself.
	DigestMatchesEvent bool `json:"digest_matches_event"`
	// AAEL is set for EV_EVENT_TAG records carrying an AAEL entry.
	AAEL *AAELEvent `json:"aael,omitempty"`
}

// AAELEvent is the AAEL entry of an EV_EVENT_TAG record.
type AAELEvent struct {
	// Text is the measured "domain operation content" string.
	Text string `json:"string"`
	Entry
}

// Parse parses an event log: a CCEL (its first record is the TCG 1.2
// format Spec ID event, which Parse consumes and does not return, as
// Trustee), the cc_eventlog value built by CCELWithAAEL, or a bare AAEL
// file of crypto-agile records. It stops at an 8-byte all-0xFF or all-0x00
// terminator or at the end of the input. Allocation is bounded by len(b).
func Parse(b []byte) ([]Event, error) {
	r := &reader{b: b}
	var hdr *specID
	if len(b) >= 8 && binary.LittleEndian.Uint32(b[4:]) == EvNoAction {
		var err error
		if hdr, err = r.specIDRecord(); err != nil {
			return nil, err
		}
	}
	var events []Event
	for !r.terminated() {
		start := r.off
		ev, err := r.record(hdr)
		if err != nil {
			return nil, fmt.Errorf("eventlog: record %d at offset %d: %w", len(events), start, err)
		}
		events = append(events, ev)
	}
	return events, nil
}

// Replay computes each register's value from zero by extending, in log
// order, the alg digest of every event except EV_NO_ACTION. Keys are record
// indexes (for TDX logs the RTMR is index−1).
func Replay(events []Event, alg Alg) (map[int][]byte, error) {
	if _, err := alg.New(); err != nil {
		return nil, err
	}
	regs := map[int][]byte{}
	for i, ev := range events {
		if ev.Type == EvNoAction {
			continue
		}
		h, ok := ev.Digests[alg.String()]
		if !ok {
			return nil, fmt.Errorf("eventlog: event %d (%s) has no %s digest", i, ev.TypeName, alg)
		}
		d, err := hex.DecodeString(h)
		if err != nil || len(d) != alg.Size() {
			return nil, fmt.Errorf("eventlog: event %d: bad %s digest %q", i, alg, h)
		}
		cur, ok := regs[int(ev.Index)]
		if !ok {
			cur = make([]byte, alg.Size())
		}
		regs[int(ev.Index)], _ = alg.sum(cur, d)
	}
	return regs, nil
}

type specID struct {
	sizes map[Alg]int
}

var errTruncated = errors.New("truncated")

type reader struct {
	b   []byte
	off int
}

func (r *reader) left() int { return len(r.b) - r.off }

func (r *reader) take(n int) ([]byte, error) {
	if n < 0 || n > r.left() {
		return nil, errTruncated
	}
	s := r.b[r.off : r.off+n]
	r.off += n
	return s, nil
}

func (r *reader) u32() (uint32, error) {
	s, err := r.take(4)
	if err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint32(s), nil
}

func (r *reader) u16() (uint16, error) {
	s, err := r.take(2)
	if err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint16(s), nil
}

// terminated reports the end of the log: no bytes left, or an 8-byte
// all-0xFF or all-0x00 word where the next record would start.
func (r *reader) terminated() bool {
	if r.left() == 0 {
		return true
	}
	if r.left() < 8 {
		return false
	}
	w := r.b[r.off : r.off+8]
	return bytes.Equal(w, endFlag) || bytes.Equal(w, make([]byte, 8))
}

// specIDRecord consumes the TCG 1.2 format first record (EV_NO_ACTION with
// a SHA-1 sized digest) and reads its algorithm list when it has one.
func (r *reader) specIDRecord() (*specID, error) {
	if _, err := r.take(4); err != nil { // PCR index
		return nil, fmt.Errorf("eventlog: Spec ID record: %w", err)
	}
	typ, err := r.u32()
	if err != nil {
		return nil, fmt.Errorf("eventlog: Spec ID record: %w", err)
	}
	if typ != EvNoAction {
		return nil, fmt.Errorf("eventlog: first record has type %#x, want EV_NO_ACTION", typ)
	}
	if _, err := r.take(20); err != nil {
		return nil, fmt.Errorf("eventlog: Spec ID record: %w", err)
	}
	size, err := r.u32()
	if err != nil {
		return nil, fmt.Errorf("eventlog: Spec ID record: %w", err)
	}
	data, err := r.take(int(min(size, uint32(r.left()+1))))
	if err != nil {
		return nil, fmt.Errorf("eventlog: Spec ID event data (%d bytes): %w", size, err)
	}
	hdr := &specID{sizes: map[Alg]int{}}
	// signature[16], platformClass u32, minor, major, errata, uintnSize,
	// numberOfAlgorithms u32, {algId u16, digestSize u16}..., vendorInfoSize.
	d := &reader{b: data}
	if _, err := d.take(24); err != nil {
		return hdr, nil // no algorithm list: fall back to known sizes
	}
	n, err := d.u32()
	if err != nil {
		return hdr, nil
	}
	if int64(n)*4 > int64(d.left()) {
		return nil, fmt.Errorf("eventlog: Spec ID event lists %d algorithms in %d bytes", n, d.left())
	}
	for range n {
		id, _ := d.u16()
		sz, _ := d.u16()
		hdr.sizes[Alg(id)] = int(sz)
	}
	return hdr, nil
}

func (r *reader) record(hdr *specID) (Event, error) {
	var ev Event
	var err error
	if ev.Index, err = r.u32(); err != nil {
		return ev, fmt.Errorf("index: %w", err)
	}
	if ev.Type, err = r.u32(); err != nil {
		return ev, fmt.Errorf("event type: %w", err)
	}
	ev.TypeName = TypeName(ev.Type)
	count, err := r.u32()
	if err != nil {
		return ev, fmt.Errorf("digest count: %w", err)
	}
	type dg struct {
		alg Alg
		v   []byte
	}
	var digests []dg
	for i := uint32(0); i < count; i++ {
		id, err := r.u16()
		if err != nil {
			return ev, fmt.Errorf("digest %d algorithm: %w", i, err)
		}
		alg := Alg(id)
		size := alg.Size()
		if hdr != nil {
			if s, ok := hdr.sizes[alg]; ok {
				size = s
			}
		}
		if size == 0 {
			return ev, fmt.Errorf("digest %d: unknown algorithm %#04x", i, id)
		}
		v, err := r.take(size)
		if err != nil {
			return ev, fmt.Errorf("digest %d (%s): %w", i, alg, err)
		}
		digests = append(digests, dg{alg, v})
	}
	size, err := r.u32()
	if err != nil {
		return ev, fmt.Errorf("event size: %w", err)
	}
	data, err := r.take(int(min(size, uint32(r.left()+1))))
	if err != nil {
		return ev, fmt.Errorf("event data (%d bytes): %w", size, err)
	}
	ev.Data = bytes.Clone(data)
	ev.Digests = make(map[string]string, len(digests))
	computed := 0
	matches := true
	for _, d := range digests {
		ev.Digests[d.alg.String()] = hex.EncodeToString(d.v)
		if sum, err := d.alg.sum(data); err == nil {
			computed++
			matches = matches && bytes.Equal(sum, d.v)
		}
	}
	ev.DigestMatchesEvent = computed > 0 && matches
	if ev.Type == EvEventTag && len(data) >= 8 &&
		binary.LittleEndian.Uint32(data) == AAELTagID &&
		int(binary.LittleEndian.Uint32(data[4:])) == len(data)-8 {
		text := string(data[8:])
		if e, err := ParseEntryText(text); err == nil {
			ev.AAEL = &AAELEvent{Text: text, Entry: e}
		}
	}
	return ev, nil
}

// TypeName returns the TCG name of an event type, as Trustee prints it.
func TypeName(t uint32) string {
	if n, ok := typeNames[t]; ok {
		return n
	}
	return fmt.Sprintf("UNKNOWN(0x%x)", t)
}

var typeNames = map[uint32]string{
	0x0:  "EV_PREBOOT_CERT",
	0x1:  "EV_POST_CODE",
	0x2:  "EV_UNUSED",
	0x3:  "EV_NO_ACTION",
	0x4:  "EV_SEPARATOR",
	0x5:  "EV_ACTION",
	0x6:  "EV_EVENT_TAG",
	0x7:  "EV_S_CRTM_CONTENTS",
	0x8:  "EV_S_CRTM_VERSION",
	0x9:  "EV_CPU_MICROCODE",
	0xA:  "EV_PLATFORM_CONFIG_FLAGS",
	0xB:  "EV_TABLE_OF_DEVICES",
	0xC:  "EV_COMPACT_HASH",
	0xD:  "EV_IPL",
	0xE:  "EV_IPL_PARTITION_DATA",
	0xF:  "EV_NONHOST_CODE",
	0x10: "EV_NONHOST_CONFIG",
	0x11: "EV_NONHOST_INFO",
	0x12: "EV_OMIT_BOOT_DEVICE_EVENTS",
	0x13: "EV_POST_CODE2",

	0x80000001: "EV_EFI_VARIABLE_DRIVER_CONFIG",
	0x80000002: "EV_EFI_VARIABLE_BOOT",
	0x80000003: "EV_EFI_BOOT_SERVICES_APPLICATION",
	0x80000004: "EV_EFI_BOOT_SERVICES_DRIVER",
	0x80000005: "EV_EFI_RUNTIME_SERVICES_DRIVER",
	0x80000006: "EV_EFI_GPT_EVENT",
	0x80000007: "EV_EFI_ACTION",
	0x80000008: "EV_EFI_PLATFORM_FIRMWARE_BLOB",
	0x80000009: "EV_EFI_HANDOFF_TABLES",
	0x8000000A: "EV_EFI_PLATFORM_FIRMWARE_BLOB2",
	0x8000000B: "EV_EFI_HANDOFF_TABLES2",
	0x8000000C: "EV_EFI_VARIABLE_BOOT2",
	0x8000000D: "EV_EFI_GPT_EVENT2",
	0x80000010: "EV_EFI_HCRTM_EVENT",
	0x800000E0: "EV_EFI_VARIABLE_AUTHORITY",
	0x800000E1: "EV_EFI_SPDM_FIRMWARE_BLOB",
	0x800000E2: "EV_EFI_SPDM_FIRMWARE_CONFIG",
	0x800000E3: "EV_EFI_SPDM_DEVICE_POLICY",
	0x800000E4: "EV_EFI_SPDM_DEVICE_AUTHORITY",
}
