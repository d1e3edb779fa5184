"""What the rendered files say is what the lab needs, and every setting reaches every place."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys

import pytest
import yaml

from calicolab.constants import K3S_TOKEN_PATH, VM_NAMES
from calicolab.model import LabConfigError, load_lab
from calicolab.render import (
    bird,
    cloud_init_fingerprint,
    quote,
    render_all,
    render_bird_conf,
    render_cloud_init,
    render_k3s_config,
    render_manifest,
)


def documents(text):
    return [d for d in yaml.safe_load_all(text) if d]


def by_kind(lab, which, kind, name):
    return next(d for d in documents(render_manifest(lab, which)) if d["kind"] == kind and d["metadata"]["name"] == name)


def write_file(user_data, path):
    return next(f for f in user_data["write_files"] if f["path"] == path)


@pytest.mark.parametrize("name", VM_NAMES)
def test_cloud_init_carries_the_vms_addresses_and_all_host_names(lab, name):
    user_data = yaml.safe_load(render_cloud_init(lab, name))
    network = json.loads(write_file(user_data, "/etc/calicolab/network.json")["content"])
    vm = lab.vms[name]
    assert network["addresses"] == [f"{vm.lab_ip}/20", f"{vm.mgmt_ip}/24"]
    hosts = write_file(user_data, "/etc/cloud/templates/hosts.debian.tmpl")
    assert hosts["append"] is True
    lines = {line.strip() for line in hosts["content"].splitlines()}
    assert {"198.19.0.1 control", "198.19.0.2 node1", "198.19.0.3 node2", "198.19.15.254 host1"} <= lines
    # manage_etc_hosts regenerates /etc/hosts from the template on every boot: that is what makes the names stick.
    assert user_data["manage_etc_hosts"] is True


@pytest.mark.parametrize("name", VM_NAMES)
def test_cloud_init_writes_the_sha256_of_itself_without_the_fingerprint_entry(lab, name):
    import hashlib

    text = render_cloud_init(lab, name)
    user_data = yaml.safe_load(text)
    entry = write_file(user_data, "/etc/calicolab/user-data.sha256")
    fingerprint = entry["content"].strip()
    assert fingerprint == cloud_init_fingerprint(lab, name)
    # the same document with that entry (and its comment) taken out is what was hashed
    lines = text.splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if "/etc/calicolab/user-data.sha256" in line) - 1
    without = "".join(lines[:start] + lines[start + 4:])
    assert yaml.safe_load(without)["write_files"] == [f for f in user_data["write_files"] if f is not entry]
    assert hashlib.sha256(without.encode()).hexdigest() == fingerprint
    changed = dataclasses.replace(lab, tcp_mss=1200)
    assert cloud_init_fingerprint(changed, name) != fingerprint


@pytest.mark.parametrize("name", VM_NAMES)
def test_mss_clamp_runs_on_every_boot_and_checks_before_adding(lab, name):
    user_data = yaml.safe_load(render_cloud_init(lab, name))
    assert any("calicolab-mss-clamp 1300" in " ".join(command) for command in user_data["bootcmd"])
    script = write_file(user_data, "/usr/local/sbin/calicolab-mss-clamp")["content"]
    assert "-C $rule" in script and "--set-mss $MSS" in script


def test_packages_per_role(lab):
    packages = {name: yaml.safe_load(render_cloud_init(lab, name))["packages"] for name in VM_NAMES}
    for name in ("control", "node1", "node2"):
        assert "vsftpd" in packages[name] and "bird2" not in packages[name]
    assert "bird2" in packages["host1"] and "vsftpd" not in packages["host1"]


def test_network_helper_matches_the_nic_by_mac_and_merges_into_its_netplan_id(lab):
    script = write_file(yaml.safe_load(render_cloud_init(lab, "node1")), "/usr/local/sbin/calicolab-network")["content"]
    assert "macaddress" in script and "route" in script
    assert "0o600" in script, "netplan warns about world-readable files"
    compile(script, "calicolab-network", "exec")


def test_k3s_server_config(lab):
    config = yaml.safe_load(render_k3s_config(lab, "control"))
    assert config == {
        "node-name": "control",
        "node-ip": "198.19.0.1",
        "advertise-address": "198.19.0.1",
        "tls-san": ["198.19.0.1", "control"],
        "cluster-cidr": "198.19.16.0/20",
        "service-cidr": "198.19.32.0/20",
        "cluster-dns": "198.19.32.10",
        "flannel-backend": "none",
        "disable-network-policy": True,
        "write-kubeconfig-mode": "0600",
        "token-file": K3S_TOKEN_PATH,
    }


@pytest.mark.parametrize("name, ip", [("node1", "198.19.0.2"), ("node2", "198.19.0.3")])
def test_k3s_agent_config(lab, name, ip):
    config = yaml.safe_load(render_k3s_config(lab, name))
    assert config == {"server": "https://198.19.0.1:6443", "node-name": name, "node-ip": ip, "token-file": K3S_TOKEN_PATH}


def test_host1_is_not_a_k3s_node(lab):
    with pytest.raises(ValueError):
        render_k3s_config(lab, "host1")


def test_bird_peers_with_every_node_and_filters_like_the_course(lab):
    conf = render_bird_conf(lab)
    neighbours = re.findall(r"neighbor (\S+) as (\d+);", conf)
    assert neighbours == [("198.19.0.1", "64512"), ("198.19.0.2", "64512"), ("198.19.0.3", "64512")]
    assert conf.count("local 198.19.15.254 as 64512;") == 3
    assert "router id 198.19.15.254;" in conf
    assert "if net = 198.19.48.0/20 then accept;" in conf
    assert "if net ~ [ 198.19.32.0/20+ ] then accept;" in conf
    assert "if net ~ [ 198.19.24.0/21+ ] then accept;" in conf
    assert "198.19.16.0/21" not in conf, "the default pool must not be importable"
    assert conf.count("import filter bgp_allow;") == 3 and conf.count("export none;") == 3


def test_operator_manifest(lab):
    docs = documents(render_manifest(lab, "tigera-operator"))
    kinds = [(d["kind"], d["metadata"]["name"]) for d in docs]
    assert kinds == [
        ("Namespace", "tigera-operator"), ("ServiceAccount", "tigera-operator"),
        ("ClusterRole", "tigera-operator-secrets"), ("ClusterRole", "tigera-operator"),
        ("ClusterRoleBinding", "tigera-operator"), ("RoleBinding", "tigera-operator-secrets"),
        ("Deployment", "tigera-operator"),
    ]
    deployment = docs[-1]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "quay.io/tigera/operator:v1.42.3"
    assert container["args"] == ["-manage-crds=true"]
    assert deployment["spec"]["template"]["spec"]["hostNetwork"] is True
    rules = docs[3]["rules"]
    crd_update = {n for r in rules if r.get("resourceNames") and r["resources"] == ["customresourcedefinitions"] for n in r["resourceNames"]}
    assert {"installations.operator.tigera.io", "tigerastatuses.operator.tigera.io", "ippools.crd.projectcalico.org"} <= crd_update
    assert any(r["apiGroups"] == ["operator.tigera.io"] and "tigerastatuses/status" in r["resources"] for r in rules)


def test_installation_pool(lab):
    installation = by_kind(lab, "installation", "Installation", "default")
    network = installation["spec"]["calicoNetwork"]
    assert network["containerIPForwarding"] == "Enabled"
    assert network["ipPools"] == [{
        "name": "default-ipv4-ippool", "cidr": "198.19.16.0/21", "blockSize": 26,
        "encapsulation": "None", "natOutgoing": "Enabled", "nodeSelector": "all()",
    }]
    assert network["nodeAddressAutodetectionV4"] == {"cidrs": ["198.19.0.0/20"]}



def test_another_pool_cidr_is_another_pool_with_its_own_name(defaults):
    lab = load_lab(defaults | {"calico_pool_cidr": "198.19.16.0/22"})
    pool = by_kind(lab, "installation", "Installation", "default")["spec"]["calicoNetwork"]["ipPools"][0]
    assert (pool["name"], pool["cidr"]) == ("ipv4-ippool-198-19-16-0-22", "198.19.16.0/22")


def test_the_apiserver_manifest_is_rendered_only_when_enabled(defaults):
    assert "manifests/apiserver.yaml" not in render_all(load_lab(defaults))
    enabled = render_all(load_lab(defaults | {"calico_apiserver": "Enabled"}))
    assert documents(enabled["manifests/apiserver.yaml"]) == [
        {"apiVersion": "operator.tigera.io/v1", "kind": "APIServer", "metadata": {"name": "default"}, "spec": {}}]

def test_yaobank_placement_replicas_and_node_port(lab):
    def deployment(name):
        return by_kind(lab, "yaobank", "Deployment", name)

    assert deployment("database")["spec"]["template"]["spec"]["nodeSelector"] == {"kubernetes.io/hostname": "node2"}
    assert deployment("customer")["spec"]["template"]["spec"]["nodeSelector"] == {"kubernetes.io/hostname": "node1"}
    assert "nodeSelector" not in deployment("summary")["spec"]["template"]["spec"]
    assert deployment("summary")["spec"]["replicas"] == 2
    customer = by_kind(lab, "yaobank", "Service", "customer")
    assert customer["spec"]["type"] == "NodePort"
    assert customer["spec"]["ports"][0]["nodePort"] == 30180
    assert {d["kind"] for d in documents(render_manifest(lab, "yaobank"))} == {"Namespace", "Service", "ServiceAccount", "Deployment"}
    for name in ("customer", "summary", "database"):
        assert deployment(name)["spec"]["template"]["spec"]["containers"][0]["image"] == f"calico/yaobank-{name}:multiarch"


LAB_IPS = {"control": "198.19.0.11", "node1": "198.19.0.12", "node2": "198.19.0.13", "host1": "198.19.15.200"}


@pytest.mark.parametrize(
    "override, old, new, expected_files",
    [
        ({"lab_ips": LAB_IPS}, "198.19.0.1", "198.19.0.11",
         {"cloud-init/control.yaml", "cloud-init/node1.yaml", "cloud-init/node2.yaml", "cloud-init/host1.yaml",
          "k3s/control-config.yaml", "k3s/node1-config.yaml", "k3s/node2-config.yaml", "bird/bird.conf"}),
        ({"service_cidr": "198.19.64.0/20"}, "198.19.32.", "198.19.64.", {"k3s/control-config.yaml", "bird/bird.conf"}),
        ({"calico_pool_cidr": "198.19.16.0/22"}, "198.19.16.0/21", "198.19.16.0/22", {"manifests/installation.yaml"}),
        ({"calico_version": "v3.32.0", "calicoctl_version": "v3.32.1"}, "v1.42.3", "v1.42.0", {"manifests/tigera-operator.yaml"}),
        ({"calicoctl_version": "v3.32.0"}, "v3.32.1", "v3.32.0", {"host1/profile.sh"}),
        ({"yaobank_node_port": 31080}, "30180", "31080", {"manifests/yaobank.yaml"}),
        ({"tcp_mss": 1200}, "1300", "1200", {f"cloud-init/{n}.yaml" for n in VM_NAMES}),
        ({"bgp_as_number": 65001}, "64512", "65001", {"bird/bird.conf"}),
    ],
    ids=["lab-ips", "service-cidr", "pool", "calico-version", "calicoctl-version", "node-port", "mss", "as-number"],
)
def test_a_changed_setting_changes_every_place_it_appears(defaults, override, old, new, expected_files):
    before = render_all(load_lab(defaults))
    after = render_all(load_lab(defaults | override))
    changed = {path for path in before if before[path] != after[path]}
    assert changed == expected_files
    for path in expected_files:
        assert old in before[path], path
        assert new in after[path], path
        # a whole value: 198.19.0.1 must not match inside 198.19.0.12
        leftover = re.search(rf"(?<![0-9.]){re.escape(old)}(?![0-9])", after[path].replace(new, ""))
        assert not leftover, f"{old} is left in {path}"


def test_rendering_is_deterministic(lab, tmp_path):
    assert render_all(lab) == render_all(lab)
    for out in ("a", "b"):
        subprocess.run([sys.executable, "-m", "calicolab", "render", str(tmp_path / out)], check=True, capture_output=True)
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert files_a == files_b and len(files_a) == 12
    for relative in files_a:
        assert (tmp_path / "a" / relative).read_bytes() == (tmp_path / "b" / relative).read_bytes()


def test_render_command_honours_data_overrides(tmp_path):
    subprocess.run([sys.executable, "-m", "calicolab", "render", str(tmp_path), "--data", "calico_version=v3.31.7"],
                   check=True, capture_output=True)
    assert "quay.io/tigera/operator:v1.40.15" in (tmp_path / "manifests/tigera-operator.yaml").read_text()


SECRET_PATTERNS = [
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----", r"ssh_keys", r"ssh_authorized_keys", r"\bK10[0-9a-f]{20,}",
    r"^\s*token\s*:", r"client-key-data", r"password", r"[A-Za-z0-9+/]{60,}={0,2}",
]


def test_no_secret_in_any_rendered_file(lab):
    # each user-data carries its own sha256 fingerprint: a digest of public text, no secret
    fingerprints = {f"cloud-init/{name}.yaml": cloud_init_fingerprint(lab, name) for name in lab.vms}
    for path, text in render_all(lab).items():
        if path in fingerprints:
            assert text.count(fingerprints[path]) == 1
            text = text.replace(fingerprints[path], "")
        for pattern in SECRET_PATTERNS:
            assert not re.search(pattern, text, re.MULTILINE | re.IGNORECASE), f"{pattern} in {path}"


@pytest.mark.parametrize("value", ['x"\nmalicious: true', "a: b", "- item", "{flow: map}", "'quoted'", "#comment", "yes", "on", "01"])
def test_quoting_never_lets_a_value_change_the_yaml(value):
    assert yaml.safe_load(f"key: {quote(value)}\n") == {"key": value}


def test_a_hostile_value_never_reaches_a_template(lab):
    hostile = 'Enabled"\n    evil: "yes'
    with pytest.raises(LabConfigError, match="calico_pool_nat_outgoing"):
        dataclasses.replace(lab, calico_pool_nat_outgoing=hostile)


# --- installed like any package: the templates and settings come from the checkout ------------------


@pytest.mark.timeout(300)
def test_a_non_editable_install_renders_from_the_checkout(lab, tmp_path):
    checkout = lab.project_dir
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(checkout)],
                   check=True, capture_output=True, timeout=240)
    # -P: the checkout's own calicolab/ folder stays off sys.path, so the installed copy runs
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}
    where = subprocess.run([sys.executable, "-P", "-c", "import calicolab; print(calicolab.__file__)"],
                           cwd=checkout, env=env, capture_output=True, text=True, check=True)
    assert where.stdout.startswith(str(site))
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-P", "-m", "calicolab", "render", str(out)],
                            cwd=checkout, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert {str(path.relative_to(out)): path.read_text() for path in out.rglob("*") if path.is_file()} == render_all(lab)
    elsewhere = subprocess.run([sys.executable, "-P", "-m", "calicolab", "render", str(tmp_path / "none")],
                               cwd=tmp_path, env=env, capture_output=True, text=True)
    assert elsewhere.returncode == 2 and "run from the calicolab checkout" in elsewhere.stderr


@pytest.mark.parametrize("value, kind", [
    ("198.19.0.1", "address"), ("198.19.32.0/20", "prefix"), (64512, "number"), ("node1", "symbol"),
])
def test_bird_writes_a_value_of_its_kind_as_is(value, kind):
    assert bird(value, kind) == str(value)


@pytest.mark.parametrize("value, kind", [
    ("198.19.0.1; import all", "address"), ("198.19.32.0/20 ] then accept; [ 0.0.0.0/0", "prefix"),
    ("198.19.32.1/20", "prefix"), ("64512;", "number"), (True, "number"), (2**32, "number"),
    ("node 1", "symbol"), ("node1 {}", "symbol"), ("1node", "symbol"), ("198.19.0.1", "port"),
])
def test_bird_refuses_what_would_change_the_configuration(value, kind):
    with pytest.raises(ValueError, match="not a BIRD"):
        bird(value, kind)
