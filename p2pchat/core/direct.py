"""Direct messages: a line sealed to one member's X25519 key (``/msg``).

A ``direct`` message floods like any other (so it reaches a member with no
link to us) but only its addressee can open it (:func:`p2pchat.identity.
seal`, ``docs/protocol.md`` §5.10).  Members announce their X25519 key in
their ``join`` and ``presence`` (``dh``).

Pure: no sockets, threads or clock (see :mod:`p2pchat.core.state`).
"""

from __future__ import annotations

from p2pchat import names, wire
from p2pchat.core import offers
from p2pchat.core.admission import BoundedMap
from p2pchat.core.state import MAX_ORIGINS, Shared
from p2pchat.errors import LineTooLong, UsageError
from p2pchat.events import FileOfferEvent, MessageEvent
from p2pchat.files.errors import BadOffer
from p2pchat.files.manifest import Offer
from p2pchat.identity import seal

MAX_DIRECT_OFFERS = 256
"""Most one-member offers (to us, and ours) kept for ``/files`` in one run;
the oldest go first (counted: ``rate_limited.direct_offers_full``)."""


def check_direct_text(text: str) -> None:
    """Check the text of a direct message of ours.

    Raises:
        UsageError: empty, or control characters.
        LineTooLong: more than ``wire.MAX_TEXT_CHARS`` code points.
    """
    if not text.strip() or wire.has_control_chars(text):
        raise UsageError("a direct message needs text without control characters")
    if len(text) > wire.MAX_TEXT_CHARS:
        raise LineTooLong(f"line is {len(text)} characters; the limit is {wire.MAX_TEXT_CHARS}.")


