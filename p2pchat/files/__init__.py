"""File transfer (issue 14): the sans-I/O pieces, not wired into the node yet.

One module per job (design and wire sketch: ``docs/files.md``):

* :mod:`.manifest`: chunking, per-chunk SHA-256, the Merkle root, the file id,
  the :class:`~.manifest.Offer` value and its validation;
* :mod:`.safename`: :func:`~.safename.safe_filename`, a received name made safe
  to create in the download directory;
* :mod:`.partial`: a download being written (``NAME.p2pchat-part`` and its
  chunk map), resumable, checked whole before its rename;
* :mod:`.swarm`: the download scheduler (rarest first, bounded requests per
  holder, timeouts, bad holders dropped); time passed in, requests out;
* :mod:`.source`: a file we offered, served from where it lies while its
  size, mtime and each chunk's hash still match;
* :mod:`.serve`: the uploader's admission of chunk requests (only what we
  hold, a token bucket and a bound in flight per peer).

Only :mod:`.partial` (through a replaceable writer) and :mod:`.source`
touch the disk, and :mod:`.safename` looks at the directory; nothing here opens a socket, starts a
thread or reads the clock.
"""
