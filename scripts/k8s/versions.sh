# The pinned versions of the test control plane (sourced by scripts/k8s/*.sh; tests/realkube.py reads it too).
# kube-apiserver, kube-controller-manager and kube-scheduler from the Go module k8s.io/kubernetes; KWOK's release
# uses the same k8s.io/* staging modules (v0.36.1), so both builds share most of Go's build cache.
K8S_VERSION=v1.36.1
KWOK_VERSION=v0.8.0
