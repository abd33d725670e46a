package kbs

import (
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"strings"
)

// segmentPattern is what Trustee's resource plugin accepts for each of
// repo, type and tag. It cannot express "." or "..", so it also keeps
// paths inside the repository.
var segmentPattern = regexp.MustCompile(`^[a-zA-Z0-9_\-]+[a-zA-Z0-9_\-.]*$`)

// ValidSegment reports whether s is a valid repository, type or tag name.
func ValidSegment(s string) bool { return segmentPattern.MatchString(s) }

// ResourceURI is a parsed kbs:// resource URI.
type ResourceURI struct {
	Plugin string   // "resource" unless the scheme is kbs+<plugin>
	Host   string   // parsed but ignored for fetching, as CDH does
	Path   []string // repo, type, tag for the resource plugin
	Query  string   // raw query, without '?'
}

// ParseResourceURI accepts kbs:///repo/type/tag, kbs://host/repo/type/tag,
// kbs+<plugin>://host/path and the bare form repo/type/tag. The scheme is
// ASCII case-insensitive ("KBS:///..." is "kbs:///..."), as the URL parser
// behind upstream's ResourceUri lowercases it; plugin names with it.
func ParseResourceURI(s string) (ResourceURI, error) {
	if s == "" {
		return ResourceURI{}, errors.New("parse resource URI: empty")
	}
	u := ResourceURI{Plugin: "resource"}
	rest := s
	if i := strings.Index(s, "://"); i >= 0 {
		scheme := asciiLower(s[:i])
		switch {
		case scheme == "kbs":
		case strings.HasPrefix(scheme, "kbs+") && len(scheme) > len("kbs+"):
			u.Plugin = scheme[len("kbs+"):]
			if !ValidSegment(u.Plugin) {
				return ResourceURI{}, fmt.Errorf("parse resource URI %q: bad plugin name", s)
			}
		default:
			return ResourceURI{}, fmt.Errorf("parse resource URI %q: scheme %q is not kbs", s, scheme)
		}
		pu, err := url.Parse(s)
		if err != nil {
			return ResourceURI{}, fmt.Errorf("parse resource URI %q: %w", s, err)
		}
		u.Host = pu.Host
		u.Query = pu.RawQuery
		rest = strings.TrimPrefix(pu.EscapedPath(), "/")
	} else if i := strings.IndexByte(rest, '?'); i >= 0 {
		u.Query = rest[i+1:]
		rest = rest[:i]
	}
	u.Path = strings.Split(rest, "/")
	if u.Plugin == "resource" && len(u.Path) != 3 {
		return ResourceURI{}, fmt.Errorf("parse resource URI %q: want repo/type/tag, got %d path segments", s, len(u.Path))
	}
	for _, seg := range u.Path {
		if !ValidSegment(seg) {
			return ResourceURI{}, fmt.Errorf("parse resource URI %q: invalid path segment %q", s, seg)
		}
	}
	return u, nil
}

// asciiLower lowercases ASCII letters only, as URL schemes are compared.
func asciiLower(s string) string {
	b := []byte(s)
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}

// RequestPath is the path below PathPrefix, e.g. "resource/repo/type/tag",
// with the query appended when present.
func (u ResourceURI) RequestPath() string {
	p := u.Plugin + "/" + strings.Join(u.Path, "/")
	if u.Query != "" {
		p += "?" + u.Query
	}
	return p
}

// String returns the canonical kbs:/// form (host dropped).
func (u ResourceURI) String() string {
	scheme := "kbs"
	if u.Plugin != "resource" {
		scheme += "+" + u.Plugin
	}
	s := scheme + ":///" + strings.Join(u.Path, "/")
	if u.Query != "" {
		s += "?" + u.Query
	}
	return s
}
