package eventlog

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"

	"github.com/containerd/log"

	"github.com/cocoon-cc/cocoon/attest"
)

// Upstream file names and defaults.
const (
	DefaultDir     = "/run/attestation-agent"
	FileName       = "eventlog"
	WALFileName    = ".wal_event_entry"
	DefaultInitPCR = 17
)

// RegisterReader is implemented by measurers that can read back the
// current value of a register (named as a PCR index, like
// attest.RuntimeMeasurer). With it the write-ahead record carries the
// expected value and every crash can be recovered.
type RegisterReader interface {
	RuntimeMeasurement(ctx context.Context, register int) ([]byte, error)
}

// ErrRecovery is wrapped by errors that leave a write-ahead record the log
// cannot resolve by itself; an operator has to inspect it.
var ErrRecovery = errors.New("eventlog: cannot recover from the previous crash")

// Log is an AAEL file with crash-safe extends. It is safe for concurrent use.
type Log struct {
	mu       sync.Mutex
	path     string
	walPath  string
	alg      Alg
	initPCR  int
	mrIndex  uint32
	measurer attest.RuntimeMeasurer
	size     int64
	pending  bool // a write-ahead record is on disk
}

// Open opens (creating if needed) dir/eventlog for measurements with alg
// (the platform's CCEL hash: SHA384 on TDX, SHA256 on a vTPM) and recovers
// a write-ahead record left by a crash. Records carry the MR index of
// initPCR (see the package doc); the TDX PCR→CCMR mapping is used when the
// measurer's TEE() is "tdx". A measurer that also implements RegisterReader
// makes every crash recoverable.
func Open(ctx context.Context, dir string, alg Alg, initPCR int, measurer attest.RuntimeMeasurer) (*Log, error) {
	if measurer == nil {
		return nil, errors.New("eventlog: nil measurer")
	}
	if _, err := alg.New(); err != nil {
		return nil, err
	}
	tee := ""
	if t, ok := measurer.(interface{ TEE() string }); ok {
		tee = t.TEE()
	}
	mr, err := MRIndex(tee, initPCR)
	if err != nil {
		return nil, fmt.Errorf("eventlog: init_pcr: %w", err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("eventlog: create %s: %w", dir, err)
	}
	l := &Log{
		path:     filepath.Join(dir, FileName),
		walPath:  filepath.Join(dir, WALFileName),
		alg:      alg,
		initPCR:  initPCR,
		mrIndex:  mr,
		measurer: measurer,
	}
	f, err := os.OpenFile(l.path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("eventlog: open %s: %w", l.path, err)
	}
	st, err := f.Stat()
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("eventlog: stat %s: %w", l.path, err)
	}
	l.size = st.Size()
	if _, err := os.Stat(l.walPath); err == nil {
		l.pending = true
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("eventlog: stat %s: %w", l.walPath, err)
	}
	if l.pending {
		log.G(ctx).WithField("wal", l.walPath).Warn("eventlog: recovering from a previous crash")
		if err := l.recover(ctx); err != nil {
			return nil, err
		}
	}
	return l, nil
}

// Path returns the log file's path.
func (l *Log) Path() string { return l.path }

// Bytes returns the log file's contents (records without a header), the
// AAEL part of the evidence's cc_eventlog.
func (l *Log) Bytes() ([]byte, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	b, err := os.ReadFile(l.path)
	if err != nil {
		return nil, fmt.Errorf("eventlog: read %s: %w", l.path, err)
	}
	return b[:min(int64(len(b)), l.size)], nil
}

// Extend validates the entry, measures it into register (nil: init_pcr)
// through the measurer and appends its record, crash-safely (see the
// package doc). Errors from the measurer are wrapped, so
// errors.Is(err, attest.ErrNotSupported) works.
func (l *Log) Extend(ctx context.Context, domain, operation, content string, register *int) error {
	e, err := NewEntry(domain, operation, content)
	if err != nil {
		return err
	}
	reg := l.initPCR
	if register != nil {
		reg = *register
		if reg < 0 {
			return fmt.Errorf("eventlog: register %d is not a PCR index", reg)
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.pending {
		if err := l.recover(ctx); err != nil {
			return err
		}
	}
	record, digest, err := e.Record(l.mrIndex, l.alg)
	if err != nil {
		return err
	}
	reader, canRead := l.measurer.(RegisterReader)
	var before, expected []byte
	if canRead {
		if before, err = reader.RuntimeMeasurement(ctx, reg); err != nil {
			return fmt.Errorf("eventlog: read register %d: %w", reg, err)
		}
		if expected, err = l.alg.sum(before, digest); err != nil {
			return err
		}
	} else {
		expected = make([]byte, l.alg.Size()) // unknown; see recover
	}
	if err := l.writeWAL(uint64(l.size), expected, e.Text()); err != nil {
		return err
	}
	l.pending = true
	if err := l.measurer.ExtendRuntimeMeasurement(ctx, reg, digest); err != nil {
		err = fmt.Errorf("eventlog: extend register %d: %w", reg, err)
		unchanged := !canRead // assume a refused extend changed nothing
		if canRead {
			now, rerr := reader.RuntimeMeasurement(ctx, reg)
			unchanged = rerr == nil && bytes.Equal(now, before)
		}
		if unchanged {
			if rerr := l.removeWAL(); rerr != nil {
				return errors.Join(err, rerr)
			}
		}
		return err
	}
	if err := l.writeRecord(l.size, record); err != nil {
		return err
	}
	l.size += int64(len(record))
	if err := l.removeWAL(); err != nil {
		return err
	}
	log.G(ctx).WithField("register", reg).Debugf("eventlog: extended %s %s", e.Domain, e.Operation)
	return nil
}

func (l *Log) writeWAL(offset uint64, expected []byte, text string) error {
	b := make([]byte, 8, 8+len(expected)+len(text))
	binary.BigEndian.PutUint64(b, offset)
	b = append(append(b, expected...), text...)
	// Write a temporary file and rename it so that a torn write never
	// leaves a half write-ahead record behind.
	tmp := l.walPath + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("eventlog: write-ahead record: %w", err)
	}
	_, werr := f.Write(b)
	if werr == nil {
		werr = f.Sync()
	}
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	if werr == nil {
		werr = os.Rename(tmp, l.walPath)
	}
	if werr != nil {
		os.Remove(tmp)
		return fmt.Errorf("eventlog: write-ahead record %s: %w", l.walPath, werr)
	}
	return nil
}

func (l *Log) removeWAL() error {
	if err := os.Remove(l.walPath); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("eventlog: remove write-ahead record: %w", err)
	}
	l.pending = false
	return nil
}

