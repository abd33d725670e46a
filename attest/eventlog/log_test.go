package eventlog

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/cocoon-cc/cocoon/attest"
)

// fakeMeasurer models runtime registers the way hardware does: the
// register a PCR maps to (TDX: its CCMR) becomes H(old || digest).
type fakeMeasurer struct {
	tee     string
	alg     Alg
	regs    map[uint32][]byte
	extends []int
	// failWith makes the next extend fail; changeOnFail extends anyway.
	failWith     error
	changeOnFail bool
	// beforeExtend runs right before the register changes (crash points).
	beforeExtend func()
}

func newFake(tee string, alg Alg) *fakeMeasurer {
	return &fakeMeasurer{tee: tee, alg: alg, regs: map[uint32][]byte{}}
}

func (f *fakeMeasurer) TEE() string { return f.tee }

func (f *fakeMeasurer) key(pcr int) uint32 {
	k, err := MRIndex(f.tee, pcr)
	if err != nil {
		panic(err)
	}
	return k
}

func (f *fakeMeasurer) RuntimeMeasurement(_ context.Context, register int) ([]byte, error) {
	v, ok := f.regs[f.key(register)]
	if !ok {
		v = make([]byte, f.alg.Size())
	}
	return bytes.Clone(v), nil
}

func (f *fakeMeasurer) ExtendRuntimeMeasurement(ctx context.Context, register int, digest []byte) error {
	if f.beforeExtend != nil {
		f.beforeExtend()
	}
	err := f.failWith
	f.failWith = nil
	if err != nil && !f.changeOnFail {
		return err
	}
	cur, _ := f.RuntimeMeasurement(ctx, register)
	f.regs[f.key(register)], _ = f.alg.sum(cur, digest)
	f.extends = append(f.extends, register)
	return err
}

// blindMeasurer cannot read registers back.
type blindMeasurer struct{ f *fakeMeasurer }

func (b blindMeasurer) TEE() string { return b.f.tee }

func (b blindMeasurer) ExtendRuntimeMeasurement(ctx context.Context, register int, digest []byte) error {
	return b.f.ExtendRuntimeMeasurement(ctx, register, digest)
}