class Directs:
    """Sealing, opening and addressing direct messages.

    Args:
        s: the core's shared state.
    """

    def __init__(self, s: Shared) -> None:
        self.s = s
        self.dh_keys: BoundedMap[str, str] = BoundedMap(MAX_ORIGINS)  # origin -> X25519 key
        # One-member offers of this run, to us or ours: message id -> event.
        self.offers: BoundedMap[str, FileOfferEvent] = BoundedMap(MAX_DIRECT_OFFERS)

    def heard(self, msg: wire.FloodMessage) -> None:
        """Keep the direct-message key an admitted ``join`` or ``presence`` announces."""
        if isinstance(msg, wire.Presence | wire.Join) and msg.dh:
            self.dh_keys.put(msg.origin, msg.dh)

    def _sealed(self, to: str, plain: bytes) -> wire.Direct:
        """A signed ``direct`` to the member ``to`` stands for, ``plain`` in its box.

        Raises:
            UsageError: see :meth:`resolve`; no key announced yet.
        """
        s = self.s
        node = to if s.roster.get(to) is not None and to != s.node_id else self.resolve(to)
        dh = self.dh_keys.get(node)
        if dh is None:
            raise UsageError(
                f"{s.roster.display(node)} has not announced a key for direct "
                "messages yet; try again in a few seconds"
            )
        env = s.envelope()
        aad = f"{env['id']}:{s.node_id}:{node}".encode()
        eph, box = seal(dh, plain, aad)
        return s.signed(wire.Direct(to=node, eph=eph, box=box, **env))

    def seal_offer(self, to: str, offer: Offer) -> tuple[wire.Direct, FileOfferEvent]:
        """Our one-member offer of ``offer`` to the member ``to`` stands for
        (its node id, or as :meth:`resolve`): a ``direct`` whose box holds
        the offer (:func:`p2pchat.core.offers.box_plaintext`), and its event.

        Raises:
            UsageError: see :meth:`resolve`; the member has not announced a
                key for direct messages yet; an offer receivers would refuse
                (:func:`p2pchat.core.offers.check_own`).
        """
        s = self.s
        offers.check_own(offer)
        msg = self._sealed(to, offers.box_plaintext(offer))
        ev = FileOfferEvent(
            id=msg.id,
            room=s.config.room,
            origin=s.node_id,
            name=s.name,
            offer=offer,
            ts=msg.ts,
            self=True,
            seq=msg.seq,
            display=s.name,
            to=msg.to,
            to_display=s.roster.display(msg.to),
        )
        self._keep(ev)
        return msg, ev

    def seal(self, to: str, text: str, action: bool) -> tuple[wire.Direct, MessageEvent]:
        """Our direct message to the member ``to`` stands for, and its event.

        Raises:
            UsageError: see :meth:`resolve`; the member has not announced a
                key for direct messages yet; the text is empty or has
                control characters.
            LineTooLong: more than ``wire.MAX_TEXT_CHARS`` code points.
        """
        s = self.s
        check_direct_text(text)
        flag = offers.BOX_ACTION if action else offers.BOX_LINE
        msg = self._sealed(self.resolve(to), bytes([flag]) + text.encode("utf-8"))
        node = msg.to
        ev = MessageEvent(
            id=msg.id,
            origin=s.node_id,
            name=s.name,
            text=text,
            ts=msg.ts,
            self=True,
            seq=msg.seq,
            action=action,
            display=s.name,
            private=True,
            to=node,
            to_display=s.roster.display(node),
        )
        return msg, ev

    def resolve(self, who: str) -> str:
        """The node id of the one other member ``who`` stands for.

        ``name#abcd``: the member whose node id (the first hex digits of its
        key fingerprint) starts with the hex digits after the last ``#`` and
        whose name looks like ``name`` (:func:`p2pchat.names.confusable`);
        never a member whose name merely reads so (``#`` is not allowed in
        names).  A bare name: the member with exactly that name (in NFC), only
        when no other member's name looks like it.  Else a prefix of at least
        4 hex digits of a node id.

        Raises:
            UsageError: nobody, or more than one member, answers to ``who``;
                or members with look-alike names need their ``#abcd``.
        """
        s = self.s
        who = names.normalise(who)
        others = [m for m in s.roster.members() if m.node != s.node_id]
        if "#" in who:
            name, _, prefix = who.rpartition("#")
            prefix = prefix.lower()
            if not 4 <= len(prefix) <= 16 or prefix.strip("0123456789abcdef"):
                raise UsageError(
                    f"in {who!r}, '#' must be followed by 4 to 16 hex digits of a key "
                    "fingerprint, as /who shows them"
                )
            found = [
                m
                for m in others
                if m.node.startswith(prefix) and (not name or names.confusable(name, m.name))
            ]
        else:
            found = [m for m in others if m.name == who]
            alike = [m for m in s.roster.lookalikes(s.node_id, who) if m.name != who]
            if alike:
                shown = ", ".join(sorted(s.roster.display(m.node) for m in found + alike))
                raise UsageError(
                    f"names look like {who!r} ({shown}): say which, with its #fingerprint"
                )
            if not found and len(who) >= 4 and not who.strip("0123456789abcdef"):
                found = [m for m in others if m.node.startswith(who)]
        if not found:
            raise UsageError(f"nobody called {who!r} is in the room (/who lists them)")
        if len(found) > 1:
            names_ = ", ".join(sorted(s.roster.display(m.node) for m in found))
            raise UsageError(f"{len(found)} members are called {who!r}: say which ({names_})")
        return found[0].node

    def open(self, msg: wire.Direct) -> MessageEvent | FileOfferEvent | None:
        """The event of a direct message to us, or None (counted as
        ``undecryptable``) if it does not open or holds no valid line; a
        box that holds a file offer (flag :data:`~p2pchat.core.offers.BOX_OFFER`)
        gives a :class:`~p2pchat.events.FileOfferEvent` with ``to_me``, or
        None if the offer is refused (counted under its reason)."""
        s = self.s
        aad = f"{msg.id}:{msg.origin}:{msg.to}".encode()
        plain = s.identity.open(msg.eph, msg.box, aad)
        if plain and plain[0] == offers.BOX_OFFER:
            return self._open_offer(msg, plain[1:])
        text = ""
        if plain:
            try:
                text = plain[1:].decode("utf-8")
            except UnicodeDecodeError:
                text = ""
        if not text.strip() or wire.has_control_chars(text) or len(text) > wire.MAX_TEXT_CHARS:
            s.admission.refuse("undecryptable")
            return None
        assert plain is not None
        return MessageEvent(
            id=msg.id,
            origin=msg.origin,
            name=msg.name,
            text=text,
            ts=msg.ts,
            self=False,
            seq=msg.seq,
            action=plain[0] == 1,
            display=s.roster.display(msg.origin, msg.name),
            private=True,
            to=s.node_id,
            to_display=s.name,
        )

    def _open_offer(self, msg: wire.Direct, body: bytes) -> FileOfferEvent | None:
        """The event of a one-member offer to us (``body``: the box after its
        flag byte), kept for :attr:`offers`; None if refused (counted)."""
        s = self.s
        try:
            offer = offers.open_box_offer(body)
        except BadOffer as exc:
            s.admission.refuse(exc.code)
            return None
        ev = FileOfferEvent(
            id=msg.id,
            room=s.config.room,
            origin=msg.origin,
            name=msg.name,
            offer=offer,
            ts=msg.ts,
            self=False,
            seq=msg.seq,
            display=s.roster.display(msg.origin, msg.name),
            to_me=True,
        )
        self._keep(ev)
        return ev

    def _keep(self, ev: FileOfferEvent) -> None:
        """Keep a one-member offer for :attr:`offers`; count the oldest
        forgotten when the table is full."""
        if ev.id not in self.offers and len(self.offers) >= self.offers.max_entries:
            limited = self.s.rate_limited
            limited["direct_offers_full"] = limited.get("direct_offers_full", 0) + 1
        self.offers.put(ev.id, ev)
