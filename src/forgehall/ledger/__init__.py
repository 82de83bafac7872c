"""The evidence ledger's pure core: canonical JSON, the RFC 9162 Merkle tree, signed
checkpoints and the local hash-chained ledger file.

Nothing here touches a database or imports the server (an import-linter contract), so
the server's sequencer and an offline verifier run the very same code.
"""
