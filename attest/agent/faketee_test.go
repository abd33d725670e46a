package agent

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"testing"

	"github.com/cocoon-cc/cocoon/attest"
	"github.com/cocoon-cc/cocoon/attest/eventlog"
	"github.com/cocoon-cc/cocoon/attest/initdata"
)

// A TEE added by one package: its attester and platform implement the
// optional interfaces, and init-data binding, the expected register and
// the event log follow them with no change anywhere else.
const fakeTEEName = "fake-tee"

func init() { attest.RegisterPlatform(fakePlatform{}) }

type fakePlatform struct{}

func (fakePlatform) TEE() string { return fakeTEEName }

// InitDataRegister: the fake TEE keeps the first 16 bytes, reversed.
func (fakePlatform) InitDataRegister(digest []byte) ([]byte, error) {
	out := make([]byte, 16)
	copy(out, digest)
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	return out, nil
}

func (fakePlatform) EventLogAlg() eventlog.Alg { return eventlog.SHA512 }

func (fakePlatform) EventLogMRIndex(pcr int) (uint32, error) { return uint32(100 + pcr), nil }

type fakeTEEAttester struct {
	register []byte // what the host set
	extended map[int][]byte
}

func (*fakeTEEAttester) TEE() string { return fakeTEEName }

func (*fakeTEEAttester) Evidence(context.Context, []byte) (json.RawMessage, error) {
	return json.RawMessage(`{}`), nil
}

func (a *fakeTEEAttester) BindInitData(_ context.Context, digest []byte) error {
	return initdata.Check(fakeTEEName, digest, a.register)
}

func (a *fakeTEEAttester) ExtendRuntimeMeasurement(_ context.Context, register int, digest []byte) error {
	a.extended[register] = append(a.extended[register], digest...)
	return nil
}

func TestNewTEEThroughOptionalInterfaces(t *testing.T) {
	ctx := context.Background()
	digest := bytes.Repeat([]byte{1, 2, 3, 4}, 8)

	want, err := initdata.ExpectedRegister(fakeTEEName, digest)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(want, []byte{4, 3, 2, 1, 4, 3, 2, 1, 4, 3, 2, 1, 4, 3, 2, 1}) {
		t.Fatalf("ExpectedRegister = %x, want the fake platform's value", want)
	}
	good := &fakeTEEAttester{register: want, extended: map[int][]byte{}}
	if err := BindInitData(ctx, good, digest); err != nil {
		t.Fatalf("BindInitData(matching register) = %v", err)
	}
	bad := &fakeTEEAttester{register: make([]byte, 16), extended: map[int][]byte{}}
	if err := BindInitData(ctx, bad, digest); !errors.Is(err, initdata.ErrInconsistent) {
		t.Fatalf("BindInitData(other register) = %v, want ErrInconsistent", err)
	}

	alg, err := eventlog.AlgForTEE(fakeTEEName)
	if err != nil || alg != eventlog.SHA512 {
		t.Fatalf("AlgForTEE = %v, %v; want SHA-512", alg, err)
	}
	if mr, err := eventlog.MRIndex(fakeTEEName, 8); err != nil || mr != 108 {
		t.Fatalf("MRIndex = %d, %v; want 108", mr, err)
	}
	l, err := eventlog.Open(ctx, t.TempDir(), alg, 8, good)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Extend(ctx, "d", "o", "c", nil); err != nil {
		t.Fatal(err)
	}
	rec, err := l.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	e, _ := eventlog.NewEntry("d", "o", "c")
	entryDigest, _ := e.Digest(eventlog.SHA512)
	if len(rec) < 4 || binary.LittleEndian.Uint32(rec) != 108 || !bytes.Equal(good.extended[8], entryDigest) {
		t.Fatalf("event log record MR index %d, PCR8 extended with %x; want 108 and the SHA-512 entry digest", binary.LittleEndian.Uint32(rec), good.extended[8])
	}
}
