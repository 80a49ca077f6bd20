"""A deterministic simulator: the protocol core on a virtual LAN.

``python -m p2pchat.sim --nodes 1000 --lines 100 --seed 1 --json`` runs the
unchanged core (:class:`p2pchat.core.protocol.Protocol`) on a virtual clock,
with no sockets, threads or sleeps, and checks that every honest line
reached every honest node exactly once, in per-origin order, and that
``/history`` is the same everywhere (``docs/architecture.md``).

Modules, one concern each: :mod:`~p2pchat.sim.api` (the core as the
simulator calls it), :mod:`~p2pchat.sim.lan` (clock, links, dials),
:mod:`~p2pchat.sim.hostile` (attackers), :mod:`~p2pchat.sim.observe`
(counters and invariants), :mod:`~p2pchat.sim.scenario` (settings, the
schedule, the report).
"""

from p2pchat.sim.scenario import Run, SimConfig, run

__all__ = ["Run", "SimConfig", "run"]
