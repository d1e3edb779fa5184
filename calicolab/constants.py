"""Fixed names and paths inside the lab VMs (not settings: the lab's layout depends on them)."""

VM_NAMES = ("control", "node1", "node2", "host1")
SERVER = "control"
AGENTS = ("node1", "node2")
CLIENT = "host1"

# cloud-init: sha256 of the user-data as calicolab rendered it, written by that user-data itself
USER_DATA_FINGERPRINT_PATH = "/etc/calicolab/user-data.sha256"

# k3s
K3S_CONFIG_PATH = "/etc/rancher/k3s/config.yaml"
K3S_TOKEN_PATH = "/etc/rancher/k3s/calicolab-token"
K3S_KUBECONFIG_PATH = "/etc/rancher/k3s/k3s.yaml"
K3S_KUBECONFIG_MODE = "0600"

# host1
BIRD_CONFIG_PATH = "/etc/bird/bird.conf"
HOST1_KUBECONFIG_PATH = "/home/ubuntu/.kube/config"

# Kubernetes
FIELD_MANAGER = "calicolab"
