package signature

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"

	"go.podman.io/image/v5/docker/reference"
)

// Requirement types image-rs understands.
const (
	typeAccept   = "insecureAcceptAnything"
	typeReject   = "reject"
	typeSignedBy = "signedBy"
	typeSigstore = "sigstoreSigned"
)

// ErrInvalidPolicy is wrapped by every policy parsing or validation error.
var ErrInvalidPolicy = errors.New("Invalid image policy file") //nolint:staticcheck // upstream's wording

// parsedPolicy is a policy after parsing and validation, before any key is
// materialised: what parsePolicy returns, free of I/O so it can be fuzzed.
type parsedPolicy struct {
	Default []rawRequirement
	// Docker maps a scope of the docker transport to its requirements.
	Docker map[string][]rawRequirement
	// Warnings are problems that do not make the policy invalid but that
	// probably do not do what the author meant (a scope that never matches).
	Warnings []string
}

// rawRequirement is one requirement as written, with its type.
type rawRequirement struct {
	Type   string
	Fields map[string]json.RawMessage
	// Deny, when not empty, makes the requirement always refuse: image-rs
	// denies it (for example a sigstoreSigned signedIdentity it does not
	// implement). It is the reason.
	Deny string
}

// policyFile is the top level of containers-policy.json. Both keys are
// required by image-rs, hence the pointers. Other keys are ignored, as
// image-rs's serde structs ignore them (none denies unknown fields), and
// each is reported as a warning, at every level: a misspelt key (say
// "signedidentity") then says why it had no effect. Ignoring a key never
// relaxes a check on the keys that are known.
type policyFile struct {
	Default    *[]json.RawMessage                       `json:"default"`
	Transports *map[string]map[string][]json.RawMessage `json:"transports"`
}

// parsePolicy parses and validates containers-policy.json. It does no I/O.
func parsePolicy(data []byte) (*parsedPolicy, error) {
	var top map[string]json.RawMessage
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&top); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidPolicy, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("%w: trailing data after the policy object", ErrInvalidPolicy)
	}
	var f policyFile
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidPolicy, err)
	}
	if f.Default == nil {
		return nil, fmt.Errorf("%w: missing \"default\"", ErrInvalidPolicy)
	}
	if f.Transports == nil {
		return nil, fmt.Errorf("%w: missing \"transports\"", ErrInvalidPolicy)
	}
	p := &parsedPolicy{Docker: map[string][]rawRequirement{}}
	for _, k := range unknownKeys(top, "default", "transports") {
		p.Warnings = append(p.Warnings, fmt.Sprintf("unknown field %q is ignored", k))
	}
	var err error
	if p.Default, err = parseRequirements(*f.Default, &p.Warnings, "default"); err != nil {
		return nil, err
	}
	transports := make([]string, 0, len(*f.Transports))
	for t := range *f.Transports {
		transports = append(transports, t)
	}
	sort.Strings(transports)
	for _, t := range transports {
		scopes := (*f.Transports)[t]
		if t != "docker" {
			p.Warnings = append(p.Warnings, fmt.Sprintf("transport %q is ignored: images are only pulled with the docker transport", t))
			continue
		}
		names := make([]string, 0, len(scopes))
		for s := range scopes {
			names = append(names, s)
		}
		sort.Strings(names)
		for _, scope := range names {
			if w := scopeWarning(scope); w != "" {
				p.Warnings = append(p.Warnings, w)
			}
			reqs, err := parseRequirements(scopes[scope], &p.Warnings, fmt.Sprintf("docker scope %q", scope))
			if err != nil {
				return nil, err
			}
			p.Docker[scope] = reqs
		}
	}
	return p, nil
}

func parseRequirements(raws []json.RawMessage, warnings *[]string, where string) ([]rawRequirement, error) {
	reqs := make([]rawRequirement, 0, len(raws))
	for i, raw := range raws {
		r, unknown, err := parseRequirement(raw)
		if err != nil {
			return nil, fmt.Errorf("%w: %s requirement %d: %w", ErrInvalidPolicy, where, i, err)
		}
		for _, k := range unknown {
			*warnings = append(*warnings, fmt.Sprintf("%s requirement %d: unknown field %s is ignored", where, i, k))
		}
		if r.Deny != "" {
			*warnings = append(*warnings, fmt.Sprintf("%s requirement %d always denies: %s", where, i, r.Deny))
		}
		reqs = append(reqs, r)
	}
	return reqs, nil
}

