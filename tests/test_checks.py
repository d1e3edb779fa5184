"""The report card's decisions (calicolab.checks) and the diagnostics bundle's safety (calicolab.diagnose),
from recorded observations: no lab needed."""

from __future__ import annotations

import base64
import json
import os
import secrets
import stat
from dataclasses import replace

import pytest

from calicolab import checks
from calicolab.diagnose import Bundle, collect_bundle, scrub
from calicolab.model import load_defaults, load_lab


@pytest.fixture
def lab(tmp_path):
    return load_lab(dict(load_defaults(), state_dir=str(tmp_path / "state")))


def sections_of(lab, name, **outputs):
    """Run the real probe script's structure through the parser with canned outputs."""
    text = "".join(f"### calicolab:{key}\n{value}\n" for key, value in outputs.items())
    return checks.split_sections(text)


def test_probe_sections_round_trip_and_a_failing_command_does_not_stop_the_script(tmp_path):
    import subprocess

    script = checks.sectioned_script({"one": "echo first", "broken": "false; echo after >&2", "two": "echo second"})
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True)
    assert out.returncode == 0
    assert checks.split_sections(out.stdout) == {"one": "first", "broken": "after", "two": "second"}


def test_address_row_names_the_missing_lab_address(lab):
    row = checks.address_row(lab, "node2", "2: eth0    inet 203.0.113.11/24 brd x\n2: eth0    inet 10.255.255.3/24 brd y")
    assert not row.ok
    assert row.observed == "203.0.113.11/24, 10.255.255.3/24 (missing 198.19.0.3/20)"
    assert row.hint == "multipass exec node2 -- sudo netplan apply"
    ok = checks.address_row(lab, "node2", "inet 198.19.0.3/20\ninet 10.255.255.3/24")
    assert ok.ok


def test_the_cards_hints_use_the_configured_multipass_client(tmp_path):
    # WSL runs the Windows client (multipass_bin=multipass.exe): a hint must paste as printed
    lab = load_lab(dict(load_defaults(), state_dir=str(tmp_path / "state"), multipass_bin="/snap/bin/multipass"))
    assert checks.address_row(lab, "node2", "").hint == "/snap/bin/multipass exec node2 -- sudo netplan apply"
    assert checks.tigerastatus_row(lab, []).hint.startswith("/snap/bin/multipass exec host1 -- bash -lc ")
    stopped = checks.vm_state_rows(lab, {name: {"state": "Stopped", "ipv4": []} for name in lab.vms})
    assert {row.hint for row in stopped if not row.ok} == {f"/snap/bin/multipass start {name}" for name in lab.vms}
    assert {row.hint for row in checks.not_checked_rows(lab, "host1", "not checked")} == {
        "/snap/bin/multipass start host1"}


def test_names_row_reads_getent_accepting_extra_loopback_answers_but_not_a_wrong_address(lab, tmp_path):
    # The section's own command with the real getent (glibc), given a hosts file in a mount namespace of
    # its own; name service from files only, so nothing is asked of a DNS server.
    import subprocess

    command = checks.probe_sections(lab, "control")["names"]
    (tmp_path / "nsswitch.conf").write_text("hosts: files\n")

    def names_section(hosts: str) -> str:
        (tmp_path / "hosts").write_text(hosts)
        script = (f"mount --bind {tmp_path / 'hosts'} /etc/hosts && "
                  f"mount --bind {tmp_path / 'nsswitch.conf'} /etc/nsswitch.conf && {command}")
        return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                              capture_output=True, text=True, timeout=30).stdout

    good = names_section("127.0.1.1 control\n198.19.0.1 control\n198.19.0.2 node1\n198.19.0.3 node2\n"
                         "198.19.15.254 host1\n")
    assert checks.names_row(lab, "control", good).ok, good
    bad_text = names_section("10.0.0.9 control\n198.19.0.2 node1\n198.19.0.3 node2\n")
    bad = checks.names_row(lab, "node1", bad_text)
    assert not bad.ok and bad.observed == "control=10.0.0.9, host1=nothing (wrong)", bad_text


