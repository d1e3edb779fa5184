"""Every version, address and setting of the lab, in one place.

Each name can be overridden on the command line with pyinfra's ``--data key=value``
(and with ``python -m calicolab render OUT_DIR --data key=value``). Values given on
the command line arrive as strings; ``calicolab.model`` converts and validates them
before anything is rendered or touched.
"""

# --- Virtual machines (Multipass) -------------------------------------------------
ubuntu_image = "24.04"
vm_cpus = {"control": 2, "node1": 1, "node2": 1, "host1": 1}
# The course launches control with -m 2048M; the others keep Multipass' default 1G.
vm_memory = {"control": "2G", "node1": "1G", "node2": "1G", "host1": "1G"}
vm_disk = {"control": "10G", "node1": "8G", "node2": "8G", "host1": "5G"}
multipass_bin = "multipass"
# Seconds a single `multipass exec` may take before it is treated as hung.
multipass_exec_timeout = 600

# --- Addresses ---------------------------------------------------------------------
lab_prefix = 20          # 198.19.0.0/20, the lab underlay every VM shares
mgmt_prefix = 24         # 10.255.255.0/24, the management network
lab_ips = {
    "control": "198.19.0.1",
    "node1": "198.19.0.2",
    "node2": "198.19.0.3",
    "host1": "198.19.15.254",
}
mgmt_ips = {
    "control": "10.255.255.1",
    "node1": "10.255.255.2",
    "node2": "10.255.255.3",
    "host1": "10.255.255.254",
}
# TCP MSS clamp applied on every boot (the course clamps to 1300).
tcp_mss = 1300

# --- k3s -----------------------------------------------------------------------------
k3s_version = "v1.35.4+k3s1"
cluster_cidr = "198.19.16.0/20"
service_cidr = "198.19.32.0/20"
k3s_api_port = 6443
k3s_install_url = "https://get.k3s.io"
# The release's files: k3s (k3s-arm64 on arm64), verified against its sha256sum-<arch>.txt.
k3s_release_url = "https://github.com/k3s-io/k3s/releases/download/{version}"

# --- Calico (tigera-operator) ----------------------------------------------------------
calico_version = "v3.32.1"
# Empty: the operator image that ships with calico_version (known releases are listed in
# calicolab/model.py). Set it to pin an image yourself, e.g. for a mirror registry.
tigera_operator_image = ""
calico_pool_cidr = "198.19.16.0/21"
calico_pool_block_size = 26
calico_pool_nat_outgoing = "Enabled"
calico_pool_encapsulation = "None"
calico_container_ip_forwarding = "Enabled"
# The Calico API server (operator APIServer resource). The operator changes the pool (natOutgoing,
# encapsulation, CIDR) after install only through it. Disabled by default to keep the 1G workers lean:
# it runs as a Deployment with 2 replicas by default (Installation controlPlaneReplicas), and Calico's
# kind test cluster gives each a 64Mi request / 256Mi limit (projectcalico/calico#12215); not measured
# here. Without it a pool change needs a rebuild, or enabling it first; the course uses calicoctl.
calico_apiserver = "Disabled"
# Ranges used later in the course: the external pool and the service external IPs.
# host1's BGP filter accepts routes for them (and for service_cidr), never the default pool.
external_pool_cidr = "198.19.24.0/21"
service_external_cidr = "198.19.48.0/20"

# --- Tools on host1 ------------------------------------------------------------------
# Empty: the kubectl of k3s' Kubernetes release, and the calicoctl of calico_version. A pinned
# kubectl must be within one minor of k3s, a pinned calicoctl the same minor as Calico.
kubectl_version = ""
calicoctl_version = ""
# Downloads are verified against the upstream checksum files before they are installed.
kubectl_url = "https://dl.k8s.io/release/{version}/bin/linux/{arch}/kubectl"
kubectl_sha256_url = "https://dl.k8s.io/release/{version}/bin/linux/{arch}/kubectl.sha256"
calicoctl_url = "https://github.com/projectcalico/calico/releases/download/{version}/calicoctl-linux-{arch}"
calicoctl_sha256_url = "https://github.com/projectcalico/calico/releases/download/{version}/SHA256SUMS"

# --- BGP on host1 ----------------------------------------------------------------------
bgp_as_number = 64512

# --- YaoBank -------------------------------------------------------------------------
yaobank_namespace = "yaobank"
yaobank_images = {
    "customer": "calico/yaobank-customer:multiarch",
    "summary": "calico/yaobank-summary:multiarch",
    "database": "calico/yaobank-database:multiarch",
}
yaobank_summary_replicas = 2
yaobank_node_port = 30180

# --- Waits (seconds) -------------------------------------------------------------------
timeout_cloud_init = 900
timeout_k3s_ready = 300
timeout_operator_ready = 300
timeout_calico_available = 900
timeout_nodes_ready = 600
timeout_rollout = 600
timeout_app_answer = 120

# --- Local state on the workstation ----------------------------------------------------
# Tokens, kubeconfig and rendered cloud-init live here, mode 0700/0600.
state_dir = ".calicolab"