// parseRequirement parses one requirement; unknown lists the keys it
// ignored (quoted, signedIdentity's as "signedIdentity.<key>").
func parseRequirement(raw json.RawMessage) (r rawRequirement, unknown []string, err error) {
	r, err = parseRequirementKnown(raw, &unknown)
	return r, unknown, err
}

func parseRequirementKnown(raw json.RawMessage, unknown *[]string) (rawRequirement, error) {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(raw, &fields); err != nil {
		return rawRequirement{}, err
	}
	if fields == nil {
		return rawRequirement{}, errors.New("requirement is not an object")
	}
	var typ string
	if err := json.Unmarshal(fields["type"], &typ); err != nil || typ == "" {
		return rawRequirement{}, errors.New(`missing or invalid "type"`)
	}
	r := rawRequirement{Type: typ, Fields: fields}
	switch typ {
	case typeAccept, typeReject:
		ignoreKeys(unknown, "", fields, "type")
	case typeSignedBy:
		ignoreKeys(unknown, "", fields, "type", "keyType", "keyPath", "keyPaths", "keyData", "signedIdentity")
		var keyType string
		if err := json.Unmarshal(fields["keyType"], &keyType); err != nil || keyType != "GPGKeys" {
			return r, errors.New(`signedBy "keyType" must be "GPGKeys"`)
		}
		if err := exactlyOne(fields, "keyPath", "keyPaths", "keyData"); err != nil {
			return r, err
		}
		if err := checkStrings(fields, "keyPath", "keyData"); err != nil {
			return r, err
		}
		if v, ok := fields["keyPaths"]; ok {
			var paths []string
			if err := json.Unmarshal(v, &paths); err != nil || len(paths) == 0 {
				return r, errors.New(`"keyPaths" must be a non-empty list of strings`)
			}
		}
		if v, ok := fields["keyData"]; ok {
			var s string
			_ = json.Unmarshal(v, &s)
			if _, err := base64.StdEncoding.DecodeString(s); err != nil {
				return r, fmt.Errorf(`signedBy "keyData" is not base64: %w`, err)
			}
		}
		if _, err := identityType(fields, unknown); err != nil {
			return r, err
		}
	case typeSigstore:
		ignoreKeys(unknown, "", fields, "type", "keyPath", "keyData", "signedIdentity")
		if err := exactlyOne(fields, "keyPath", "keyData"); err != nil {
			return r, err
		}
		if err := checkStrings(fields, "keyPath", "keyData"); err != nil {
			return r, err
		}
		id, err := identityType(fields, unknown)
		if err != nil {
			return r, err
		}
		// image-rs checks only these two identities for cosign; anything
		// else is denied at evaluation time.
		switch id {
		case "", "matchRepository", "exactRepository":
		default:
			r.Deny = fmt.Sprintf("sigstoreSigned signedIdentity %q is not supported (only matchRepository and exactRepository)", id)
		}
	default:
		return r, fmt.Errorf("unsupported requirement type %q", typ)
	}
	return r, nil
}

// identityType validates "signedIdentity" (when present) and returns its type.
func identityType(fields map[string]json.RawMessage, unknown *[]string) (string, error) {
	raw, ok := fields["signedIdentity"]
	if !ok {
		return "", nil
	}
	var id map[string]json.RawMessage
	if err := json.Unmarshal(raw, &id); err != nil || id == nil {
		return "", errors.New(`"signedIdentity" is not an object`)
	}
	var typ string
	if err := json.Unmarshal(id["type"], &typ); err != nil {
		return "", errors.New(`"signedIdentity" has no valid "type"`)
	}
	needRef := func(key string, repoOnly bool) error {
		var s string
		if err := json.Unmarshal(id[key], &s); err != nil {
			return fmt.Errorf(`signedIdentity %s needs %q`, typ, key)
		}
		named, err := reference.ParseNormalizedNamed(s)
		if err != nil {
			return fmt.Errorf("signedIdentity %s %q: %w", typ, s, err)
		}
		if repoOnly && !reference.IsNameOnly(named) {
			return fmt.Errorf("signedIdentity %s %q must be a repository without tag or digest", typ, s)
		}
		return nil
	}
	// The identity handed on keeps only the keys image-rs reads.
	keep := func() {
		fields["signedIdentity"], _ = json.Marshal(id)
	}
	switch typ {
	case "matchExact", "matchRepoDigestOrExact", "matchRepository":
		ignoreKeys(unknown, "signedIdentity.", id, "type")
		keep()
		return typ, nil
	case "exactReference":
		ignoreKeys(unknown, "signedIdentity.", id, "type", "dockerReference")
		keep()
		return typ, needRef("dockerReference", false)
	case "exactRepository":
		ignoreKeys(unknown, "signedIdentity.", id, "type", "dockerRepository")
		keep()
		return typ, needRef("dockerRepository", true)
	case "remapIdentity":
		ignoreKeys(unknown, "signedIdentity.", id, "type", "prefix", "signedPrefix")
		keep()
		for _, k := range []string{"prefix", "signedPrefix"} {
			var s string
			if err := json.Unmarshal(id[k], &s); err != nil || s == "" {
				return "", fmt.Errorf("signedIdentity remapIdentity needs %q", k)
			}
		}
		return typ, nil
	default:
		return "", fmt.Errorf("unknown signedIdentity type %q", typ)
	}
}