func openLog(t *testing.T, dir string, m attest.RuntimeMeasurer) *Log {
	t.Helper()
	l, err := Open(context.Background(), dir, SHA384, DefaultInitPCR, m)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func mustBytes(t *testing.T, l *Log) []byte {
	t.Helper()
	b, err := l.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestLogExtend(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	fake := newFake("tdx", SHA384)
	l := openLog(t, dir, fake)
	for _, c := range []string{"content1", `{"image":"x", "digest":"y"}`} {
		if err := l.Extend(ctx, "domain", "operation", c, nil); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, WALFileName)); !os.IsNotExist(err) {
		t.Fatalf("write-ahead record left behind: %v", err)
	}
	events, err := Parse(mustBytes(t, l))
	if err != nil {
		t.Fatal(err)
	}
	if len(events) != 2 || events[0].Index != 4 || events[1].AAEL.Content != `{"image":"x", "digest":"y"}` {
		t.Fatalf("events = %+v", events)
	}
	regs, err := Replay(events, SHA384)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(regs[4], fake.regs[4]) {
		t.Fatalf("replayed %x, register holds %x", regs[4], fake.regs[4])
	}

	// Reopening appends after the existing records.
	l2 := openLog(t, dir, fake)
	if err := l2.Extend(ctx, "d", "o", "c", nil); err != nil {
		t.Fatal(err)
	}
	events, err = Parse(mustBytes(t, l2))
	if err != nil || len(events) != 3 {
		t.Fatalf("after reopen: %d events, %v", len(events), err)
	}
	if regs, _ := Replay(events, SHA384); !bytes.Equal(regs[4], fake.regs[4]) {
		t.Fatal("replay differs from the register after reopen")
	}
}

// The record index comes from init_pcr while the request's register is the
// one extended (upstream's behaviour).
func TestLogRegisterPitfall(t *testing.T) {
	fake := newFake("tdx", SHA384)
	l := openLog(t, t.TempDir(), fake)
	reg := 8
	if err := l.Extend(context.Background(), "d", "o", "c", &reg); err != nil {
		t.Fatal(err)
	}
	if len(fake.extends) != 1 || fake.extends[0] != 8 {
		t.Fatalf("extended %v, want [8]", fake.extends)
	}
	events, _ := Parse(mustBytes(t, l))
	if events[0].Index != 4 {
		t.Fatalf("record index = %d, want 4 (from init_pcr 17)", events[0].Index)
	}
	if _, ok := fake.regs[3]; !ok {
		t.Fatal("PCR 8 did not land in CCMR 3")
	}
	bad := -1
	if err := l.Extend(context.Background(), "d", "o", "c", &bad); err == nil {
		t.Fatal("negative register accepted")
	}
}

func TestLogValidation(t *testing.T) {
	fake := newFake("tdx", SHA384)
	l := openLog(t, t.TempDir(), fake)
	if err := l.Extend(context.Background(), "d", "o", "a\nb", nil); err == nil || !strings.Contains(err.Error(), "content contains newline") {
		t.Fatalf("err = %v", err)
	}
	if len(fake.extends) != 0 || len(mustBytes(t, l)) != 0 {
		t.Fatal("invalid entry reached the register or the log")
	}
}

func TestLogMeasurerError(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	fake := newFake("tdx", SHA384)
	l := openLog(t, dir, fake)

	// A refused extend leaves nothing behind.
	fake.failWith = attest.ErrNotSupported
	err := l.Extend(ctx, "d", "o", "refused", nil)
	if !errors.Is(err, attest.ErrNotSupported) {
		t.Fatalf("err = %v, want ErrNotSupported", err)
	}
	if _, err := os.Stat(filepath.Join(dir, WALFileName)); !os.IsNotExist(err) {
		t.Fatal("write-ahead record kept after a refused extend")
	}

	// An extend that reports an error but changed the register is
	// completed by the next Extend.
	fake.failWith = errors.New("sysfs write: EIO")
	fake.changeOnFail = true
	if err := l.Extend(ctx, "d", "o", "half", nil); err == nil {
		t.Fatal("error not reported")
	}
	if _, err := os.Stat(filepath.Join(dir, WALFileName)); err != nil {
		t.Fatal("write-ahead record dropped although the register changed")
	}
	if err := l.Extend(ctx, "d", "o", "next", nil); err != nil {
		t.Fatal(err)
	}
	events, err := Parse(mustBytes(t, l))
	if err != nil || len(events) != 2 || events[0].AAEL.Content != "half" || events[1].AAEL.Content != "next" {
		t.Fatalf("events = %+v, %v", events, err)
	}
	if regs, _ := Replay(events, SHA384); !bytes.Equal(regs[4], fake.regs[4]) {
		t.Fatal("log and register disagree after recovery")
	}
}

// crashState runs one Extend on a log that already holds one record and
// captures the files at the moment the register is about to change.
type crashState struct {
	wal, logBefore, logAfter []byte
	regBefore, regAfter      []byte
}

func captureCrash(t *testing.T) crashState {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	fake := newFake("tdx", SHA384)
	l := openLog(t, dir, fake)
	if err := l.Extend(ctx, "d", "o", "first", nil); err != nil {
		t.Fatal(err)
	}
	var s crashState
	s.logBefore = mustBytes(t, l)
	s.regBefore = bytes.Clone(fake.regs[4])
	fake.beforeExtend = func() {
		var err error
		if s.wal, err = os.ReadFile(filepath.Join(dir, WALFileName)); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Extend(ctx, "d", "o", "second", nil); err != nil {
		t.Fatal(err)
	}
	s.logAfter = mustBytes(t, l)
	s.regAfter = bytes.Clone(fake.regs[4])
	return s
}

func TestWALFormat(t *testing.T) {
	s := captureCrash(t)
	off := uint64(len(s.logBefore))
	want := []byte{byte(off >> 56), byte(off >> 48), byte(off >> 40), byte(off >> 32), byte(off >> 24), byte(off >> 16), byte(off >> 8), byte(off)}
	want = append(append(want, s.regAfter...), "d o second"...)
	if !bytes.Equal(s.wal, want) {
		t.Fatalf("WAL = %x, want offset(BE)||expected||text %x", s.wal, want)
	}
}

func TestCrashRecovery(t *testing.T) {
	s := captureCrash(t)
	otherReg := bytes.Repeat([]byte{0x42}, 48)
	for _, tc := range []struct {
		name    string
		wal     []byte
		log     []byte
		reg     []byte
		blind   bool
		wantErr bool
		extends int // extends recovery must perform
	}{
		{"crash before extend", s.wal, s.logBefore, s.regBefore, false, false, 1},
		{"crash after extend", s.wal, s.logBefore, s.regAfter, false, false, 0},
		{"torn record", s.wal, s.logAfter[:len(s.logAfter)-5], s.regAfter, false, false, 0},
		{"crash before WAL removal", s.wal, s.logAfter, s.regAfter, false, false, 0},
		{"register moved by someone else", s.wal, s.logBefore, otherReg, false, true, 0},
		{"short WAL", s.wal[:20], s.logBefore, s.regBefore, false, true, 0},
		{"offset beyond log", append([]byte{0, 0, 0, 0, 0, 1, 0, 0}, s.wal[8:]...), s.logBefore, s.regAfter, false, true, 0},
		{"blind measurer, record in log", s.wal, s.logAfter, s.regAfter, true, false, 0},
		{"blind measurer, record missing", s.wal, s.logBefore, s.regAfter, true, true, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, FileName), tc.log, 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, WALFileName), tc.wal, 0o600); err != nil {
				t.Fatal(err)
			}
			fake := newFake("tdx", SHA384)
			fake.regs[4] = bytes.Clone(tc.reg)
			var m attest.RuntimeMeasurer = fake
			if tc.blind {
				m = blindMeasurer{fake}
			}
			l, err := Open(context.Background(), dir, SHA384, DefaultInitPCR, m)
			if tc.wantErr {
				if !errors.Is(err, ErrRecovery) {
					t.Fatalf("err = %v, want ErrRecovery", err)
				}
				if _, serr := os.Stat(filepath.Join(dir, WALFileName)); serr != nil {
					t.Fatal("unresolved write-ahead record was removed")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(fake.extends) != tc.extends {
				t.Fatalf("recovery extended %d times, want %d", len(fake.extends), tc.extends)
			}
			if !bytes.Equal(mustBytes(t, l), s.logAfter) {
				t.Fatal("recovered log differs from the uninterrupted one")
			}
			if !bytes.Equal(fake.regs[4], s.regAfter) {
				t.Fatal("recovered register differs from the uninterrupted one")
			}
			if _, err := os.Stat(filepath.Join(dir, WALFileName)); !os.IsNotExist(err) {
				t.Fatal("write-ahead record not removed")
			}
		})
	}
}

