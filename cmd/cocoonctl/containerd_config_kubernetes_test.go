package main

// What an operator deploys (contrib/kubernetes, contrib/kata-host) is kept
// correct here, offline: every manifest decodes strictly into the
// Kubernetes API's Go types, the pieces agree with each other and with the
// containerd fragment this command prints, and the installer script is run
// against a scratch root.

import (
	"bytes"
	"context"
	"errors"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	nodev1 "k8s.io/api/node/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/validation"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"

	"github.com/cocoon-cc/cocoon/attest/initdata"
	"github.com/cocoon-cc/cocoon/snapshotter"
)

var (
	contribDir = filepath.Join("..", "..", "contrib")
	kubeDir    = filepath.Join(contribDir, "kubernetes")
)

// kustomization is the part of kustomize's Kustomization
// (sigs.k8s.io/kustomize/api/types) these manifests use; decoding strictly
// into it refuses any other field.
type kustomization struct {
	metav1.TypeMeta `json:",inline"`
	Namespace       string   `json:"namespace"`
	Resources       []string `json:"resources"`
	Images          []struct {
		Name    string `json:"name"`
		NewName string `json:"newName,omitempty"`
		NewTag  string `json:"newTag,omitempty"`
	} `json:"images"`
}

// manifests holds every document under contrib/kubernetes, by kind.
type manifests struct {
	files         []string // paths relative to contrib/kubernetes
	kustomization kustomization
	namespaces    []corev1.Namespace
	daemonSets    []appsv1.DaemonSet
	runtimeClass  []nodev1.RuntimeClass
	pods          []corev1.Pod
}

// splitYAML splits a multi-document YAML file on its "---" lines.
func splitYAML(raw []byte) [][]byte {
	var docs [][]byte
	for d := range bytes.SplitSeq(raw, []byte("\n---")) {
		if len(bytes.TrimSpace(stripComments(d))) > 0 {
			docs = append(docs, d)
		}
	}
	return docs
}

func stripComments(d []byte) []byte {
	var out []byte
	for l := range bytes.Lines(d) {
		if !bytes.HasPrefix(bytes.TrimSpace(l), []byte("#")) {
			out = append(out, l...)
		}
	}
	return out
}

// strictDecode decodes YAML the way the API server's strict field
// validation does (k8s.io/apimachinery runtime/serializer/json): field names
// case-sensitive, unknown and duplicate fields refused. encoding/json's
// DisallowUnknownFields alone would accept "hostPid" for hostPID.
func strictDecode(doc []byte, obj any) error {
	j, err := yaml.YAMLToJSONStrict(doc)
	if err != nil {
		return err
	}
	strictErrs, err := kjson.UnmarshalStrict(j, obj, kjson.DisallowDuplicateFields, kjson.DisallowUnknownFields)
	if err != nil {
		return err
	}
	return errors.Join(strictErrs...)
}

// decodeDoc decodes one document strictly into the Go type of its
// apiVersion and kind.
func (m *manifests) decodeDoc(doc []byte) error {
	var tm metav1.TypeMeta
	if err := yaml.Unmarshal(doc, &tm); err != nil {
		return err
	}
	var err error
	switch tm.APIVersion + " " + tm.Kind {
	case "kustomize.config.k8s.io/v1beta1 Kustomization":
		err = strictDecode(doc, &m.kustomization)
	case "v1 Namespace":
		err = appendDecoded(&m.namespaces, doc)
	case "apps/v1 DaemonSet":
		err = appendDecoded(&m.daemonSets, doc)
	case "node.k8s.io/v1 RuntimeClass":
		err = appendDecoded(&m.runtimeClass, doc)
	case "v1 Pod":
		err = appendDecoded(&m.pods, doc)
	default:
		// RBAC kinds included: the installer needs no API access.
		return &unexpectedKind{tm}
	}
	return err
}

func appendDecoded[T any](list *[]T, doc []byte) error {
	var v T
	if err := strictDecode(doc, &v); err != nil {
		return err
	}
	*list = append(*list, v)
	return nil
}

type unexpectedKind struct{ tm metav1.TypeMeta }

func (e *unexpectedKind) Error() string {
	return "unexpected apiVersion/kind " + e.tm.APIVersion + " " + e.tm.Kind + " (add it to the test with its Go type)"
}

