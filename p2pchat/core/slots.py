"""Connection slots: which inbound sockets a node takes before any handshake.

A socket just accepted is checked at once, before any thread starts for it,
against budgets that one address (or many) cannot exhaust for the others
(``docs/reliability.md``, "connection slots").  Sockets this node dialled
never count and are never refused, so an inbound flood cannot starve the
node's own dials.

Pure: the caller passes the sockets it holds.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from p2pchat.core.config import NodeConfig


@dataclass(frozen=True, slots=True)
class Held:
    """One inbound socket a node holds: its remote IP and whether its
    handshake is still under way."""

    ip: str
    in_handshake: bool


def inbound_refusal(config: NodeConfig, held: Iterable[Held], ip: str) -> tuple[str, str] | None:
    """Why a socket just accepted from ``ip`` must be refused, as
    ``(links_refused counter, reason for the peer)``, or None to take it.

    ``held``: the inbound sockets the node holds now.  From ``ip`` at most
    ``max_links_per_address``; still in the handshake at most
    ``max_handshakes_per_address`` from ``ip`` and ``max_handshakes`` in
    all; at most ``2 * max_links`` inbound sockets in all.
    """
    cfg = config
    inbound = from_ip = shaking = shaking_from_ip = 0
    for h in held:
        inbound += 1
        shaking += h.in_handshake
        if h.ip == ip:
            from_ip += 1
            shaking_from_ip += h.in_handshake
    if from_ip >= cfg.max_links_per_address:
        return "busy", f"too many links from {ip} ({cfg.max_links_per_address})"
    if shaking_from_ip >= cfg.max_handshakes_per_address:
        return "handshake_busy", f"too many handshakes from {ip} ({cfg.max_handshakes_per_address})"
    if shaking >= cfg.max_handshakes:
        return "handshake_busy", f"too many handshakes ({cfg.max_handshakes})"
    if inbound >= 2 * cfg.max_links:
        return "busy", f"too many links ({cfg.max_links})"
    return None
