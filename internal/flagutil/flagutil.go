// Package flagutil holds the flag and configuration value types every cocoon
// binary shares: a repeatable string flag and a byte size, so that each
// command accepts and prints them the same way.
package flagutil

import (
	"fmt"
	"math"
	"strconv"
	"strings"

	"github.com/docker/go-units"
)

// StringList is a repeatable string flag: each use appends one value.
type StringList []string

func (s *StringList) String() string {
	if s == nil {
		return ""
	}
	return strings.Join(*s, ",")
}

// Set appends v.
func (s *StringList) Set(v string) error { *s = append(*s, v); return nil }

// Pairs splits each KEY=VALUE item of a StringList into a map; both sides
// must be non-empty and a later KEY wins. form names the syntax in errors,
// e.g. "KID=FILE".
func Pairs(items []string, form string) (map[string]string, error) {
	m := make(map[string]string, len(items))
	for _, it := range items {
		k, v, ok := strings.Cut(it, "=")
		if !ok || k == "" || v == "" {
			return nil, fmt.Errorf("%q: want %s", it, form)
		}
		m[k] = v
	}
	return m, nil
}

// SizeSyntax describes what ParseSize accepts, for flag usage strings.
const SizeSyntax = "bytes, or a number with K, M, G, T or P, powers of 1024, optionally followed by B, iB or i"

// maxSize keeps sizes far from int64 overflow once multiplied.
const maxSize = 1 << 62

// ParseSize reads a positive byte size as docker/go-units' RAMInBytes
// does: "4096", "512k", "64MiB", "1G", "1.5GB"; units are powers of 1024
// and case-insensitive. Kubernetes-style suffixes ("1Gi") are accepted too,
// as cocoonctl always has. Surrounding spaces are ignored.
func ParseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	if n := len(t); n > 1 && (t[n-1] == 'i' || t[n-1] == 'I') {
		t += "B" // "1Gi" is "1GiB"
	}
	v, err := units.RAMInBytes(t)
	if err != nil || v <= 0 || v > maxSize {
		return 0, fmt.Errorf("size %q: want a positive number of bytes, optionally with K, M, G, T or P (powers of 1024)", s)
	}
	return v, nil
}

// FormatSize prints n the way ParseSize reads it back to the same value:
// go-units' binary form ("64MiB", "1.5GiB") when it reads back exactly, else plain bytes.
func FormatSize(n int64) string {
	if n > 0 && n < math.MaxInt64 {
		if h := units.BytesSize(float64(n)); !strings.Contains(h, "e") {
			if v, err := units.RAMInBytes(h); err == nil && v == n {
				return h
			}
		}
	}
	return strconv.FormatInt(n, 10)
}

// Size is a byte size flag parsed by ParseSize and printed by FormatSize;
// zero means unset.
type Size int64

func (s *Size) String() string {
	if s == nil || *s == 0 {
		return ""
	}
	return FormatSize(int64(*s))
}

// Set parses v with ParseSize.
func (s *Size) Set(v string) error {
	n, err := ParseSize(v)
	if err != nil {
		return err
	}
	*s = Size(n)
	return nil
}
