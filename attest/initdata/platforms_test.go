package initdata_test

// The TEE packages register their platforms (attest.RegisterPlatform),
// which ExpectedRegister and Check look up by name; importing them here
// registers them for every test in this directory. (They import initdata,
// so only an external test package may import them.)
import (
	_ "github.com/cocoon-cc/cocoon/attest/sample"
	_ "github.com/cocoon-cc/cocoon/attest/snp"
	_ "github.com/cocoon-cc/cocoon/attest/tdx"
	_ "github.com/cocoon-cc/cocoon/attest/tpm"
)