func TestOpenErrors(t *testing.T) {
	if _, err := Open(context.Background(), t.TempDir(), SHA384, 17, nil); err == nil {
		t.Error("nil measurer accepted")
	}
	if _, err := Open(context.Background(), t.TempDir(), SM3, 17, newFake("tdx", SHA384)); err == nil {
		t.Error("SM3 accepted")
	}
	if _, err := Open(context.Background(), t.TempDir(), SHA384, -1, newFake("tdx", SHA384)); err == nil {
		t.Error("negative init_pcr accepted")
	}
}

// vTPM logs use the PCR as the record index and SHA-256.
func TestLogVTPM(t *testing.T) {
	fake := newFake("tpm", SHA256)
	l, err := Open(context.Background(), t.TempDir(), SHA256, DefaultInitPCR, fake)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Extend(context.Background(), "d", "o", "c", nil); err != nil {
		t.Fatal(err)
	}
	events, err := Parse(mustBytes(t, l))
	if err != nil || len(events) != 1 || events[0].Index != 17 {
		t.Fatalf("events = %+v, %v", events, err)
	}
	d, _ := Entry{"d", "o", "c"}.Digest(SHA256)
	if events[0].Digests["SHA-256"] != hex.EncodeToString(d) {
		t.Fatalf("digest = %s, want %x", events[0].Digests["SHA-256"], d)
	}
	regs, _ := Replay(events, SHA256)
	if !bytes.Equal(regs[17], fake.regs[17]) {
		t.Fatal("replay differs from PCR17")
	}
}

func TestLogConcurrentExtend(t *testing.T) {
	fake := newFake("tdx", SHA384)
	var mu sync.Mutex // the fake is not safe for concurrent use; Log serialises anyway
	locked := lockedMeasurer{fake: fake, mu: &mu}
	l, err := Open(context.Background(), t.TempDir(), SHA384, DefaultInitPCR, locked)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 10 {
				if err := l.Extend(context.Background(), "d", "o", fmt.Sprintf("g%d-%d", g, i), nil); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	events, err := Parse(mustBytes(t, l))
	if err != nil || len(events) != 80 {
		t.Fatalf("%d events, %v", len(events), err)
	}
	regs, _ := Replay(events, SHA384)
	if !bytes.Equal(regs[4], fake.regs[4]) {
		t.Fatal("concurrent extends: log and register disagree")
	}
}

type lockedMeasurer struct {
	fake *fakeMeasurer
	mu   *sync.Mutex
}

func (m lockedMeasurer) TEE() string { return m.fake.tee }

func (m lockedMeasurer) RuntimeMeasurement(ctx context.Context, register int) ([]byte, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.fake.RuntimeMeasurement(ctx, register)
}

func (m lockedMeasurer) ExtendRuntimeMeasurement(ctx context.Context, register int, digest []byte) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.fake.ExtendRuntimeMeasurement(ctx, register, digest)
}
