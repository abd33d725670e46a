// Package signature decides whether an image may be pulled: it evaluates an
// image security policy (containers-policy.json, with image-rs semantics) for
// one image reference pinned to one manifest digest and returns a verdict.
//
// The evaluation of each requirement is delegated to
// go.podman.io/image/v5/signature (GPG simple signing from a lookaside store
// or the registry, cosign v2 `sha256-<hex>.sig` attachments). Cosign v3
// bundles (OCI referrers API, or the `sha256-<hex>` tag fallback), which that
// library does not read, are verified here.
//
// The package must never: treat a missing or unparsable policy as "allow"
// once a policy was configured; evaluate a signature against anything but the
// manifest digest it was given (a tag moved during a pull must not change the
// verdict); log registry credentials; or contact a registry for a rule that
// does not need signatures (`reject`, `insecureAcceptAnything`).
package signature
