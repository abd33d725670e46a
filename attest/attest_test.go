package attest

import (
	"bytes"
	"path/filepath"
	"testing"
)

func TestPadReportData(t *testing.T) {
	p, ok := PadReportData([]byte("abc"))
	if !ok || !bytes.Equal(p[:3], []byte("abc")) || !bytes.Equal(p[3:], make([]byte, 61)) {
		t.Errorf("padded = %x, %v", p, ok)
	}
	if _, ok := PadReportData(make([]byte, 64)); !ok {
		t.Error("64 bytes refused")
	}
	if _, ok := PadReportData(make([]byte, 65)); ok {
		t.Error("65 bytes accepted")
	}
}

func TestAnyExists(t *testing.T) {
	dir := t.TempDir()
	if AnyExists(filepath.Join(dir, "a"), filepath.Join(dir, "b")) {
		t.Error("absent paths exist")
	}
	if !AnyExists(filepath.Join(dir, "a"), dir) {
		t.Error("present path not found")
	}
	if !AnyExists(dir, filepath.Join(dir, "a")) {
		t.Error("present path first not found")
	}
}
