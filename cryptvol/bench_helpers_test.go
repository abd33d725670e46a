package cryptvol

import "github.com/cocoon-cc/cocoon/cryptvol/engine/userspace"

func newSectorCipherForBench(key []byte) (*userspace.SectorCipher, error) {
	return userspace.NewSectorCipher(key, 4096, 0)
}
