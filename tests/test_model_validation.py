"""Every validation rule: one clear message naming the field, before anything is rendered."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from calicolab.model import SETTINGS, Lab, LabConfigError, load_defaults, load_lab

PROJECT = Path(__file__).resolve().parent.parent

LAB_IPS = {"control": "198.19.0.1", "node1": "198.19.0.2", "node2": "198.19.0.3", "host1": "198.19.15.254"}
MGMT_IPS = {"control": "10.255.255.1", "node1": "10.255.255.2", "node2": "10.255.255.3", "host1": "10.255.255.254"}

# (override, field named in the message, a word of the fix)
CASES = {
    "lab-ip-not-an-address": ({"lab_ips": LAB_IPS | {"node1": "198.19.0.300"}}, "lab_ips.node1", "IPv4"),
    "lab-ip-duplicate": ({"lab_ips": LAB_IPS | {"node2": "198.19.0.2"}}, "lab_ips.node2", "already used by node1"),
    "mgmt-ip-duplicate": ({"mgmt_ips": MGMT_IPS | {"host1": "10.255.255.1"}}, "mgmt_ips.host1", "already used"),
    "lab-ips-not-in-one-network": ({"lab_ips": LAB_IPS | {"host1": "198.19.16.254"}}, "lab_ips.host1", "outside 198.19.0.0/20"),
    "lab-ip-is-broadcast": ({"lab_ips": LAB_IPS | {"host1": "198.19.15.255"}}, "lab_ips.host1", "broadcast"),
    "mgmt-ips-not-in-one-network": ({"mgmt_ips": MGMT_IPS | {"node1": "10.255.254.2"}}, "mgmt_ips.node1", "outside"),
    "missing-vm": ({"lab_ips": {k: v for k, v in LAB_IPS.items() if k != "host1"}}, "lab_ips", "no value for host1"),
    "unknown-vm": ({"vm_cpus": {"control": 2, "node1": 1, "node2": 1, "host1": 1, "node3": 1}}, "vm_cpus", "unknown VM"),
    "pool-outside-cluster": ({"calico_pool_cidr": "10.0.0.0/21"}, "calico_pool_cidr", "not inside cluster_cidr"),
    "cidr-host-bits": ({"cluster_cidr": "198.19.16.1/20"}, "cluster_cidr", "CIDR"),
    "service-overlaps-cluster": ({"service_cidr": "198.19.16.0/20"}, "service_cidr", "overlaps the cluster_cidr"),
    "cluster-overlaps-lab": ({"cluster_cidr": "198.19.0.0/16", "calico_pool_cidr": "198.19.64.0/21", "external_pool_cidr": "198.19.72.0/21"}, "cluster_cidr", "overlaps the lab network"),
    "external-pool-overlaps-pool": ({"external_pool_cidr": "198.19.16.0/21"}, "external_pool_cidr", "overlaps calico_pool_cidr"),
    "block-larger-than-pool": ({"calico_pool_block_size": 20}, "calico_pool_block_size", "larger than the pool"),
    "encapsulation-enum": ({"calico_pool_encapsulation": "vxlan"}, "calico_pool_encapsulation", "VXLANCrossSubnet"),
    "nat-outgoing-enum": ({"calico_pool_nat_outgoing": True}, "calico_pool_nat_outgoing", "Enabled, Disabled"),
    "apiserver-enum": ({"calico_apiserver": "yes"}, "calico_apiserver", "Enabled, Disabled"),
    "ip-forwarding-enum": ({"calico_container_ip_forwarding": "yes"}, "calico_container_ip_forwarding", "Enabled"),
    "k3s-version": ({"k3s_version": "1.35.4"}, "k3s_version", "v1.35.4+k3s1"),
    "calico-version": ({"calico_version": "3.32.1"}, "calico_version", "v3.32.1"),
    "kubectl-version": ({"kubectl_version": "latest"}, "kubectl_version", "v1.35.4"),
    "calico-k8s-compat": ({"k3s_version": "v1.30.2+k3s1"}, "k3s_version", "supports 1.34 to 1.36"),
    "unknown-operator": ({"calico_version": "v3.31.3"}, "tigera_operator_image", "set tigera_operator_image"),
    "operator-image": ({"tigera_operator_image": "operator latest"}, "tigera_operator_image", "image reference"),
    "cpus": ({"vm_cpus": {"control": 0, "node1": 1, "node2": 1, "host1": 1}}, "vm_cpus.control", "1 to 64"),
    "memory-format": ({"vm_memory": {"control": "2 gigs", "node1": "1G", "node2": "1G", "host1": "1G"}}, "vm_memory.control", "2048M"),
    "memory-too-small": ({"vm_memory": {"control": "256M", "node1": "1G", "node2": "1G", "host1": "1G"}}, "vm_memory.control", "at least 512M"),
    "disk-too-small": ({"vm_disk": {"control": "10G", "node1": "100M", "node2": "8G", "host1": "5G"}}, "vm_disk.node1", "at least 1G"),
    "node-port-range": ({"yaobank_node_port": 8080}, "yaobank_node_port", "30000 to 32767"),
    "replicas": ({"yaobank_summary_replicas": "two"}, "yaobank_summary_replicas", "whole number"),
    "timeout": ({"timeout_rollout": -5}, "timeout_rollout", "whole number"),
    "image-alias": ({"ubuntu_image": "Ubuntu 24.04"}, "ubuntu_image", "24.04"),
    "url": ({"k3s_install_url": "ftp://get.k3s.io"}, "k3s_install_url", "https:// URL"),
    "yaobank-images": ({"yaobank_images": {"customer": "x"}}, "yaobank_images", "customer, summary and database"),
    "namespace-name": ({"yaobank_namespace": "YaoBank"}, "yaobank_namespace", "namespace name"),
    "typo-in-key": ({"calico_verison": "v3.31.7"}, "calico_verison", "did you mean 'calico_version'"),
    "mss": ({"tcp_mss": 9000}, "tcp_mss", "536 to 1460"),
    "as-number": ({"bgp_as_number": 0}, "bgp_as_number", "1 to"),
    # --- the first run on a student's laptop: every one of these used to be accepted or ignored
    "unknown-key-camel-case": ({"natOutgoing": "Disabled"}, "natOutgoing", "did you mean 'calico_pool_nat_outgoing'"),
    "unknown-key-short": ({"blocksize": 24}, "blocksize", "did you mean 'calico_pool_block_size'"),
    "unknown-key-unrelated": ({"colour": "blue"}, "colour", "listed in group_data/all.py"),
    "unknown-key-host-data": ({"lab_ip": "198.19.0.9"}, "lab_ip", "unknown setting"),
    "http-download": ({"kubectl_url": "http://dl.k8s.io/release/{version}/bin/linux/{arch}/kubectl"}, "kubectl_url", "https://"),
    "http-checksum": ({"calicoctl_sha256_url": "http://github.com/x/{version}/SHA256SUMS"}, "calicoctl_sha256_url", "https://"),
    "http-installer": ({"k3s_install_url": "http://get.k3s.io"}, "k3s_install_url", "https://"),
    "url-unknown-placeholder": ({"kubectl_url": "https://dl.k8s.io/release/{ver}/bin/linux/{arch}/kubectl"}, "kubectl_url", "unknown placeholder {ver}"),
    "url-placeholder-os": ({"calicoctl_url": "https://github.com/x/{version}/calicoctl-{os}-{arch}"}, "calicoctl_url", "{version} and {arch}"),
    "url-unbalanced-brace": ({"kubectl_sha256_url": "https://dl.k8s.io/{version/kubectl.sha256"}, "kubectl_sha256_url", "unbalanced"),
    "url-no-host": ({"k3s_install_url": "https:///install.sh"}, "k3s_install_url", "https://"),
    "url-with-space": ({"k3s_install_url": "https://get.k3s.io/ x"}, "k3s_install_url", "without spaces"),
    "url-trailing-newline": ({"k3s_install_url": "https://get.k3s.io\n"}, "k3s_install_url", "without spaces"),
    "operator-image-capitals": ({"tigera_operator_image": "quay.io/Tigera/operator:v1.42.3"}, "tigera_operator_image", "image reference"),
    "operator-image-newline": ({"tigera_operator_image": "quay.io/tigera/operator:v1.42.3\n"}, "tigera_operator_image", "image reference"),
    "operator-image-no-tag": ({"tigera_operator_image": "quay.io/tigera/operator"}, "tigera_operator_image", "with a tag"),
    "operator-image-empty-tag": ({"tigera_operator_image": "quay.io/tigera/operator:"}, "tigera_operator_image", "image reference"),
    "yaobank-image-capitals": ({"yaobank_images": {"customer": "Calico/yaobank-customer:multiarch", "summary": "calico/yaobank-summary:multiarch", "database": "calico/yaobank-database:multiarch"}}, "yaobank_images.customer", "image reference"),
    "yaobank-image-newline": ({"yaobank_images": {"customer": "calico/yaobank-customer:multiarch", "summary": "calico/yaobank-summary:multiarch\n", "database": "calico/yaobank-database:multiarch"}}, "yaobank_images.summary", "image reference"),
    "yaobank-image-space": ({"yaobank_images": {"customer": "calico/yaobank-customer:multiarch", "summary": "calico/yaobank-summary:multiarch", "database": "calico/yaobank database"}}, "yaobank_images.database", "image reference"),
    "yaobank-image-double-slash": ({"yaobank_images": {"customer": "calico//customer", "summary": "calico/yaobank-summary:multiarch", "database": "calico/yaobank-database:multiarch"}}, "yaobank_images.customer", "image reference"),
    "ubuntu-image-newline": ({"ubuntu_image": "24.04\n"}, "ubuntu_image", "24.04"),
    "ubuntu-image-capitals": ({"ubuntu_image": "Noble"}, "ubuntu_image", "noble"),
    "ubuntu-image-month": ({"ubuntu_image": "24.05"}, "ubuntu_image", "24.04"),
    "memory-too-large": ({"vm_memory": {"control": "2048G", "node1": "1G", "node2": "1G", "host1": "1G"}}, "vm_memory.control", "at most 256G"),
    "memory-two-dots": ({"vm_memory": {"control": "1.5.5G", "node1": "1G", "node2": "1G", "host1": "1G"}}, "vm_memory.control", "not a size"),
    "memory-negative": ({"vm_memory": {"control": "-2G", "node1": "1G", "node2": "1G", "host1": "1G"}}, "vm_memory.control", "not a size"),
    "memory-terabytes": ({"vm_memory": {"control": "2T", "node1": "1G", "node2": "1G", "host1": "1G"}}, "vm_memory.control", "not a size"),
    "disk-too-large": ({"vm_disk": {"control": "10G", "node1": "8G", "node2": "8G", "host1": "99999G"}}, "vm_disk.host1", "at most 4096G"),
    "disk-zero": ({"vm_disk": {"control": "0G", "node1": "8G", "node2": "8G", "host1": "5G"}}, "vm_disk.control", "at least 1G"),
    "cpus-too-many": ({"vm_cpus": {"control": 65, "node1": 1, "node2": 1, "host1": 1}}, "vm_cpus.control", "1 to 64"),
    "cpus-fraction": ({"vm_cpus": {"control": "1.5", "node1": 1, "node2": 1, "host1": 1}}, "vm_cpus.control", "whole number"),
    "kubectl-skew-old": ({"kubectl_version": "v1.33.0"}, "kubectl_version", "more than one minor away"),
    "kubectl-skew-new": ({"kubectl_version": "v1.37.1"}, "kubectl_version", "v1.34 to v1.36"),
    "kubectl-skew-major": ({"kubectl_version": "v2.35.0"}, "kubectl_version", "one minor"),
    "calicoctl-skew": ({"calicoctl_version": "v3.31.7"}, "calicoctl_version", "same minor, e.g. v3.32.1"),
    "calicoctl-follows-pinned-calico": ({"calico_version": "v3.31.7", "calicoctl_version": "v3.32.1"}, "calicoctl_version", "e.g. v3.31.7"),
    "state-dir-root": ({"state_dir": "/"}, "state_dir", "is /"),
    "state-dir-home": ({"state_dir": "~"}, "state_dir", "your home folder"),
    "state-dir-dot": ({"state_dir": "."}, "state_dir", "is the calicolab checkout"),
    "state-dir-dot-dot": ({"state_dir": ".."}, "state_dir", "contains the calicolab checkout"),
    "state-dir-checkout": ({"state_dir": str(PROJECT)}, "state_dir", "the calicolab checkout"),
    "state-dir-above-checkout": ({"state_dir": str(PROJECT.parent)}, "state_dir", "contains the calicolab checkout"),
    "state-dir-too-long": ({"state_dir": "/tmp/" + "d" * 300}, "state_dir", "too long"),
    "state-dir-deep": ({"state_dir": "/tmp/" + "/".join(["folder"] * 150)}, "state_dir", "too long"),
    "state-dir-quote": ({"state_dir": "my 'lab'"}, "state_dir", "without spaces or quotes"),
    "bool-for-a-port": ({"yaobank_node_port": True}, "yaobank_node_port", "whole number"),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_each_rule_names_the_field_and_the_fix(defaults, case, monkeypatch):
    monkeypatch.chdir(PROJECT)  # relative state_dir values are taken from where pyinfra runs
    override, field, fix = CASES[case]
    with pytest.raises(LabConfigError) as raised:
        load_lab(defaults | override)
    messages = [p for p in raised.value.problems if p.startswith(f"{field}:")]
    assert messages, raised.value.problems
    assert any(fix in message for message in messages), messages


def test_all_problems_are_reported_in_one_error(defaults):
    broken = defaults | {
        "calico_pool_encapsulation": "GRE",
        "yaobank_node_port": 1,
        "lab_ips": LAB_IPS | {"host1": "nope"},
    }
    with pytest.raises(LabConfigError) as raised:
        load_lab(broken)
    fields = {problem.split(":")[0] for problem in raised.value.problems}
    assert {"calico_pool_encapsulation", "yaobank_node_port", "lab_ips.host1"} <= fields
    assert "3 problem(s)" in str(raised.value)


def test_defaults_are_valid_and_typed(lab):
    assert lab.vms["control"].lab_ip == "198.19.0.1"
    assert lab.vms["host1"].mgmt_ip == "10.255.255.254"
    assert [vm.name for vm in lab.agents] == ["node1", "node2"]
    assert str(lab.lab_network) == "198.19.0.0/20"
    assert lab.tigera_operator_image == "quay.io/tigera/operator:v1.42.3"
    assert lab.vms["control"].memory == "2G" and lab.vms["control"].cpus == 2


def test_operator_image_follows_calico_version(defaults):
    assert load_lab(defaults | {"calico_version": "v3.31.7"}).tigera_operator_image.endswith(":v1.40.15")
    pinned = load_lab(defaults | {"calico_version": "v3.31.3", "tigera_operator_image": "mirror.example/tigera/operator:v1.40.9"})
    assert pinned.tigera_operator_image == "mirror.example/tigera/operator:v1.40.9"


def test_render_command_exits_non_zero_with_the_validation_error(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "calicolab", "render", str(tmp_path / "out"),
         "--data", "calico_pool_encapsulation=Geneve", "--data", "yaobank_node_port=80"],
        capture_output=True, text=True,
    )
    assert result.returncode == 2
    assert "calico_pool_encapsulation: 'Geneve' is not valid" in result.stderr
    assert "yaobank_node_port" in result.stderr
    assert not (tmp_path / "out").exists(), "nothing may be written on bad data"


def test_render_command_rejects_data_without_equals(tmp_path):
    result = subprocess.run([sys.executable, "-m", "calicolab", "render", str(tmp_path), "--data", "calico_version"],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "expected key=value" in result.stderr


@pytest.mark.parametrize("typed, expected", [(24.04, "24.04"), (22.04, "22.04"), (22.10, "22.10"), ("noble", "noble")])
def test_ubuntu_image_survives_pyinfra_turning_it_into_a_number(defaults, typed, expected):
    # `--data ubuntu_image=22.10` reaches the deploy as the float 22.1 (pyinfra parses values as JSON)
    assert load_lab(defaults | {"ubuntu_image": typed}).ubuntu_image == expected


def test_tool_versions_follow_the_cluster_unless_pinned(defaults):
    lab = load_lab(defaults | {"k3s_version": "v1.34.2+k3s1", "calico_version": "v3.31.7"})
    assert (lab.kubectl_version, lab.calicoctl_version) == ("v1.34.2", "v3.31.7")
    pinned = load_lab(defaults | {"kubectl_version": "v1.36.0", "calicoctl_version": "v3.32.0"})
    assert (pinned.kubectl_version, pinned.calicoctl_version) == ("v1.36.0", "v3.32.0")


def test_a_state_dir_of_someone_elses_files_is_refused(defaults, tmp_path):
    (tmp_path / "thesis.tex").write_text("chapter 1")
    with pytest.raises(LabConfigError) as raised:
        load_lab(defaults | {"state_dir": str(tmp_path)})
    assert any(p.startswith("state_dir:") and "not made by calicolab" in p for p in raised.value.problems)
    (tmp_path / "thesis.tex").unlink()
    (tmp_path / "a-file").write_text("")
    with pytest.raises(LabConfigError, match="is not a folder"):
        load_lab(defaults | {"state_dir": str(tmp_path / "a-file")})


# --- the Lab: typed fields, validated when made, immutable ---------------------------------


def test_every_setting_of_group_data_is_a_typed_field(defaults, lab):
    assert set(SETTINGS) == set(defaults)
    assert lab.k3s_api_port == 6443 and isinstance(lab.k3s_api_port, int)
    assert str(lab.cluster_cidr) == "198.19.16.0/20" and lab.cluster_cidr.prefixlen == 20
    with pytest.raises(AttributeError):
        lab.no_such_setting  # noqa: B018 (no fallback: a typo is an error)


def test_a_lab_cannot_be_changed(lab):
    with pytest.raises(dataclasses.FrozenInstanceError):
        lab.timeout_rollout = 1
    with pytest.raises(TypeError):
        lab.lab_ips["control"] = "198.19.0.9"
    with pytest.raises(TypeError):
        lab.yaobank_images["customer"] = "busybox"
    with pytest.raises(TypeError):
        lab.vms["control"] = lab.vms["node1"]
    lab.settings["timeout_rollout"] = 1  # a copy
    assert lab.timeout_rollout == 600


def test_replace_validates_the_new_lab(lab, defaults):
    changed = dataclasses.replace(lab, tcp_mss=1200, lab_ips=dict(lab.lab_ips, host1="198.19.15.200"))
    assert changed == load_lab(defaults | {"tcp_mss": 1200, "lab_ips": dict(lab.lab_ips, host1="198.19.15.200")}, PROJECT)
    assert changed.client.lab_ip == "198.19.15.200"  # derived again
    with pytest.raises(LabConfigError) as raised:
        dataclasses.replace(lab, tcp_mss=9000, calico_pool_encapsulation="GRE")
    assert {p.split(":")[0] for p in raised.value.problems} == {"tcp_mss", "calico_pool_encapsulation"}
    with pytest.raises(ValueError):
        dataclasses.replace(lab, vms={})  # derived from lab_ips/mgmt_ips, not given


def test_a_lab_made_by_hand_is_validated(lab):
    given = {name: getattr(lab, name) for name in SETTINGS}
    with pytest.raises(LabConfigError, match="calico_pool_nat_outgoing"):
        Lab(**given | {"calico_pool_nat_outgoing": "Enabled\nipipMode: Always"}, project_dir=PROJECT)
    with pytest.raises(TypeError):
        Lab(tcp_mss=1300)  # every setting is needed


def test_settings_are_read_from_the_project_folder(defaults, tmp_path):
    with pytest.raises(LabConfigError, match="group_data/all.py: not found"):
        load_defaults(tmp_path)
    with pytest.raises(LabConfigError) as raised:
        load_lab(defaults, tmp_path)
    assert any(p.startswith("project_dir:") and "run from the calicolab checkout" in p for p in raised.value.problems)
    assert load_lab(defaults, PROJECT).templates_dir == PROJECT / "templates"
