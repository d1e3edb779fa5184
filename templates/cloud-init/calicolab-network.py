#!/usr/bin/python3
"""Give the VM's primary NIC its static lab and management addresses through netplan.

The NIC is found from the default route and matched by its MAC address. The addresses are
added to the NIC's existing netplan definition (same ID, so netplan merges them with the
DHCP setup instead of creating a second, competing definition). Idempotent: rewrites the
file and applies netplan only when something differs.
"""
import glob
import json
import os
import subprocess
import sys

import yaml

SETTINGS = "/etc/calicolab/network.json"
TARGET = "/etc/netplan/60-calicolab.yaml"


def primary_nic():
    routes = json.loads(subprocess.check_output(["ip", "-j", "-4", "route", "show", "default"]) or b"[]")
    if not routes:
        sys.exit("calicolab-network: no default route, cannot tell which NIC is the primary one")
    device = routes[0]["dev"]
    with open(f"/sys/class/net/{device}/address") as handle:
        return device, handle.read().strip().lower()


def existing_id(device, mac):
    for path in sorted(glob.glob("/etc/netplan/*.yaml")):
        if path == TARGET:
            continue
        with open(path) as handle:
            document = yaml.safe_load(handle) or {}
        for key, nic in ((document.get("network") or {}).get("ethernets") or {}).items():
            nic = nic or {}
            match = nic.get("match") or {}
            if str(match.get("macaddress", "")).lower() == mac or nic.get("set-name") == device or key == device:
                return key
    return None


def main():
    with open(SETTINGS) as handle:
        settings = json.load(handle)
    device, mac = primary_nic()
    key = existing_id(device, mac)
    nic = {"addresses": settings["addresses"]}
    if key is None:
        key = device
        nic.update({"match": {"macaddress": mac}, "set-name": device, "dhcp4": True})
    wanted = yaml.safe_dump({"network": {"version": 2, "ethernets": {key: nic}}}, sort_keys=True)
    current = open(TARGET).read() if os.path.exists(TARGET) else None
    if current == wanted:
        return
    with open(os.open(TARGET, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as handle:
        handle.write(wanted)
    os.chmod(TARGET, 0o600)
    subprocess.check_call(["netplan", "apply"])


if __name__ == "__main__":
    main()
