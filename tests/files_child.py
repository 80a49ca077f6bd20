"""A file-transfer peer in a process of its own, for the ``kill -9`` tests.

``python tests/files_child.py offer DIR PORT FILE``: serve FILE (slowly,
1 MiB/s per peer), print the offer as one JSON line, run until killed or
until stdin closes.  ``python tests/files_child.py get DIR OFFER_JSON
HOLDER_JSON``: download, print ``started``, run until killed or stdin closes.
The key pair is kept in ``DIR/state`` so a restarted child is the same node.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from files_net import FilePeer

from p2pchat.files.engine import Holder
from p2pchat.files.manifest import make_offer
from p2pchat.files.serve import ServeConfig
from p2pchat.identity import Identity


def main(argv: list[str]) -> None:
    role, directory = argv[0], Path(argv[1])
    (directory / "state").mkdir(parents=True, exist_ok=True)
    identity = Identity.load_or_create(str(directory / "state"))
    if role == "offer":
        slow = ServeConfig(rate_bytes_per_s=1024 * 1024, burst_bytes=256 * 1024)
        peer = FilePeer(directory, identity=identity, port=int(argv[2]), serve_config=slow)
        if argv[3] != "-":
            offer = peer.offer(Path(argv[3]))
            fields = [
                offer.file_id.hex(),
                offer.name,
                offer.size,
                offer.chunk_size,
                offer.root.hex(),
            ]
            print(json.dumps({"offer": fields, "port": peer.port, "node": peer.node_id}))
        else:
            print(json.dumps({"port": peer.port}))
    else:
        peer = FilePeer(directory, identity=identity)
        f = json.loads(argv[2])
        offer = make_offer(bytes.fromhex(f[0]), f[1], f[2], f[3], bytes.fromhex(f[4]))
        h = json.loads(argv[3])
        peer.transfers.get(offer, [Holder(h["node"], ["127.0.0.1"], h["port"])])
        print("started")
    sys.stdout.flush()
    sys.stdin.read()  # until the parent closes it (or kills us)
    peer.close()


if __name__ == "__main__":
    main(sys.argv[1:])
