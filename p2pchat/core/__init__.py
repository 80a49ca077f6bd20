"""The sans-I/O protocol core: the rules of p2pchat as plain state machines
that take events in (a frame received, a line to send, a tick) and return what
to do (frames to send, lines to show), in the manner of h11 and aioquic.  No
module of this package imports ``socket``, ``threading``, ``sqlite3``,
``zeroconf`` or ``time``: the caller passes the time in (``now``, in seconds
of a monotonic clock) and carries out the actions, so the same code runs under
the threaded node (:mod:`p2pchat.node`) and in tests without sockets or sleeps.
"""
