// Package cdh serves the Confidential Data Hub's ttRPC API
// (guest-components' protos/confidential-data-hub/{api,keyprovider}.proto,
// generated in kata/api) over cocoon's implementations: sealed secrets
// (secretsfs/sealed), KBS resources (attest/kbs), layer-key unwrapping for
// ocicrypt (image/decrypt), and, through the ImagePuller and SecureMounter
// seams, image pulls into bundles and protected volumes.
//
// Errors reach the client as upstream's do: ttRPC status INTERNAL with
// upstream's "[CDH] [ERROR]: <what failed>" message, followed here by the
// cause. It must never put a secret, a key or resource bytes in an error or
// a log line.
package cdh

import (
	"context"
	"fmt"

	"github.com/containerd/log"
	"github.com/containerd/ttrpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cocoon-cc/cocoon/attest/config"
	"github.com/cocoon-cc/cocoon/attest/kbs"
	"github.com/cocoon-cc/cocoon/kata/api/cdhpb"
	"github.com/cocoon-cc/cocoon/kata/api/keyproviderpb"
)

// DefaultSocket is upstream CDH's default address (cdh.toml `socket`).
const DefaultSocket = config.DefaultCDHSocket

// Unsealer opens sealed secrets ("sealed.<header>.<payload>.<signature>");
// *sealed.Unsealer is one.
type Unsealer interface {
	Unseal(ctx context.Context, sealed []byte) ([]byte, error)
}

// ImagePuller pulls an image and lays it out as an OCI bundle: the root
// filesystem at bundlePath/rootfs and the runtime config at
// bundlePath/config.json. It returns the manifest digest. A refused image
// must leave no bundle behind.
type ImagePuller interface {
	PullImage(ctx context.Context, imageURL, bundlePath string) (manifestDigest string, err error)
}

// SecureMounter mounts a protected volume as CDH's SecureMount does:
// volumeType selects the driver ("block-device"), options and flags are the
// request's, mountPoint is where the volume must appear. It returns the
// path it mounted (upstream's reply carries nothing, so it is only logged).
type SecureMounter interface {
	SecureMount(ctx context.Context, volumeType string, options map[string]string, flags []string, mountPoint string) (mountPath string, err error)
}

// Options are what the services call. A nil field makes its service answer
// every request with an error saying it is not configured.
type Options struct {
	// Unsealer serves SealedSecretService.UnsealSecret.
	Unsealer Unsealer
	// Resources serves GetResourceService.GetResource and fetches the KEKs
	// for KeyProviderService.UnWrapKey.
	Resources kbs.ResourceGetter
	// Images serves ImagePullService.PullImage.
	Images ImagePuller
	// Mounter serves SecureMountService.SecureMount.
	Mounter SecureMounter
}

// Service implements the CDH's ttRPC services.
type Service struct{ o Options }

// New returns the CDH services over o.
func New(o Options) *Service { return &Service{o: o} }

// Register registers all five CDH services (sealed secrets, resources, key
// provider, secure mount, image pull) on srv, as upstream's ttrpc-cdh does.
func (s *Service) Register(srv *ttrpc.Server) {
	cdhpb.RegisterSealedSecretServiceService(srv, sealedSecrets{s})
	cdhpb.RegisterGetResourceServiceService(srv, resources{s})
	keyproviderpb.RegisterKeyProviderServiceService(srv, keyProvider{s})
	cdhpb.RegisterSecureMountServiceService(srv, secureMount{s})
	cdhpb.RegisterImagePullServiceService(srv, imagePull{s})
}

// Upstream's brief messages (confidential-data-hub/hub/src/error.rs), which
// follow "[CDH] [ERROR]: ".
const (
	msgUnseal      = "Unseal Secret failed"
	msgGetResource = "Get Resource failed"
	msgUnwrapKey   = "Decrypt Image (UnwrapKey) failed"
	msgSecureMount = "Secure Mount failed"
	msgImagePull   = "Image Pull error"
)

// failure logs err for method and returns the status upstream answers:
// INTERNAL, "[CDH] [ERROR]: <brief>: <cause>".
func failure(ctx context.Context, method, brief string, err error) error {
	log.G(ctx).WithError(err).WithField("method", method).Error("[ttRPC CDH] request failed")
	return status.Errorf(codes.Internal, "[CDH] [ERROR]: %s: %v", brief, err)
}

type sealedSecrets struct{ *Service }

func (s sealedSecrets) UnsealSecret(ctx context.Context, req *cdhpb.UnsealSecretInput) (*cdhpb.UnsealSecretOutput, error) {
	if s.o.Unsealer == nil {
		return nil, failure(ctx, "UnsealSecret", msgUnseal, errNotConfigured("sealed secrets"))
	}
	plain, err := s.o.Unsealer.Unseal(ctx, req.GetSecret())
	if err != nil {
		return nil, failure(ctx, "UnsealSecret", msgUnseal, err)
	}
	return &cdhpb.UnsealSecretOutput{Plaintext: plain}, nil
}

type resources struct{ *Service }

// GetResource fetches ResourcePath from the KBS. As upstream's KBS getter,
// the path must be a resource URI (kbs:///repo/type/tag; a host part is
// accepted and ignored).
func (s resources) GetResource(ctx context.Context, req *cdhpb.GetResourceRequest) (*cdhpb.GetResourceResponse, error) {
	if s.o.Resources == nil {
		return nil, failure(ctx, "GetResource", msgGetResource, errNotConfigured("KBS"))
	}
	uri := req.GetResourcePath()
	if _, err := kbs.ParseResourceURI(uri); err != nil {
		return nil, failure(ctx, "GetResource", msgGetResource, fmt.Errorf("illegal kbs resource uri: %w", err))
	}
	b, err := s.o.Resources.GetResource(ctx, uri)
	if err != nil {
		return nil, failure(ctx, "GetResource", msgGetResource, err)
	}
	return &cdhpb.GetResourceResponse{Resource: b}, nil
}

type secureMount struct{ *Service }

func (s secureMount) SecureMount(ctx context.Context, req *cdhpb.SecureMountRequest) (*cdhpb.SecureMountResponse, error) {
	if s.o.Mounter == nil {
		return nil, failure(ctx, "SecureMount", msgSecureMount, errNotConfigured("secure mounts"))
	}
	// The options may hold a key reference but never key bytes; still,
	// only the volume type and mount point are logged.
	p, err := s.o.Mounter.SecureMount(ctx, req.GetVolumeType(), req.GetOptions(), req.GetFlags(), req.GetMountPoint())
	if err != nil {
		return nil, failure(ctx, "SecureMount", msgSecureMount, err)
	}
	log.G(ctx).WithFields(log.Fields{"volume_type": req.GetVolumeType(), "mount_point": req.GetMountPoint(), "mounted": p}).Debug("[ttRPC CDH] secure mount succeeded")
	return &cdhpb.SecureMountResponse{}, nil
}

type imagePull struct{ *Service }

func (s imagePull) PullImage(ctx context.Context, req *cdhpb.ImagePullRequest) (*cdhpb.ImagePullResponse, error) {
	if s.o.Images == nil {
		return nil, failure(ctx, "PullImage", msgImagePull, errNotConfigured("image pulls"))
	}
	d, err := s.o.Images.PullImage(ctx, req.GetImageUrl(), req.GetBundlePath())
	if err != nil {
		return nil, failure(ctx, "PullImage", msgImagePull, err)
	}
	return &cdhpb.ImagePullResponse{ManifestDigest: d}, nil
}

func errNotConfigured(what string) error { return fmt.Errorf("%s: not configured in this CDH", what) }