def test_service_mss_and_ftp_rows(lab):
    rows = {r.check: r for r in checks.vm_rows(lab, "node1", sections_of(
        lab, "node1", addresses="inet 198.19.0.2/20 inet 10.255.255.2/24", names="", mss="absent",
        k3s="inactive", ftp="no answer on port 21"))}
    assert not rows["node1: TCP MSS clamp 1300"].ok
    assert rows["node1: TCP MSS clamp 1300"].hint == "multipass exec node1 -- sudo /usr/local/sbin/calicolab-mss-clamp 1300"
    assert (rows["node1: k3s-agent active"].ok, rows["node1: k3s-agent active"].observed) == (False, "inactive")
    assert not rows["node1: vsftpd answers on port 21"].ok
    assert checks.ftp_row(lab, "node1", "220 (vsFTPd 3.0.5)").ok


def test_bird_row_needs_the_service_and_the_three_neighbors_and_shows_sessions(lab):
    conf = "  neighbor 198.19.0.1 as 64512;\n  neighbor 198.19.0.2 as 64512;\n  neighbor 198.19.0.3 as 64512;"
    birdc = "BIRD 2.14 ready.\nName Proto Table State Since Info\ncontrol BGP --- up 10:00 Established\nnode1 BGP --- start 10:00 Active"
    row = checks.bird_row(lab, {"bird": "active", "bird_conf": conf, "birdc": birdc})
    assert row.ok and "sessions: control Established, node1 Active" in row.observed
    missing = checks.bird_row(lab, {"bird": "active", "bird_conf": conf.splitlines()[0]})
    assert not missing.ok and "(missing 198.19.0.2, 198.19.0.3)" in missing.observed
    assert not checks.bird_row(lab, {"bird": "inactive", "bird_conf": conf}).ok


def node(name, ready="True", ip="198.19.0.1", reason="", message=""):
    return {"metadata": {"name": name}, "status": {
        "conditions": [{"type": "Ready", "status": ready, "reason": reason, "message": message}],
        "addresses": [{"type": "InternalIP", "address": ip}]}}


def test_node_rows_need_ready_and_the_lab_address_as_internal_ip(lab):
    rows = checks.node_rows(lab, [node("control"), node("node1", ip="203.0.113.12"),
                                  node("node2", "Unknown", "198.19.0.3", "NodeStatusUnknown", "Kubelet stopped posting node status.")])
    assert [r.ok for r in rows] == [True, False, False]
    assert rows[1].observed == "Ready=True; InternalIP 203.0.113.12"
    assert rows[2].observed.startswith("Ready=Unknown: NodeStatusUnknown, Kubelet stopped")
    assert not checks.node_rows(lab, [])[0].ok


def ts(name, available="True", degraded="False", message=""):
    return {"metadata": {"name": name}, "status": {"conditions": [
        {"type": "Available", "status": available}, {"type": "Degraded", "status": degraded, "message": message}]}}


def test_tigerastatus_row_fails_on_any_degraded_or_unavailable_or_none(lab):
    assert checks.tigerastatus_row(lab, [ts("calico"), ts("apiserver")]).ok
    row = checks.tigerastatus_row(lab, [ts("calico"), ts("ippools", "True", "True", "Unable to modify IP pools")])
    assert not row.ok and "ippools Degraded: Unable to modify IP pools" in row.observed
    assert not checks.tigerastatus_row(lab, [ts("calico", "False")]).ok
    assert not checks.tigerastatus_row(lab, []).ok


def test_ippool_row_compares_every_pool_setting(lab):
    pool = {"spec": {"cidr": "198.19.16.0/21", "blockSize": 26, "natOutgoing": True, "ipipMode": "Never", "vxlanMode": "Never"}}
    assert checks.ippool_row(lab, [pool]).ok
    nat_off = {"spec": dict(pool["spec"], natOutgoing=False, vxlanMode="Always")}
    row = checks.ippool_row(lab, [nat_off])
    assert not row.ok
    assert row.observed == "natOutgoing Disabled (want Enabled); encapsulation VXLAN (want None)"
    other = checks.ippool_row(lab, [{"spec": dict(pool["spec"], cidr="10.0.0.0/16")}])
    assert not other.ok and other.observed == "pools: 10.0.0.0/16"
    assert checks.ippool_row(replace(lab), [], error="no IPPool kind").observed == "cannot read IPPools: no IPPool kind"


