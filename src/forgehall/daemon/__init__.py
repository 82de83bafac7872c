"""The runtime daemon (``forgehall daemon``): claims agent tasks from a Forgehall server
over the daemon protocol (docs/daemon-protocol.md) and runs coding CLIs for them.

It never imports server internals: it talks HTTP, using only ``forgehall.agents.schemas``
for the shapes of the protocol.
"""