// unknownKeys returns the keys of fields that are not allowed, sorted.
func unknownKeys(fields map[string]json.RawMessage, allowed ...string) []string {
	var out []string
	for k := range fields {
		if !slices.Contains(allowed, k) {
			out = append(out, k)
		}
	}
	sort.Strings(out)
	return out
}

// ignoreKeys drops from fields the keys that image-rs does not read there
// and appends them, quoted, to unknown (prefix names the nesting). They
// are dropped, not kept, because the requirement is later handed to
// go.podman.io/image/v5, which would refuse them or, for keys it knows
// and image-rs does not (keyPaths, rekorPublicKeyPath, fulcio on
// sigstoreSigned), apply them.
func ignoreKeys(unknown *[]string, prefix string, fields map[string]json.RawMessage, allowed ...string) {
	for _, k := range unknownKeys(fields, allowed...) {
		*unknown = append(*unknown, strconv.Quote(prefix+k))
		delete(fields, k)
	}
}

func exactlyOne(fields map[string]json.RawMessage, keys ...string) error {
	n := 0
	for _, k := range keys {
		if _, ok := fields[k]; ok {
			n++
		}
	}
	if n != 1 {
		return fmt.Errorf("exactly one of %s is required", strings.Join(keys, ", "))
	}
	return nil
}

func checkStrings(fields map[string]json.RawMessage, keys ...string) error {
	for _, k := range keys {
		v, ok := fields[k]
		if !ok {
			continue
		}
		var s string
		if err := json.Unmarshal(v, &s); err != nil || s == "" {
			return fmt.Errorf("%q must be a non-empty string", k)
		}
	}
	return nil
}

// scopeWarning returns why a docker scope probably never matches, or "".
// go.podman.io/image/v5 does not validate docker scopes: a scope such as
// "docker://quay.io/x" or "busybox" is silently never used.
func scopeWarning(scope string) string {
	if scope == "" {
		return ""
	}
	if strings.Contains(scope, "://") {
		return fmt.Sprintf("docker scope %q has a scheme or transport prefix and never matches: write it as host/repository", scope)
	}
	if rest, ok := strings.CutPrefix(scope, "*."); ok {
		if rest == "" || strings.ContainsAny(rest, "/:*@") {
			return fmt.Sprintf("docker scope %q is not a valid wildcard domain (\"*.example.com\") and never matches", scope)
		}
		return ""
	}
	if strings.Contains(scope, "*") {
		return fmt.Sprintf("docker scope %q: a wildcard is only allowed as a leading \"*.\" and the scope never matches", scope)
	}
	if !strings.Contains(scope, "/") {
		// A registry on its own: "quay.io", "127.0.0.1:5000", "localhost".
		if (strings.ContainsAny(scope, ".:") || scope == "localhost") && !strings.ContainsAny(scope, "@ ") {
			return ""
		}
		return fmt.Sprintf("docker scope %q is neither a registry host nor a fully qualified repository and never matches", scope)
	}
	named, err := reference.ParseNormalizedNamed(scope)
	if err != nil {
		return fmt.Sprintf("docker scope %q is not a valid image reference and never matches: %v", scope, err)
	}
	if named.String() != scope {
		return fmt.Sprintf("docker scope %q is not fully qualified and never matches: did you mean %q?", scope, named.String())
	}
	if !reference.IsNameOnly(named) {
		return fmt.Sprintf("docker scope %q names a tag or digest: it only matches an image pulled by exactly that reference", scope)
	}
	return ""
}
