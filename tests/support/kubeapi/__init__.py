"""A small Kubernetes API server emulator for tests (aiohttp, HTTP or k3s-style mTLS).

    from tests.support.kubeapi import Emulator
    with Emulator(tls=True) as emu:
        emu.write_kubeconfig(path)
"""
from .errors import ApiError
from .server import Emulator
from .store import Store

__all__ = ["ApiError", "Emulator", "Store"]
