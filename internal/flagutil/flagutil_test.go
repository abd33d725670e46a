package flagutil

import (
	"flag"
	"io"
	"strings"
	"testing"
)

func TestParseSize(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
		ok   bool
	}{
		{"4096", 4096, true}, {"100M", 100 << 20, true}, {"1G", 1 << 30, true}, {"2GiB", 2 << 30, true},
		{"512k", 512 << 10, true}, {"0", 0, false}, {"-1M", 0, false}, {"lots", 0, false}, {"", 0, false},
		// What cocoond's TOML has always accepted (go-units RAMInBytes).
		{"8GiB", 8 << 30, true}, {"64gb", 64 << 30, true}, {"1.5G", 3 << 29, true}, {"20 G", 20 << 30, true},
		// What cocoonctl --size has always accepted.
		{" 1Gi ", 1 << 30, true}, {"3MIB", 3 << 20, true}, {"7b", 7, true},
		{"1E", 0, false}, {"9000000P", 0, false}, {"1Gx", 0, false},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseSize(tc.in)
			if (err == nil) != tc.ok || got != tc.want {
				t.Fatalf("ParseSize(%q) = %d, %v", tc.in, got, err)
			}
		})
	}
}

func TestFormatSizeRoundTrips(t *testing.T) {
	for _, tc := range []struct {
		n    int64
		want string
	}{
		{64 << 20, "64MiB"}, {20 << 30, "20GiB"}, {1000, "1000B"}, {1 << 10, "1KiB"},
		{1536 << 20, "1.5GiB"}, {1234567, "1234567"}, {3<<20 + 1, "3145729"}, {1, "1B"},
	} {
		got := FormatSize(tc.n)
		if got != tc.want {
			t.Errorf("FormatSize(%d) = %q, want %q", tc.n, got, tc.want)
		}
		if back, err := ParseSize(got); err != nil || back != tc.n {
			t.Errorf("ParseSize(FormatSize(%d)) = %d, %v", tc.n, back, err)
		}
	}
}

func TestFlags(t *testing.T) {
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var list StringList
	var size Size
	fs.Var(&list, "item", "")
	fs.Var(&size, "size", "")
	if err := fs.Parse([]string{"-item", "a", "-size", "2G", "-item", "b=c"}); err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 || list[0] != "a" || list[1] != "b=c" || list.String() != "a,b=c" {
		t.Errorf("list = %q", list)
	}
	if size != 2<<30 || size.String() != "2GiB" {
		t.Errorf("size = %d %q", size, size.String())
	}
	if err := fs.Parse([]string{"-size", "lots"}); err == nil {
		t.Error("accepted -size lots")
	}
}

func TestPairs(t *testing.T) {
	m, err := Pairs([]string{"a=1", "b=x=y", "a=2"}, "K=V")
	if err != nil || len(m) != 2 || m["a"] != "2" || m["b"] != "x=y" {
		t.Fatalf("Pairs = %v, %v", m, err)
	}
	for _, bad := range []string{"nofile", "=v", "k="} {
		if _, err := Pairs([]string{bad}, "KID=FILE"); err == nil || !strings.Contains(err.Error(), "KID=FILE") {
			t.Errorf("Pairs(%q) error = %v", bad, err)
		}
	}
}
