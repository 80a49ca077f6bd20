"""Dialler threads: one peer dialled with backoff while there is no link to it.

A :class:`Dialer` runs on its own thread, ``p2pchat-dial-<key>``, for a
static peer (``--peer``: dialled for as long as the node runs, while it has
fewer links than its overlay's target) or for one dial the protocol core's
overlay asked for (``once``).  It reaches its node through
:class:`DialOwner`.
"""

from __future__ import annotations

import logging
import random
import socket
import threading
import time
from typing import Protocol

from p2pchat.core.config import NodeConfig
from p2pchat.transport import Link, dial

log = logging.getLogger("p2pchat.node")

IDLE_CHECK_S = 5.0
"""How often an idle dialler thread looks up without being woken (a safety net)."""


class DialOwner(Protocol):
    """What a :class:`Dialer` calls back into (the node); any thread."""

    config: NodeConfig

    @property
    def closing(self) -> bool:
        """True once the node is closing."""

    def has_link(self, node_id: str) -> bool:
        """True if a link to ``node_id`` is up."""

    def wants_links(self) -> bool:
        """True while the node wants more links."""

    def adopt(self, sock: socket.socket, direction: str, remote: tuple[str, int]) -> Link | None:
        """Start a link on a connected socket; None if not taken."""

    def dialer_done(self, dialer: Dialer) -> None:
        """The dialler's thread ends (called on it)."""


class Dialer:
    """Dials one peer with backoff while there is no link to it.

    ``addresses``/``port`` may be updated by discovery.  Runs on its own
    thread ``p2pchat-dial-<key>`` until :meth:`stop`, until the node closes,
    or until it gives up (a peer that is this node, or a discovered peer
    unreachable for ``give_up_s``).  Every other failure (a refusal such as
    ``busy``, a link that could not be set up, a timeout) only backs off.
    A static peer known by its id is redialled only while the node has fewer
    links than the overlay's target.  ``once``: a dial the overlay asked for
    (the core's overlay): one attempt, the outcome reported to the
    overlay when the thread ends (:meth:`DialOwner.dialer_done`), and the thread
    ends with the link.
    """

    def __init__(
        self,
        node: DialOwner,
        key: str,
        addresses: list[str],
        port: int,
        node_id: str = "",
        first_delay_s: float = 0.0,
        give_up_s: float | None = None,
        once: bool = False,
    ) -> None:
        self.node = node
        self.once = once
        self.key = key
        self.addresses = addresses
        self.port = port
        self.node_id = node_id
        self.first_delay_s = first_delay_s
        self.give_up_s = give_up_s
        self.outcome = (False, "")  # a once-dial's (linked, refusal code), reported when it ends
        self.stopped = threading.Event()
        self.wake = threading.Event()  # set by stop() and when the peer's link goes down
        self.thread = threading.Thread(target=self._run, name=f"p2pchat-dial-{key}", daemon=True)

    def stop(self) -> None:
        self.stopped.set()
        self.wake.set()

    def _run(self) -> None:
        cfg = self.node.config
        backoff = cfg.redial_min_s
        last_ok = time.monotonic()
        if self.first_delay_s and self.stopped.wait(self.first_delay_s):
            return
        while not self.stopped.is_set():
            if self.node_id and self.node.has_link(self.node_id):
                if self.once:
                    break
                # Linked (dialled by the peer): sleep until that link goes down.
                # The timeout is only a safety net; an idle thread costs a wake-up.
                last_ok = time.monotonic()
                self.wake.wait(IDLE_CHECK_S)
                self.wake.clear()
                continue
            if self.node_id and not self.once and not self.node.wants_links():
                # A static peer, and the overlay has its links: no need of it now.
                self.wake.wait(IDLE_CHECK_S)
                self.wake.clear()
                continue
            try:
                sock, host = dial(list(self.addresses), self.port, cfg.dial_timeout_s)
            except OSError as exc:
                log.debug("dial %s:%s failed: %s", self.addresses, self.port, exc)
                if self.once:
                    break  # outcome: failed, no code
                if self.give_up_s is not None and time.monotonic() - last_ok > self.give_up_s:
                    log.info("giving up on %s after %.0f s", self.key, self.give_up_s)
                    break
            else:
                if self.stopped.is_set():
                    sock.close()
                    break
                link = self.node.adopt(sock, "out", (host, self.port))
                if link is None:
                    if self.node.closing:
                        break
                    if self.once:
                        break  # outcome: failed, no code
                    # Not adopted (no slot, or any other passing reason): this
                    # is a failed dial like any other; back off and dial again.
                    log.debug("dial %s:%s: link not adopted", host, self.port)
                else:
                    while not link.done.wait(IDLE_CHECK_S):  # closing the node ends the link
                        if self.stopped.is_set():
                            break
                    if link.peer is not None:
                        self.node_id = link.peer.node
                    lived = time.monotonic() - (link.up_at or time.monotonic())
                    if lived > 10.0:
                        backoff = cfg.redial_min_s
                    if link.up_at is not None:
                        last_ok = time.monotonic()
                    if link.refused is not None or link.peer is None:
                        code = link.refused.code if link.refused else ""
                        if link.refusal is not None:
                            code = code or link.refusal.code
                        if self.once:
                            self.outcome = (False, code)
                            break
                        if code == "self":
                            log.info("%s is this node; not dialling it again", self.key)
                            break
                        if code in ("room", "version"):
                            backoff = cfg.redial_max_s
                    if self.once:
                        self.outcome = (True, "")
                        break
            jitter = random.uniform(0.8, 1.2)
            if self.stopped.wait(backoff * jitter):
                break
            backoff = min(backoff * 2, cfg.redial_max_s)
        self.node.dialer_done(self)
