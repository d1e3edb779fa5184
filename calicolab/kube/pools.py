"""Calico IP pools as tigera-operator v1.42 applies them: what a change of the pool settings does.

Since operator v1.34 the IP-pool controller reconciles the Installation's ``spec.calicoNetwork.ipPools``
into the IPPools the operator owns (label ``app.kubernetes.io/managed-by: tigera-operator``), matched by
CIDR (tigera/operator ``pkg/controller/ippool/pool_controller.go``):

* while no IPPool exists at all it creates the pools itself (bootstrap, at install time);
* every later create, update or delete goes through the Calico API server only (``APIServer`` ``default``
  Ready). Without it ``tigerastatus/ippools`` turns Degraded ("Unable to modify IP pools while Calico API
  server is unavailable") and the pools stay as they are;
* a new CIDR is a new pool: the operator creates it and deletes the old pool in the same pass. The Calico
  API refuses to change an existing pool's CIDR (projectcalico/calico#11311) or its block size.

Example:

.. code:: python

    plan = plan_pools(installation, api.list(IPPOOL_API, "IPPool"))
    plan.changes   # ['IPPool default-ipv4-ippool (198.19.16.0/21): natOutgoing true -> false']
"""

from __future__ import annotations

from dataclasses import dataclass, field

from calicolab.polling import Check

IPPOOL_API = "crd.projectcalico.org/v1"
MANAGED_BY = ("app.kubernetes.io/managed-by", "tigera-operator")
#: The course's pool keeps the name students meet in `calicoctl get ippools`; any other CIDR gets a name of
#: its own, because a new CIDR must be a new pool (the Calico API refuses to change a pool's CIDR).
COURSE_POOL = ("198.19.16.0/21", "default-ipv4-ippool")
#: Installation encapsulation → the IPPool's (ipipMode, vxlanMode), as the operator converts it.
ENCAPSULATION_MODES = {
    "None": ("Never", "Never"),
    "IPIP": ("Always", "Never"),
    "IPIPCrossSubnet": ("CrossSubnet", "Never"),
    "VXLAN": ("Never", "Always"),
    "VXLANCrossSubnet": ("Never", "CrossSubnet"),
}
COMPARED = ("natOutgoing", "ipipMode", "vxlanMode")

WAYS_FORWARD = (
    "Two ways forward: enable the Calico API server and run again (`--data calico_apiserver=Enabled`, or set "
    "calico_apiserver = \"Enabled\" in group_data/all.py), or rebuild the lab with the new settings "
    "(`pyinfra inventory.py teardown.py`, then deploy)"
)


def pool_name(cidr) -> str:
    """The name of the Installation pool for ``cidr``: ``pool_name("198.19.16.0/22") == "ipv4-ippool-198-19-16-0-22"``."""
    cidr = str(cidr)
    if cidr == COURSE_POOL[0]:
        return COURSE_POOL[1]
    return "ipv4-ippool-" + cidr.replace(".", "-").replace("/", "-")


def ippool_spec(pool: dict) -> dict:
    """The IPPool fields the operator writes for one Installation pool (with the operator's defaults):
    ``ippool_spec({"cidr": "10.0.0.0/16", "encapsulation": "VXLAN"})["vxlanMode"] == "Always"``."""
    ipip, vxlan = ENCAPSULATION_MODES.get(pool.get("encapsulation", "IPIP"), ("?", "?"))
    return {
        "cidr": pool.get("cidr"),
        "blockSize": int(pool.get("blockSize", 26)),
        "natOutgoing": pool.get("natOutgoing", "Enabled") == "Enabled",
        "ipipMode": ipip,
        "vxlanMode": vxlan,
    }


def installation_pools(installation: dict) -> list[dict]:
    return (((installation.get("spec") or {}).get("calicoNetwork") or {}).get("ipPools")) or []


def owned(pool: dict) -> bool:
    return ((pool.get("metadata") or {}).get("labels") or {}).get(MANAGED_BY[0]) == MANAGED_BY[1]


def _label(pool: dict) -> str:
    return f"IPPool {(pool.get('metadata') or {}).get('name', '?')} ({(pool.get('spec') or {}).get('cidr')})"


def _text(value) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


@dataclass
class PoolPlan:
    """What the operator would have to do to the live IPPools for a rendered Installation."""

    updates: list[str] = field(default_factory=list)
    creates: list[str] = field(default_factory=list)
    deletes: list[str] = field(default_factory=list)
    #: (live pool label, live block size, wanted block size): a change the Calico API refuses
    block_sizes: list[tuple[str, int, int]] = field(default_factory=list)
    #: no IPPool exists at all: the operator creates the pools without the API server
    bootstrap: bool = False

    @property
    def changes(self) -> list[str]:
        return self.updates + self.creates + self.deletes

    @property
    def needs_apiserver(self) -> bool:
        return bool(self.changes) and not self.bootstrap


