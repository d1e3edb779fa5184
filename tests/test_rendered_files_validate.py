"""Rendered files pass the real validators, and fail them when broken on purpose."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from calicolab.constants import VM_NAMES
from calicolab.render import render_cloud_init, render_manifest

SCHEMA = yaml.safe_load((Path(__file__).parent / "data" / "installation-schema.yaml").read_text())
# Top-level keys we use; cloud-init 22.4 accepts unknown top-level keys, so typos need this list.
CLOUD_CONFIG_KEYS = {"package_update", "packages", "manage_etc_hosts", "write_files", "bootcmd", "runcmd"}


def kubernetes_minor(lab) -> str:
    return ".".join(lab.k3s_version[1:].split(".")[:2])


@pytest.mark.parametrize("name", VM_NAMES)
def test_cloud_init_passes_cloud_inits_own_schema(lab, name, tmp_path, cloud_init_schema):
    path = tmp_path / f"{name}.yaml"
    path.write_text(render_cloud_init(lab, name))
    code, output = cloud_init_schema(path)
    assert code == 0, output
    assert "Valid cloud-config" in output


@pytest.mark.parametrize(
    "breakage, expected",
    [
        (lambda text: text.replace('permissions: "0755"', "permissions: 0755", 1), "permissions"),
        (lambda text: text.replace("package_update: true", "package_update: 'yes-please'"), "package_update"),
        (lambda text: text.replace('  - [/usr/local/sbin/calicolab-mss-clamp, "1300"]', "  - [/usr/local/sbin/calicolab-mss-clamp, 1300]"), "runcmd"),
        (lambda text: text.replace("#cloud-config\n", "", 1), "#cloud-config"),
    ],
    ids=["permissions-as-int", "bad-boolean", "int-in-command", "missing-header"],
)
def test_cloud_init_schema_rejects_broken_user_data(lab, tmp_path, cloud_init_schema, breakage, expected):
    broken = breakage(render_cloud_init(lab, "control"))
    assert broken != render_cloud_init(lab, "control"), "the breakage did not apply"
    path = tmp_path / "broken.yaml"
    path.write_text(broken)
    code, output = cloud_init_schema(path)
    assert code != 0
    assert expected in output


@pytest.mark.parametrize("name", VM_NAMES)
def test_cloud_init_uses_only_known_top_level_keys(lab, name):
    document = yaml.safe_load(render_cloud_init(lab, name))
    assert set(document) <= CLOUD_CONFIG_KEYS


@pytest.mark.parametrize("which", ["tigera-operator", "yaobank"])
def test_core_objects_pass_kubernetes_validate_strict(lab, which):
    version = kubernetes_minor(lab)
    documents = [d for d in yaml.safe_load_all(render_manifest(lab, which)) if d]
    assert documents
    for document in documents:
        kubernetes_validate.validate(document, version, strict=True)


def test_kubernetes_validate_catches_a_typo_in_our_objects(lab):
    documents = [d for d in yaml.safe_load_all(render_manifest(lab, "yaobank")) if d]
    service = next(d for d in documents if d["kind"] == "Service")
    service["spec"]["selectr"] = service["spec"].pop("selector")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(service, kubernetes_minor(lab), strict=True)


def test_installation_matches_the_fields_and_enums_we_use(lab):
    (installation,) = [d for d in yaml.safe_load_all(render_manifest(lab, "installation")) if d]
    errors = list(jsonschema.Draft7Validator(SCHEMA).iter_errors(installation))
    assert errors == []


@pytest.mark.parametrize(
    "path, value",
    [
        (("encapsulation",), "VXLANish"),
        (("natOutgoing",), True),
        (("blockSize",), "26"),
        (("natOutgoin",), "Enabled"),
    ],
)
def test_installation_schema_rejects_bad_values(lab, path, value):
    (installation,) = [d for d in yaml.safe_load_all(render_manifest(lab, "installation")) if d]
    pool = installation["spec"]["calicoNetwork"]["ipPools"][0]
    pool[path[0]] = value
    assert list(jsonschema.Draft7Validator(SCHEMA).iter_errors(installation))


def _bird_binary():
    import shutil

    path = shutil.which("bird") or ("/usr/sbin/bird" if Path("/usr/sbin/bird").exists() else None)
    assert path, "BIRD 2 is needed to check the configuration: apt-get install bird2 (.ci/run does)"
    return path


def test_bird_configuration_parses_with_bird2(lab, tmp_path):
    import subprocess

    from calicolab.render import render_bird_conf

    conf = tmp_path / "bird.conf"
    conf.write_text(render_bird_conf(lab))
    result = subprocess.run([_bird_binary(), "-p", "-c", str(conf)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_bird_parser_rejects_a_broken_configuration(lab, tmp_path):
    import subprocess

    from calicolab.render import render_bird_conf

    conf = tmp_path / "bird.conf"
    conf.write_text(render_bird_conf(lab).replace("neighbor 198.19.0.2 as", "neighbour 198.19.0.2 as"))
    result = subprocess.run([_bird_binary(), "-p", "-c", str(conf)], capture_output=True, text=True)
    assert result.returncode != 0