// writeRecord writes record at offset, cutting anything a crash left
// beyond it, and syncs.
func (l *Log) writeRecord(offset int64, record []byte) error {
	f, err := os.OpenFile(l.path, os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("eventlog: open %s: %w", l.path, err)
	}
	err = f.Truncate(offset)
	if err == nil {
		_, err = f.WriteAt(record, offset)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("eventlog: write record at offset %d of %s: %w", offset, l.path, err)
	}
	return nil
}

// recover resolves the write-ahead record on disk (see the package doc).
func (l *Log) recover(ctx context.Context) error {
	raw, err := os.ReadFile(l.walPath)
	if errors.Is(err, fs.ErrNotExist) {
		l.pending = false
		return nil
	}
	if err != nil {
		return fmt.Errorf("%w: read %s: %w", ErrRecovery, l.walPath, err)
	}
	n := l.alg.Size()
	if len(raw) < 8+n {
		return fmt.Errorf("%w: %s is %d bytes, shorter than its %d-byte header; delete it and restart", ErrRecovery, l.walPath, len(raw), 8+n)
	}
	offset := binary.BigEndian.Uint64(raw)
	expected := raw[8 : 8+n]
	e, err := ParseEntryText(string(raw[8+n:]))
	if err != nil {
		return fmt.Errorf("%w: entry in %s: %w", ErrRecovery, l.walPath, err)
	}
	record, digest, err := e.Record(l.mrIndex, l.alg)
	if err != nil {
		return err
	}
	if offset > uint64(l.size) {
		return fmt.Errorf("%w: %s names offset %d beyond the %d-byte log", ErrRecovery, l.walPath, offset, l.size)
	}
	inLog := false
	if end := offset + uint64(len(record)); end <= uint64(l.size) {
		cur, err := os.ReadFile(l.path)
		if err != nil {
			return fmt.Errorf("%w: read %s: %w", ErrRecovery, l.path, err)
		}
		inLog = uint64(len(cur)) >= end && bytes.Equal(cur[offset:end], record)
	}
	reader, canRead := l.measurer.(RegisterReader)
	switch {
	case inLog:
		// The register is always extended before the record is written,
		// so a record already in place means only the cleanup was lost.
	case canRead:
		// Upstream reads and extends init_pcr: the record does not name
		// the register of the original request.
		cur, err := reader.RuntimeMeasurement(ctx, l.initPCR)
		if err != nil {
			return fmt.Errorf("%w: read register %d: %w", ErrRecovery, l.initPCR, err)
		}
		if !bytes.Equal(cur, expected) {
			next, err := l.alg.sum(cur, digest)
			if err != nil {
				return err
			}
			if !bytes.Equal(next, expected) {
				return fmt.Errorf("%w: register %d holds neither the expected value nor its predecessor; %s is corrupted or another process extended the register", ErrRecovery, l.initPCR, l.path)
			}
			if err := l.measurer.ExtendRuntimeMeasurement(ctx, l.initPCR, digest); err != nil {
				return fmt.Errorf("%w: extend register %d: %w", ErrRecovery, l.initPCR, err)
			}
			log.G(ctx).WithField("register", l.initPCR).Warn("eventlog: recovery extended the register the crash left unextended")
		}
	default:
		return fmt.Errorf("%w: the measurer cannot read registers, so whether %q reached register %d is unknown; inspect and delete %s", ErrRecovery, e.Domain+" "+e.Operation, l.initPCR, l.walPath)
	}
	if err := l.writeRecord(int64(offset), record); err != nil {
		return err
	}
	l.size = int64(offset) + int64(len(record))
	return l.removeWAL()
}