def plan_pools(installation: dict, live_pools: list[dict]) -> PoolPlan:
    """Compare the Installation's pools with the operator-owned live IPPools, by CIDR."""
    plan = PoolPlan(bootstrap=not live_pools)
    ours = {(p.get("spec") or {}).get("cidr"): p for p in live_pools if owned(p)}
    wanted = [ippool_spec(pool) for pool in installation_pools(installation)]
    for pool, spec in zip(installation_pools(installation), wanted):
        live = ours.get(spec["cidr"])
        if live is None:
            plan.creates.append(f"IPPool {pool.get('name') or pool_name(spec['cidr'])} ({spec['cidr']}) created")
            continue
        live_spec = live.get("spec") or {}
        if int(live_spec.get("blockSize", 26)) != spec["blockSize"]:
            plan.block_sizes.append((_label(live), int(live_spec.get("blockSize", 26)), spec["blockSize"]))
        differences = [
            f"{key} {_text(live_spec.get(key))} -> {_text(spec[key])}"
            for key in COMPARED
            if live_spec.get(key) != spec[key]
        ]
        if differences:
            plan.updates.append(f"{_label(live)}: " + ", ".join(differences))
    wanted_cidrs = {spec["cidr"] for spec in wanted}
    plan.deletes += [f"{_label(p)} deleted" for cidr, p in ours.items() if cidr not in wanted_cidrs]
    return plan


def block_size_problems(plan: PoolPlan) -> list[str]:
    """One problem per pool whose block size would change, naming the setting and the fix."""
    return [
        f"calico_pool_block_size: {wanted} differs from the live {label}, which has blockSize {live}; Calico "
        f"cannot change the block size of an existing pool. Keep calico_pool_block_size={live}, or rebuild the "
        "lab with the new block size (`pyinfra inventory.py teardown.py`, then deploy)"
        for label, live, wanted in plan.block_sizes
    ]


def cidr_note(plan: PoolPlan) -> str:
    """What a new CIDR means for running pods ("" when the CIDR does not change)."""
    if not (plan.creates and plan.deletes):
        return ""
    return (
        "A new CIDR is a new pool: the operator creates it and deletes the old one in the same pass "
        "(deleting, too, needs the Calico API server). Running pods keep their addresses from the old pool "
        "until they are recreated (e.g. `kubectl -n yaobank rollout restart deployment`); new pods get "
        "addresses from the new pool. "
    )


def review_message(plan: PoolPlan, apiserver: bool) -> tuple[str, bool]:
    """(message, blocked) for a pool change: what the operator will do, or why it cannot and what to do."""
    problems = block_size_problems(plan)
    if problems:
        return "Installation ipPools: " + "; ".join(problems), True
    if not plan.needs_apiserver:
        return "", False
    what = "; ".join(plan.changes)
    if apiserver:
        return (
            f"Installation ipPools: the operator will apply this through the Calico API server: {what}. "
            + cidr_note(plan)
            + "The run waits until the IPPools show it and tigerastatus/ippools is Available.",
            False,
        )
    return (
        f"Installation ipPools: the operator cannot apply this change: {what}. It changes IP pools after "
        "install only through the Calico API server, and this lab runs without it (calico_apiserver=Disabled): "
        "the Installation would only leave tigerastatus/ippools Degraded (\"Unable to modify IP pools while "
        "Calico API server is unavailable\") and the pools as they are, so the real run stops before applying "
        "it and changes nothing. " + cidr_note(plan) + WAYS_FORWARD + ".",
        True,
    )


def pools_check(installation: dict, live_pools: list[dict], ippools_status: dict | None):
    """Done (a ``Check``) when the operator-owned IPPools match the Installation and
    tigerastatus/ippools is Available. A Degraded ``ippools`` is reported as failed (the caller decides
    how long to tolerate it)."""
    from calicolab.kube import waits  # here, so that rendering (pool_name) needs no Kubernetes client

    plan = plan_pools(installation, live_pools)
    status = waits.tigerastatus_check(ippools_status, "ippools")
    pending = plan.changes + [f"blockSize of {label}: {live} (set: {wanted})" for label, live, wanted in plan.block_sizes]
    if not pending and status.done:
        names = ", ".join(pool_name(spec["cidr"]) for spec in map(ippool_spec, installation_pools(installation)))
        return Check(True, f"IP pools as set ({names}); tigerastatus/ippools Available")
    message = "; ".join((["not yet: " + "; ".join(pending)] if pending else []) + [status.message])
    return Check(False, message, failed=status.failed)
