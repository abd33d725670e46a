// Package cryptvol provisions LUKS2-encrypted volumes for Confidential
// Containers: Kubernetes emptyDir scratch space and trusted image storage
// whose volume key and header never leave the TEE.
//
// # What it does
//
//   - Format writes a LUKS2 header (aes-xts-plain64, 4096-byte sectors, a
//     random 512-bit volume key, one passphrase keyslot) in place or to a
//     detached header file. cryptsetup accepts the result (luksDump,
//     open --test-passphrase).
//   - Open unlocks a LUKS2 volume (ours or cryptsetup's, detached header or
//     not; PBKDF2, argon2i and argon2id keyslots), maps it with an engine,
//     optionally creates ext4 and mounts it.
//   - CreateEphemeral makes a scratch volume with a random key and a header
//     that exists only in memory (no keyslot): once closed the data is gone.
//   - NewEmptyDir gives emptyDir semantics: SizeLimit, Medium "Memory" for
//     tmpfs, removal at teardown (Volume.Destroy).
//   - Volume.Close unmounts and unmaps; Volume.Destroy also wipes the header
//     (overwrites the LUKS2 metadata of a persistent volume, forgets the
//     in-memory one) and removes what it created.
//
// # API for cocoond
//
//	v, err := cryptvol.NewEmptyDir(ctx, cryptvol.EmptyDirOptions{
//		Dir: podDir, SizeLimit: limit, Medium: medium, BackingDir: "/var/lib/cocoon/volumes"})
//	...
//	err = v.Destroy(ctx) // at pod teardown
//
// For trusted image storage (cocoond --storage-volume) cocoond calls
// CreateEphemeral with the storage device as Backing and the snapshotter
// root as MountDir, and Destroy at shutdown. A volume lives as long as the
// process that created it: the userspace engine's FUSE server runs in it.
//
// # Engines
//
// The engine presents the decrypted data segment as a block device.
//
//   - dmcrypt (package engine/dmcrypt): the kernel's dm-crypt, set up with
//     raw device-mapper ioctls; chosen by EngineAuto when /dev/mapper/control
//     exists and answers DM_VERSION (Debian's dmsetup creates the node even
//     on kernels without device-mapper, as on our machines). The key goes
//     into the kernel's table once, flagged DM_SECURE_DATA.
//   - userspace (package engine/userspace): a go-fuse file system in this
//     process serves one file whose reads and writes are AES-XTS over the
//     backing file, in the volume's sector size, with dm-crypt's plain64 IV
//     (the 512-byte sector number within the segment plus iv_tweak; LUKS2
//     never uses iv_large_sectors). A loop device (LOOP_CONFIGURE, logical
//     block size = sector size, direct I/O) sits on that file and ext4 on
//     the loop device. Volumes are byte-compatible with dm-crypt: a volume
//     written by one engine opens with the other.
//
// The choice and its reason are logged ("cryptvol: crypto engine selected").
//
// # What was not exercised here
//
// The project's machines have no device-mapper (the kernel is built
// without it), so the dm-crypt engine has never run: its ioctl encoding,
// ioctl numbers and crypt table line are unit-tested, but DM_DEV_CREATE,
// DM_TABLE_LOAD, resume, DM_DEV_REMOVE and the /dev/mapper node creation
// have not been executed against a kernel. Interoperability of the
// userspace engine's on-disk format with dm-crypt is shown indirectly:
// sectors it writes decrypt with OpenSSL's AES-256-XTS using the IV rule
// above and the key cryptsetup --dump-volume-key prints, and volumes
// formatted by cryptsetup open, mount and reopen with cocoon.
//
// # What it must never do
//
// Never write a volume key or passphrase to disk, pass one on a command
// line or in the environment, or log one. Keys are zeroized after use
// (luks2.Zero). The userspace engine's own AES-XTS key schedule (amd64,
// AES-NI or VAES) is wiped at detach; the schedules inside crypto/aes
// (the dm-crypt table aside, other platforms and the purego build) cannot
// be wiped from Go and are dropped to the garbage collector. An ephemeral volume's
// header lives only in memory. Never leave a mount, loop device or mapping
// behind on an error path.
package cryptvol
