// Package luks2 reads and writes LUKS2 on-disk headers (binary header, JSON
// metadata area and keyslot areas) and derives the volume key from a
// passphrase keyslot, byte for byte as cryptsetup defines them.
//
// Headers are untrusted input: Parse validates every size, offset and
// checksum before anything is used, and never runs a key derivation while
// parsing. Keyslots are written with PBKDF2 (iterations configurable, so
// tests stay fast); PBKDF2, argon2i and argon2id keyslots are accepted when
// unlocking.
//
// The package never writes a key to disk and never logs one: volume keys
// and passphrase-derived keys live in caller-owned byte slices that callers
// zeroize with Zero. Memory inside crypto/aes and crypto/hmac (expanded key
// schedules) cannot be wiped from Go and is left to the garbage collector.
package luks2
