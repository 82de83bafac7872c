"""The ``forgehall`` command line.

``server.py`` holds the operator commands that run on the server host (serve, up,
migrate, config); they may import server internals. Client commands (added per domain)
talk to a server over HTTP and import only ``schemas``.
"""
