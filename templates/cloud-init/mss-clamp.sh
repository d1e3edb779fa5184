#!/bin/sh
# Clamp the TCP MSS of forwarded and local SYNs (the lab's MTU may be lower than 1500
# under nested virtualisation or VPNs). Checks before adding, so it can run on every boot.
set -u
MSS="$1"
for tool in iptables ip6tables; do
    command -v "$tool" >/dev/null 2>&1 || continue
    rule="POSTROUTING -p tcp --tcp-flags SYN,RST SYN -j TCPMSS --set-mss $MSS"
    # shellcheck disable=SC2086
    "$tool" -t mangle -C $rule 2>/dev/null || "$tool" -t mangle -A $rule
done
exit 0