def deployment(replicas, available, generation=1):
    return {"metadata": {"name": "customer", "generation": generation}, "spec": {"replicas": replicas},
            "status": {"observedGeneration": generation, "replicas": replicas, "updatedReplicas": replicas,
                       "availableReplicas": available}}


def test_yaobank_row_catches_a_deployment_scaled_to_zero_that_kubectl_calls_rolled_out(lab):
    rows = checks.yaobank_rows(lab, {"customer": deployment(0, 0)}, {"customer": 1})
    customer = rows[0]
    assert not customer.ok and customer.observed.startswith("0/0 available")
    assert customer.hint == ("multipass exec host1 -- bash -lc "
                             "'kubectl -n yaobank scale deployment customer --replicas=1'")
    assert checks.yaobank_rows(lab, {"customer": deployment(1, 1)}, {"customer": 1})[0].ok
    assert not rows[1].ok and rows[1].observed == "deployment not found"


def test_expected_replicas_come_from_the_rendered_manifest(lab):
    from calicolab.render import render_manifest

    assert checks.expected_replicas(render_manifest(lab, "yaobank")) == {"customer": 1, "summary": 2, "database": 1}


def test_client_rows_need_versions_of_the_settings_and_working_commands(lab):
    sections = {"kubectl_version": json.dumps({"clientVersion": {"gitVersion": "v1.35.4"}}),
                "kubectl_nodes": "node/control\nnode/node1\nnode/node2",
                "calicoctl_version": "Client Version:    v3.32.1\nCluster Version: v3.32.1",
                "calicoctl_pools": "NAME CIDR SELECTOR\ndefault-ipv4-ippool 198.19.16.0/21 all()"}
    assert [r.ok for r in checks.client_rows(lab, sections)] == [True, True]
    old = dict(sections, kubectl_version=json.dumps({"clientVersion": {"gitVersion": "v1.30.0"}}),
               calicoctl_pools="Failed to get resources: etcdv3")
    rows = checks.client_rows(lab, old)
    assert [r.ok for r in rows] == [False, False]
    assert "kubectl v1.30.0 (want v1.35.4)" in rows[0].observed
    assert rows[1].observed.endswith("pools: Failed to get resources: etcdv3")


def test_table_is_plain_text_in_course_order_with_hints_only_on_failures(lab):
    rows = [checks.Row((50, 9, 0), "host1: BIRD", False, "bird inactive", "multipass exec host1 -- sudo systemctl restart bird"),
            checks.Row((10, 0, 0), "control: VM Running", True, "Running", "multipass start control")]
    report = checks.Report()
    report.add(rows)
    table = checks.render_table(report.sorted_rows())
    lines = table.splitlines()
    assert lines[2].startswith("PASS    control: VM Running")
    assert lines[3].startswith("FAIL    host1: BIRD") and lines[4].strip() == "try: multipass exec host1 -- sudo systemctl restart bird"
    assert "multipass start control" not in table
    assert "\x1b" not in table
    assert lines[-1] == "1 of 2 checks passed; 1 failed"


def pem(kind="RSA PRIVATE KEY"):
    body = base64.b64encode(secrets.token_bytes(300)).decode()
    return f"-----BEGIN {kind}-----\n" + "\n".join(body[i:i + 64] for i in range(0, len(body), 64)) + f"\n-----END {kind}-----", body


def test_scrub_masks_keys_certificates_tokens_and_known_secrets():
    key, key_body = pem()
    cert, cert_body = pem("CERTIFICATE")
    token = secrets.token_hex(24)
    k10 = "K10" + "ab" * 32 + "::server:" + secrets.token_hex(16)
    data = base64.b64encode(secrets.token_bytes(200)).decode()
    text = (f"{key}\n{cert}\nclient-key-data: {data}\n    token: {token}\njoin with {k10}\n"
            f'"client-certificate-data": "{data}"\nK3S_TOKEN={token}\nplain words stay\n')
    masked = scrub(text, [token])
    for secret in (key_body[:64], cert_body[:64], data, token, k10, k10.split("::")[1]):
        assert secret not in masked
    assert "plain words stay" in masked and "-----BEGIN RSA PRIVATE KEY----- *** -----END RSA PRIVATE KEY-----" in masked


