package decrypt_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"testing"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/cocoon-cc/cocoon/image/decrypt"
)

// FuzzParseAnnotationPacket: the packet parser and the KEK unwrap must not
// panic on any input, and a packet that parses has the fields the kbs
// provider needs.
func FuzzParseAnnotationPacket(f *testing.F) {
	f.Add([]byte(`{"kid":"kbs:///default/key/1","wrapped_data":"KxAF","iv":"3PQMqtjbR4hxCr83","wrap_type":"A256GCM"}`))
	f.Add([]byte(`{"version":"0.1.0","provider":"kbs","kid":"kbs:///a/b/c","wrapped_data":"AA==","iv":"AAAAAAAAAAAAAAAAAAAAAA==","wrap_type":"A256CTR","provider_settings":{"a":1},"annotations":{"b":"c"}}`))
	f.Add([]byte(`{"provider":"aliyun","kid":"x","wrapped_data":"AA=="}`))
	f.Add([]byte(`null`))
	kek := bytes.Repeat([]byte{7}, 32)
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := decrypt.ParseAnnotationPacket(b)
		if err != nil {
			return
		}
		if p.Kid == "" || len(p.WrappedData) == 0 || p.Provider == "" || p.Version == "" {
			t.Fatalf("accepted incomplete packet %+v", p)
		}
		if p.Provider == decrypt.ProviderKBS {
			if p.WrapType != decrypt.WrapTypeA256GCM && p.WrapType != decrypt.WrapTypeA256CTR {
				t.Fatalf("accepted wrap_type %q", p.WrapType)
			}
			_, _ = p.UnwrapWithKEK(kek)
		}
		_, _ = p.Unwrap(context.Background(), fakeResources{p.Kid: kek})
	})
}

// FuzzLayerOptions: pubopts and PLBCO parsers, and the whole descriptor
// path up to key unwrap, must not panic.
func FuzzLayerOptions(f *testing.F) {
	f.Add("eyJjaXBoZXIiOiJBRVNfMjU2X0NUUl9ITUFDX1NIQTI1NiIsImhtYWMiOiJGb0JCUkVFVjFKeFZwamhBRVhBYUdObUZTbitmTmZZR3RPOTNzZldnQWRNPSIsImNpcGhlcm9wdGlvbnMiOnt9fQ==",
		[]byte(`{"symkey":"1jL2jJV0Oyz2nmPkLtqulW6cKcpIUN5FpILcVnP5Uqs=","digest":"sha256:18be1897f9402f27c8c0eba7c86e0c00f5656db62961b5949d55f9565c42c6e7","cipheroptions":{"nonce":"r10F9oaCu+nWFXfod3l83g=="}}`))
	f.Add("", []byte(`{}`))
	f.Fuzz(func(t *testing.T, pub string, priv []byte) {
		if p, err := decrypt.ParsePublicOptions(pub); err == nil && len(p.Hmac) != decrypt.HMACSize {
			t.Fatalf("accepted HMAC of %d bytes", len(p.Hmac))
		}
		if p, err := decrypt.ParsePrivateOptions(priv); err == nil {
			if len(p.SymmetricKey) != decrypt.LayerKeySize || len(p.CipherOptions["nonce"]) != decrypt.NonceSize {
				t.Fatalf("accepted options %+v", p)
			}
		}
		desc := ocispec.Descriptor{
			MediaType: "application/vnd.oci.image.layer.v1.tar+encrypted",
			Digest:    "sha256:18be1897f9402f27c8c0eba7c86e0c00f5656db62961b5949d55f9565c42c6e7",
			Annotations: map[string]string{
				decrypt.AnnotationPubOpts:          pub,
				decrypt.AnnotationAttestationAgent: base64.StdEncoding.EncodeToString(priv) + "," + string(priv),
				decrypt.AnnotationJWE:              string(priv),
			},
		}
		r, err := decrypt.NewReader(context.Background(), bytes.NewReader(priv), desc, decrypt.Options{Resources: fakeResources{}})
		if err == nil {
			_ = r.Verify()
		}
	})
}
