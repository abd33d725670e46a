package signature

import (
	"fmt"

	"github.com/containerd/errdefs"
)

// rejectPrefix is what image-rs puts before every policy refusal.
const rejectPrefix = "Image policy rejected: Denied by policy: "

// RejectedError is a policy refusal. Its Error() is image-rs' message, e.g.
// "Image policy rejected: Denied by policy: rejected by `sigstoreSigned` rule".
// It matches errdefs.ErrPermissionDenied with errors.Is.
type RejectedError struct {
	// Rule is the requirement type that refused: "reject", "signedBy" or
	// "sigstoreSigned".
	Rule string
	// Image is the reference that was evaluated.
	Image string
	// Reason is the detail (which signature failed and why). It is not part
	// of Error(), which stays exactly upstream's; log it.
	Reason string

	// transient marks a refusal caused by a failure to read the image or
	// its signatures rather than by a verdict: it is not cached.
	transient bool
}

func (e *RejectedError) Error() string {
	if e.Rule == typeReject {
		return fmt.Sprintf("%sPolicy `reject` rejects image %s", rejectPrefix, e.Image)
	}
	return fmt.Sprintf("%srejected by `%s` rule", rejectPrefix, e.Rule)
}

// Unwrap makes errors.Is(err, errdefs.ErrPermissionDenied) true.
func (e *RejectedError) Unwrap() error { return errdefs.ErrPermissionDenied }
