"""Gates on the client side: the ``.forgehall/gates.yaml`` file, its runner, and
readiness for a tier.

A gate is a command (tests, lint, a contract check…) whose result is evidence. This
package runs gates and builds ledger entries; it imports nothing of the server (an
import-linter contract) so the runtime daemon and the CLI share it.
"""
