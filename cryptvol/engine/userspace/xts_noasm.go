//go:build !amd64 || purego

package userspace

// newAESNIXTS has no accelerated implementation on this platform.
func newAESNIXTS([]byte) sectorXTS { return nil }
