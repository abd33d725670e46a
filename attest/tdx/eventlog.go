package tdx

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
)

// elHeader is the fixed EV_NO_ACTION Spec ID record guest-components puts
// in front of the AAEL when there is no CCEL (PCR 0, type 3, 20 zero bytes,
// size 37; two algorithms: SHA-384/48 and SM3/32).
var elHeader = [69]byte{
	0x00, 0x00, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
	0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x25, 0x00, 0x00, 0x00,
	0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
	0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x0C, 0x00, 0x30, 0x00,
	0x12, 0x00, 0x20, 0x00, 0x00,
}

// elEndFlag terminates the assembled event log.
var elEndFlag = [8]byte{0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF}

var errShortCCEL = errors.New("tdx: invalid CCEL: truncated")

// trimCCEL cuts a CCEL at its terminator (an 8-byte all-0xFF or all-0x00
// word where the next record would start). The first record is in the TCG
// 1.2 (SHA-1) format, the others in the crypto-agile format.
func trimCCEL(ccel []byte) ([]byte, error) {
	u32 := func(i int) (uint32, error) {
		if i < 0 || len(ccel) < i+4 {
			return 0, errShortCCEL
		}
		return binary.LittleEndian.Uint32(ccel[i:]), nil
	}
	i := 4
	typ, err := u32(i)
	if err != nil {
		return nil, err
	}
	i += 4 + 20
	if typ == 3 { // EV_NO_ACTION: skip its event data
		size, err := u32(i)
		if err != nil {
			return nil, err
		}
		i += 4 + int(size)
	}
	for {
		if len(ccel) < i+8 {
			return nil, errors.New("tdx: invalid CCEL: no end marker")
		}
		word := binary.LittleEndian.Uint64(ccel[i:])
		if word == ^uint64(0) || word == 0 {
			return ccel[:i], nil
		}
		i += 8 // MR index, event type
		count, err := u32(i)
		if err != nil {
			return nil, err
		}
		i += 4
		for range count {
			if len(ccel) < i+2 {
				return nil, errShortCCEL
			}
			alg := binary.LittleEndian.Uint16(ccel[i:])
			i += 2
			switch alg {
			case 0x0B, 0x12: // SHA-256, SM3
				i += 32
			case 0x0C: // SHA-384
				i += 48
			case 0x0D: // SHA-512
				i += 64
			default:
				return nil, fmt.Errorf("tdx: invalid CCEL: unsupported digest algorithm %#x", alg)
			}
		}
		size, err := u32(i)
		if err != nil {
			return nil, err
		}
		i += 4 + int(size)
		if i > len(ccel) {
			return nil, errShortCCEL
		}
	}
}

// readEventLog assembles cc_eventlog as guest-components does: the trimmed
// CCEL (or the fixed header when there is none but an AAEL exists), the
// AAEL, then the end flag. It returns nil when neither log exists.
func readEventLog(ccelPath, aaelPath string) ([]byte, error) {
	var log []byte
	if ccelPath != "" {
		ccel, err := os.ReadFile(ccelPath)
		switch {
		case err == nil:
			if log, err = trimCCEL(ccel); err != nil {
				return nil, err
			}
		case !errors.Is(err, os.ErrNotExist):
			return nil, fmt.Errorf("tdx: read CCEL: %w", err)
		}
	}
	if aaelPath != "" {
		aael, err := os.ReadFile(aaelPath)
		switch {
		case err == nil:
			if len(log) == 0 {
				log = append(log, elHeader[:]...)
			}
			log = append(log, aael...)
		case !errors.Is(err, os.ErrNotExist):
			return nil, fmt.Errorf("tdx: read AAEL: %w", err)
		}
	}
	if len(log) == 0 {
		return nil, nil
	}
	return append(log, elEndFlag[:]...), nil
}