func loadManifests(t *testing.T) *manifests {
	t.Helper()
	m := &manifests{}
	err := filepath.WalkDir(kubeDir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(p, ".yaml") {
			return err
		}
		rel, _ := filepath.Rel(kubeDir, p)
		m.files = append(m.files, filepath.ToSlash(rel))
		raw, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		for i, doc := range splitYAML(raw) {
			if err := m.decodeDoc(doc); err != nil {
				t.Errorf("%s document %d: %v", rel, i+1, err)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(m.daemonSets) != 1 || len(m.runtimeClass) != 1 || len(m.namespaces) != 1 || len(m.pods) != 1 {
		t.Fatalf("want one DaemonSet, RuntimeClass, Namespace and example Pod; got %d, %d, %d, %d",
			len(m.daemonSets), len(m.runtimeClass), len(m.namespaces), len(m.pods))
	}
	return m
}

// TestKubernetesKustomization: the kustomization lists every manifest
// outside examples/ and names the namespace and image the others use.
func TestKubernetesKustomization(t *testing.T) {
	m := loadManifests(t)
	k := m.kustomization
	var want []string
	for _, f := range m.files {
		if f != "kustomization.yaml" && !strings.HasPrefix(f, "examples/") {
			want = append(want, f)
		}
	}
	got := slices.Sorted(slices.Values(k.Resources))
	if !slices.Equal(got, want) {
		t.Errorf("kustomization resources = %v, want the manifests %v", got, want)
	}
	if k.Namespace != m.namespaces[0].Name || m.daemonSets[0].Namespace != k.Namespace {
		t.Errorf("namespace: kustomization %q, Namespace %q, DaemonSet %q", k.Namespace, m.namespaces[0].Name, m.daemonSets[0].Namespace)
	}
	image := m.daemonSets[0].Spec.Template.Spec.Containers[0].Image
	if len(k.Images) != 1 || !strings.HasPrefix(image, k.Images[0].Name+":") {
		t.Errorf("kustomization images %+v do not rewrite the DaemonSet's image %q", k.Images, image)
	}
	for _, name := range []string{k.Namespace, m.daemonSets[0].Name, m.runtimeClass[0].Name, m.pods[0].Name} {
		if errs := validation.IsDNS1123Subdomain(name); len(errs) > 0 {
			t.Errorf("name %q: %v", name, errs)
		}
	}
}

// daemonSetEnv returns the installer container's environment variable.
func daemonSetEnv(c corev1.Container, name string) string {
	for _, e := range c.Env {
		if e.Name == name {
			return e.Value
		}
	}
	return ""
}

// TestKubernetesDaemonSet checks what the installer needs: privileged, the
// host's PID namespace (nsenter into PID 1), no API access, a preStop
// uninstall, and each volume mount backed by the host directory it stands
// for under COCOON_HOST_ROOT.
func TestKubernetesDaemonSet(t *testing.T) {
	m := loadManifests(t)
	ds := m.daemonSets[0]
	spec := ds.Spec.Template.Spec
	if len(spec.Containers) != 1 || len(spec.InitContainers) != 0 {
		t.Fatalf("want one installer container, got %d (+%d init)", len(spec.Containers), len(spec.InitContainers))
	}
	c := spec.Containers[0]
	if c.SecurityContext == nil || c.SecurityContext.Privileged == nil || !*c.SecurityContext.Privileged || !spec.HostPID {
		t.Error("the installer must be privileged with hostPID (nsenter --target 1)")
	}
	if spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken || spec.ServiceAccountName != "" {
		t.Error("the installer uses no API: no service account token, no service account")
	}
	sel, err := metav1.LabelSelectorAsSelector(ds.Spec.Selector)
	if err != nil || !sel.Matches(labels.Set(ds.Spec.Template.Labels)) {
		t.Errorf("selector %v does not match the pod template's labels (%v)", ds.Spec.Selector, err)
	}
	script := "/opt/cocoon-artifacts/cocoon-install.sh"
	if !slices.Equal(c.Command, []string{script, "run"}) ||
		c.Lifecycle == nil || c.Lifecycle.PreStop == nil || c.Lifecycle.PreStop.Exec == nil ||
		!slices.Equal(c.Lifecycle.PreStop.Exec.Command, []string{script, "uninstall"}) {
		t.Errorf("command %v / preStop: want %s run, and %s uninstall", c.Command, script, script)
	}
	root := daemonSetEnv(c, "COCOON_HOST_ROOT")
	volumes := map[string]corev1.Volume{}
	for _, v := range spec.Volumes {
		volumes[v.Name] = v
	}
	for _, vm := range c.VolumeMounts {
		v, ok := volumes[vm.Name]
		if !ok || v.HostPath == nil || root+v.HostPath.Path != vm.MountPath {
			t.Errorf("volume mount %s at %s is not the host's %s", vm.Name, vm.MountPath, strings.TrimPrefix(vm.MountPath, root))
		}
	}
	if rcs := m.runtimeClass[0].Scheduling; rcs == nil || len(spec.NodeSelector) == 0 || !maps.Equal(spec.NodeSelector, rcs.NodeSelector) {
		t.Errorf("DaemonSet nodeSelector %v != RuntimeClass scheduling %v: pods would land where cocoon is not installed",
			spec.NodeSelector, m.runtimeClass[0].Scheduling)
	}
}

// TestKubernetesRuntimeClassAndExample: the RuntimeClass's handler is one
// the installer configures and the fragment maps to cocoon; the example pod
// uses it, names the handler for PullImage, and carries
// contrib/kata-guest/initdata.toml as its init-data.
func TestKubernetesRuntimeClassAndExample(t *testing.T) {
	m := loadManifests(t)
	rc, pod := m.runtimeClass[0], m.pods[0]
	handlers := strings.Split(daemonSetEnv(m.daemonSets[0].Spec.Template.Spec.Containers[0], "COCOON_RUNTIME_HANDLERS"), ",")
	if !slices.Contains(handlers, rc.Handler) {
		t.Errorf("RuntimeClass handler %q is not among the installer's COCOON_RUNTIME_HANDLERS %v", rc.Handler, handlers)
	}
	_, doc := render(t, containerdConfigOptions{Address: "/run/cocoon/cocoon.sock", Version: "2", Name: "cocoon", Mode: modeKataHost, RuntimeHandler: strings.Join(handlers, ",")})
	if got := dig(doc, "plugins", "io.containerd.cri.v1.runtime", "containerd", "runtimes", rc.Handler, "snapshotter"); got != "cocoon" {
		t.Errorf("the kata-host fragment maps handler %q to snapshotter %v", rc.Handler, got)
	}
	if rc.Overhead == nil || rc.Overhead.PodFixed.Memory().IsZero() || rc.Scheduling == nil {
		t.Error("RuntimeClass needs overhead and scheduling (as kata-deploy's)")
	}
	if pod.Spec.RuntimeClassName == nil || *pod.Spec.RuntimeClassName != rc.Name {
		t.Errorf("example pod runtimeClassName %v, want %q", pod.Spec.RuntimeClassName, rc.Name)
	}
	if got := pod.Annotations["io.containerd.cri.runtime-handler"]; got != rc.Handler {
		t.Errorf("example pod's io.containerd.cri.runtime-handler = %q, want %q", got, rc.Handler)
	}
	raw, err := initdata.DecodeAnnotation(pod.Annotations[initdata.AnnotationKey])
	if err != nil {
		t.Fatalf("example pod's %s: %v", initdata.AnnotationKey, err)
	}
	want, err := os.ReadFile(filepath.Join(contribDir, "kata-guest", "initdata.toml"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(raw, want) {
		t.Error("example pod's init-data is not contrib/kata-guest/initdata.toml; re-encode it with cocoonctl initdata encode")
	}
}

// TestKubernetesContainerfile: the image holds what the DaemonSet and the
// script expect, from files that exist (bin/ are make build's binaries).
func TestKubernetesContainerfile(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join(kubeDir, "Containerfile"))
	if err != nil {
		t.Fatal(err)
	}
	mk, err := os.ReadFile(filepath.Join("..", "..", "Makefile"))
	if err != nil {
		t.Fatal(err)
	}
	built := regexp.MustCompile(`(?m)^BINARIES := (.*)$`).FindSubmatch(mk)
	dests := map[string]bool{}
	for _, l := range strings.Split(string(raw), "\n") {
		f := strings.Fields(l)
		if len(f) < 3 || f[0] != "COPY" {
			continue
		}
		dst := f[len(f)-1]
		for _, src := range f[1 : len(f)-1] {
			if bin, ok := strings.CutPrefix(src, "bin/"); ok {
				if built == nil || !slices.Contains(strings.Fields(string(built[1])), bin) {
					t.Errorf("Containerfile copies %s, which make build does not build", src)
				}
			} else if _, err := os.Stat(filepath.Join("..", "..", src)); err != nil {
				t.Errorf("Containerfile copies %s: %v", src, err)
			}
			if strings.HasSuffix(dst, "/") {
				dests[dst+filepath.Base(src)] = true
			} else {
				dests[dst] = true
			}
		}
	}
	for _, p := range []string{"/opt/cocoon-artifacts/cocoon-install.sh", "/opt/cocoon-artifacts/bin/cocoond",
		"/opt/cocoon-artifacts/bin/" + snapshotter.KataHelperName,
		"/opt/cocoon-artifacts/bin/cocoonctl", "/opt/cocoon-artifacts/kata-host/cocoond.service",
		"/opt/cocoon-artifacts/kata-host/cocoond.toml"} {
		if !dests[p] {
			t.Errorf("the image lacks %s (cocoon-install.sh's defaults)", p)
		}
	}
}

// TestReadmeDeployOnKubernetes: the README's "Deploy on Kubernetes" commands
// are the ones these tests check; a command this test does not know fails it.
func TestReadmeDeployOnKubernetes(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, sec, ok := strings.Cut(string(raw), "\n## Deploy on Kubernetes\n")
	if !ok {
		t.Fatal("README has no Deploy on Kubernetes section")
	}
	sec, _, _ = strings.Cut(sec, "\n## ")
	m := loadManifests(t)
	n := 0
	for i, block := range strings.Split(sec, "```") {
		if i%2 == 0 || !strings.HasPrefix(block, "sh\n") {
			continue
		}
		for _, line := range strings.Split(strings.TrimPrefix(block, "sh\n"), "\n") {
			cmd, comment, _ := strings.Cut(line, "#")
			if f := strings.Fields(cmd); len(f) > 0 {
				checkReadmeCommand(t, m, f, strings.TrimSpace(comment))
				n++
			}
		}
	}
	if n < 6 {
		t.Errorf("found %d commands in the section", n)
	}
}

func checkReadmeCommand(t *testing.T, m *manifests, f []string, comment string) {
	t.Helper()
	line := strings.Join(f, " ")
	image := m.daemonSets[0].Spec.Template.Spec.Containers[0].Image
	switch {
	case line == "make build":
	case line == "podman build -f contrib/kubernetes/Containerfile -t "+image+" .":
	case line == "kubectl apply -k contrib/kubernetes":
	case len(f) == 4 && line == "kubectl apply -f "+f[3]:
		rel, ok := strings.CutPrefix(f[3], "contrib/kubernetes/")
		if !ok || !slices.Contains(m.files, rel) {
			t.Errorf("README applies %s, which is not a checked manifest", f[3])
		}
	case len(f) > 2 && f[0] == "cocoonctl" && f[1] == "containerd-config":
		o, err := parseContainerdConfig(f[2:])
		if err != nil {
			t.Fatalf("%s: %v", line, err)
		}
		got, _ := render(t, o)
		want, err := os.ReadFile(filepath.Join("..", "..", comment))
		if err != nil || got != string(want) {
			t.Errorf("README: %s does not print %s (%v)", line, comment, err)
		}
	case len(f) == 4 && line == "cocoonctl initdata encode "+f[3]:
		var b bytes.Buffer
		if err := runInitdataEncode(context.Background(), []string{filepath.Join("..", "..", f[3])}, &b); err != nil {
			t.Fatal(err)
		}
		if strings.TrimSpace(b.String()) != m.pods[0].Annotations[initdata.AnnotationKey] {
			t.Errorf("README: %s does not print the example pod's annotation", line)
		}
	default:
		t.Errorf("README command %q is not one the tests check (DaemonSet image %s)", line, image)
	}
}

// TestContribUnits: every systemd unit under contrib/ starts cocoond with
// the cocoond.toml next to it, ordered before the service that uses it, and
// with KillMode=process so that a restart leaves detached helpers (and the
// mounts they serve) alone.
func TestContribUnits(t *testing.T) {
	units, _ := filepath.Glob(filepath.Join(contribDir, "*.service"))
	more, _ := filepath.Glob(filepath.Join(contribDir, "*", "*.service"))
	units = append(units, more...)
	if len(units) < 3 {
		t.Fatalf("units: %v", units)
	}
	for _, u := range units {
		raw, err := os.ReadFile(u)
		if err != nil {
			t.Fatal(err)
		}
		keys := map[string]string{}
		section := ""
		for _, l := range strings.Split(string(raw), "\n") {
			switch l = strings.TrimSpace(l); {
			case l == "" || strings.HasPrefix(l, "#"):
			case strings.HasPrefix(l, "[") && strings.HasSuffix(l, "]"):
				section = l
			default:
				k, v, ok := strings.Cut(l, "=")
				if !ok || section == "" {
					t.Errorf("%s: line %q is not a key in a section", u, l)
				}
				keys[section+k] = v
			}
		}
		start := strings.Fields(keys["[Service]ExecStart"])
		if keys["[Service]KillMode"] != "process" || keys["[Unit]Before"] == "" || keys["[Install]WantedBy"] == "" ||
			len(start) != 3 || !strings.HasSuffix(start[0], "/cocoond") || start[1] != "--config" || start[2] != "/etc/cocoon/cocoond.toml" {
			t.Errorf("%s: KillMode=%q Before=%q ExecStart=%q", u, keys["[Service]KillMode"], keys["[Unit]Before"], start)
		}
		if _, err := os.Stat(filepath.Join(filepath.Dir(u), "cocoond.toml")); err != nil {
			t.Errorf("%s has no cocoond.toml next to it: %v", u, err)
		}
	}
}
