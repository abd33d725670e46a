// Package e2e holds cocoon's end-to-end suite: real containerd v2, runc, a
// crane registry and cocoond on loopback, driven with ctr. It lives in its
// own module so that the tools it pins (containerd, crane) never enter the
// main module's dependency graph. The tests need root and the binaries
// built by `make build` and `make e2e-tools`; run them with `make e2e`.
// See package harness for how processes and mounts are managed.
package e2e
