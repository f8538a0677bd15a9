"""ICE as operators configure it: which addresses a router offers, what it announces, which
STUN/TURN servers it asks (none unless configured: nothing reaches a public server).

aiortc gathers host candidates on every interface but loopback (aioice's
``get_host_addresses``; it has no setting for this), so a router behind a load balancer, in
a pod, or on a loopback-only test host cannot choose. ``choose_host_addresses`` is that
setting, applied once per process; ``announce`` rewrites the answer's candidates to the
announced address (1:1 NAT, as mediasoup's announcedAddress or pion's NAT1To1IPs).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence

import aioice.ice
from aiortc import RTCConfiguration, RTCIceServer

from voxmesh.core.settings import WebRtcSettings

_chosen: tuple[str, ...] | None = None
_discover = aioice.ice.get_host_addresses


def _host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    if _chosen is None:
        return _discover(use_ipv4, use_ipv6)
    return [a for a in _chosen if (use_ipv6 if ipaddress.ip_address(a).version == 6 else use_ipv4)]


def choose_host_addresses(addresses: Sequence[str]) -> None:
    """Offer host candidates on exactly these addresses (empty: every interface but loopback,
    aioice's own choice). Process-wide: every peer connection of this process uses it."""
    global _chosen
    for address in addresses:
        ipaddress.ip_address(address)  # a bad address fails here, not at the first call
    _chosen = tuple(addresses) or None
    aioice.ice.get_host_addresses = _host_addresses


def rtc_configuration(settings: WebRtcSettings) -> RTCConfiguration:
    """STUN/TURN servers from config; with none configured, none at all (aiortc's default
    would ask a public STUN server)."""
    return RTCConfiguration(
        iceServers=[
            RTCIceServer(
                urls=list(server.urls),
                username=server.username or None,
                credential=server.credential or None,
            )
            for server in settings.ice_servers
        ]
    )


_CANDIDATE = re.compile(r"^(a=candidate:\S+ \d+ \S+ \d+ )(\S+)( \d+ typ host.*)$", re.MULTILINE)


def announce(sdp: str, announced_address: str) -> str:
    """Host candidates (and the connection line) carry the announced address instead."""
    if not announced_address:
        return sdp
    sdp = _CANDIDATE.sub(lambda m: m.group(1) + announced_address + m.group(3), sdp)
    version = "IP6" if ipaddress.ip_address(announced_address).version == 6 else "IP4"
    return re.sub(r"^c=IN IP[46] \S+", f"c=IN {version} {announced_address}", sdp, flags=re.M)