def test_a_bundle_is_private_and_scrubbed(lab):
    token = secrets.token_hex(24)
    bundle = Bundle.create(lab, [token])
    path = bundle.write("vms/control/log.txt", f"line with {token}")
    assert path.read_text() == "line with ***\n"
    assert stat.S_IMODE(os.stat(bundle.root).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_collection_never_fails_as_a_whole_without_multipass(lab, tmp_path):
    broken = replace(lab, multipass_bin=str(tmp_path / "no-such-multipass"))
    report = checks.Report()
    report.add([checks.Row((10, 0, 0), "control: VM Running", False, "multipass list failed", "multipass version")])
    root = collect_bundle(broken, report, ["ERROR something failed on control"], reason="test")
    files = {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}
    assert {"summary.txt", "report.txt", "settings.json", "rendered/cloud-init/control.yaml",
            "multipass/list.json", "vms/control/NOT-COLLECTED.txt", "cluster/NOT-COLLECTED.txt"} <= files
    summary = (root / "summary.txt").read_text()
    assert summary.index("FAIL control: VM Running") < summary.index("Where to look:") < summary.index("Not collected:")
    assert "VM Running: multipass/list.json" in summary


def test_teardown_removes_the_bundles_with_the_state_folder(lab):
    from calicolab.state import LabState

    bundle = Bundle.create(lab, [])
    bundle.write("summary.txt", "a summary")
    assert LabState(lab.state_path).remove() == []
    assert not lab.state_path.exists()


def test_the_probe_run_with_the_deploy_s_read_is_cut_short_with_everything_it_started(lab, monkeypatch):
    """In a half-built lab the probe's kubectl/calicoctl could each wait 20 s; run with the deploy's
    first read of a VM, the whole probe (its children too, which hold the output open) ends at the
    bound, with what it printed so far."""
    import subprocess
    from types import SimpleNamespace

    from tasks import verify

    monkeypatch.setattr(verify, "host", SimpleNamespace(name="host1"))
    monkeypatch.setattr(verify, "PROBE_WITH_READ_SECONDS", 1)
    monkeypatch.setattr(checks, "vm_probe", lambda lab, name, without=(): "echo first; (sleep 60; echo late) & sleep 60; echo never")
    command = verify.vm_probe(lab)
    result = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=30)
    assert result.returncode == 124 and result.stdout == "first\n"
    monkeypatch.setattr(verify, "host", SimpleNamespace(name="@local"))
    assert verify.vm_probe(lab) is None


def test_a_meanwhile_section_runs_alongside_the_others_and_its_output_comes_last(tmp_path):
    """host1's checks as ubuntu (waiting on the API) run alongside the root sections: the first section
    sees the file the meanwhile command makes, which it could not if they ran one after the other."""
    import subprocess

    flag = tmp_path / "started"
    script = checks.sectioned_script(
        {"first": f"for i in $(seq 100); do [ -f {flag} ] && break; sleep 0.1; done; [ -f {flag} ] && echo saw it",
         "second": "echo two"},
        meanwhile=("alongside", f"touch {flag}; echo M; echo err >&2"),
    )
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    result = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "TMPDIR": str(scratch)})
    assert result.returncode == 0
    assert checks.split_sections(result.stdout) == {"first": "saw it", "second": "two", "alongside": "M\nerr"}
    assert result.stdout.rstrip().endswith("### calicolab:alongside\nM\nerr")
    assert list(scratch.iterdir()) == [], "the meanwhile command's output file is removed"


def test_a_probe_run_with_the_deploy_s_read_leaves_the_units_to_the_read_whose_states_fill_their_rows(lab):
    # the read already asks systemd for the unit (VmNow.units); the probe run with it does not ask again
    assert "systemctl" not in checks.vm_probe(lab, "node1", without=checks.service_sections("node1"))
    assert "systemctl is-active k3s-agent" in checks.vm_probe(lab, "node1")
    assert checks.service_sections("host1") == {"bird": "bird"} and checks.service_sections("node2") == {"k3s": "k3s-agent"}
    probed = "### calicolab:addresses\ninet 198.19.0.2/20\ninet 10.255.255.2/24"
    for active, ok in (("active", True), ("inactive", False), ("", False)):
        rows = checks.vm_rows(lab, "node1", checks.split_sections(checks.add_sections(probed, {"k3s": active})))
        assert [row.ok for row in rows if row.check == "node1: k3s-agent active"] == [ok]
