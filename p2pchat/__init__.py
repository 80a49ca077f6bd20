"""p2pchat: a peer-to-peer chat for a local network, with no server.

Nodes find each other over mDNS/DNS-SD, link up over TCP and flood every chat
line through the mesh with a unique message id.  Start with
:class:`p2pchat.node.Node` for embedding, or ``p2pchat --help`` on a terminal.
"""

__version__ = "0.1.0"
