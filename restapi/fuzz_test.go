package restapi

import (
	"net/http/httptest"
	"testing"
	"unicode/utf8"
)

// FuzzQuery: query parsing, like upstream's form_urlencoded, never fails
// and yields valid UTF-8 names and values.
func FuzzQuery(f *testing.F) {
	for _, s := range []string{"runtime_data=a;b", "a=%zz&a=%41", "%ff%E2%82=+", "&&=&", "x=%"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		r := httptest.NewRequest("GET", "/aa/evidence", nil)
		r.URL.RawQuery = raw
		for k, v := range query(r) {
			if !utf8.ValidString(k) || !utf8.ValidString(v) {
				t.Fatalf("invalid UTF-8 from %q: %q=%q", raw, k, v)
			}
		}
	})
}
