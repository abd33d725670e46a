// Package harness starts and tears down the real systems cocoon's
// end-to-end suite, demo and benchmark run against: a crane registry on
// loopback, cocoond, containerd v2 with its runc shim, and ctr. It also
// builds images (busybox rootfs, arbitrary and deliberately malicious layer
// tars) and pushes them with crane.
//
// Every process is started as a direct child with exec.Cmd, its PID is
// recorded, and its output goes to a log file in the run's work directory.
// Cleanup is registered with the caller's TB (a *testing.T, or a Script in
// the commands) as soon as something is started, so that a failing test
// never leaks processes or mounts: containers and tasks are torn down
// first, then containerd (and any shim it left behind), then the
// snapshotter and registry, then every mount left under the work
// directory is lazily unmounted before the directory is removed.
//
// The harness must never touch anything outside its own temporary work
// directory: no global containerd, no /var/lib paths, no processes it did
// not start. It needs root (mounts, runc).
package harness
