"""The Merkle tree of RFC 6962 / RFC 9162 §2.1 over SHA-256.

Leaves are hashed as ``SHA-256(0x00 || data)`` and interior nodes as
``SHA-256(0x01 || left || right)``, so a leaf can never pass for a node. The tree of
``n`` leaves splits at ``k``, the largest power of two smaller than ``n``; the empty tree
hashes to ``SHA-256("")``.

The functions taking ``leaf_hashes`` build proofs from the whole list (the server keeps
the leaves; proving costs O(n)). Verification needs only the proof, the sizes and the
hashes. :class:`MerkleFrontier` keeps the O(log n) right edge of a growing tree, enough
to compute the root after each append: that is how a verifier checks a million-entry
export without holding it, and how a sequencer extends the tree batch after batch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()


class ProofError(ValueError):
    """Arguments that cannot describe a proof (an index outside the tree, m > n, …)."""


def leaf_hash(data: bytes) -> bytes:
    """The hash of one leaf: ``SHA-256(0x00 || data)``."""
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """The hash of an interior node: ``SHA-256(0x01 || left || right)``."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def split_point(n: int) -> int:
    """The largest power of two smaller than ``n`` (``n`` >= 2)."""
    if n < 2:
        raise ProofError(f"a tree of {n} leaves does not split")
    return 1 << ((n - 1).bit_length() - 1)


def root(leaf_hashes: Sequence[bytes]) -> bytes:
    """The tree head (MTH) of the leaves, for any number of them."""
    frontier = MerkleFrontier()
    frontier.extend(leaf_hashes)
    return frontier.root()


def _subtree_root(leaf_hashes: Sequence[bytes], start: int, end: int) -> bytes:
    # MTH(D[start:end]) straight from the definition; depth is O(log n).
    if end - start == 1:
        return leaf_hashes[start]
    k = split_point(end - start)
    return node_hash(
        _subtree_root(leaf_hashes, start, start + k), _subtree_root(leaf_hashes, start + k, end)
    )


def _check_size(size: int, leaf_hashes: Sequence[bytes]) -> None:
    if size < 0 or size > len(leaf_hashes):
        raise ProofError(f"tree size {size} is outside 0..{len(leaf_hashes)} (the leaves given)")


def inclusion_proof(index: int, size: int, leaf_hashes: Sequence[bytes]) -> list[bytes]:
    """The audit path PATH(index, D[size]) of RFC 9162 §2.1.3.1, from the leaf upwards."""
    _check_size(size, leaf_hashes)
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} is not in a tree of size {size}")
    path: list[bytes] = []
    start, end, m = 0, size, index
    # Walk down from the root; each level contributes the sibling subtree, which the
    # recursive definition appends after the deeper part of the path.
    while end - start > 1:
        k = split_point(end - start)
        if m < k:
            path.append(_subtree_root(leaf_hashes, start + k, end))
            end = start + k
        else:
            path.append(_subtree_root(leaf_hashes, start, start + k))
            start, m = start + k, m - k
    path.reverse()
    return path


def verify_inclusion(
    index: int, size: int, leaf: bytes, proof: Sequence[bytes], root_hash: bytes
) -> bool:
    """Whether ``proof`` shows leaf hash ``leaf`` at ``index`` in the tree ``root_hash``
    of ``size`` leaves (RFC 9162 §2.1.3.2)."""
    if not 0 <= index < size:
        return False
    fn, sn = index, size - 1
    r = leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root_hash


def consistency_proof(m: int, n: int, leaf_hashes: Sequence[bytes]) -> list[bytes]:
    """PROOF(m, D[n]) of RFC 9162 §2.1.4.1: the tree of ``m`` leaves is a prefix of the
    tree of ``n``. Empty when ``m`` is 0 or equal to ``n`` (nothing to prove)."""
    _check_size(n, leaf_hashes)
    if not 0 <= m <= n:
        raise ProofError(f"size {m} is not between 0 and {n}")
    if m in (0, n):
        return []
    proof: list[bytes] = []
    start, end, mm, whole = 0, n, m, True
    while True:
        size = end - start
        if mm == size:
            # SUBPROOF(m, D[m], b): nothing when m is the original old size, else MTH.
            if not whole:
                proof.append(_subtree_root(leaf_hashes, start, end))
            break
        k = split_point(size)
        if mm <= k:
            proof.append(_subtree_root(leaf_hashes, start + k, end))
            end = start + k
        else:
            proof.append(_subtree_root(leaf_hashes, start, start + k))
            start, mm, whole = start + k, mm - k, False
    proof.reverse()
    return proof


def verify_consistency(
    m: int, n: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> bool:
    """Whether ``proof`` shows the tree ``old_root`` of ``m`` leaves is a prefix of the
    tree ``new_root`` of ``n`` leaves (RFC 9162 §2.1.4.2; sizes 0 and m == n are
    consistent with an empty proof, and m == n only for equal roots)."""
    if not 0 <= m <= n:
        return False
    if m == n:
        return not proof and old_root == new_root
    if m == 0:
        return not proof
    if not proof:
        return False
    path = list(proof)
    if m & (m - 1) == 0:  # m is a power of two: the old root is itself a node of the path
        path.insert(0, old_root)
    fn, sn = m - 1, n - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == old_root and sr == new_root


class MerkleFrontier:
    """The right edge of a growing tree: one subtree root per set bit of its size.

    ``nodes`` are the roots of the perfect subtrees that make up the tree, largest
    (leftmost) first. Appending merges equal-sized subtrees like carries in binary
    addition, so memory is O(log n) and an append costs O(1) amortized hashes.
    """

    def __init__(self, size: int = 0, nodes: Sequence[bytes] = ()) -> None:
        if size < 0 or len(nodes) != size.bit_count():
            raise ProofError(
                f"a frontier of size {size} has {max(size, 0).bit_count()} nodes, not {len(nodes)}"
            )
        if any(len(node) != HASH_SIZE for node in nodes):
            raise ProofError("frontier nodes are 32-byte SHA-256 hashes")
        self._size = size
        self._nodes = list(nodes)

    @property
    def size(self) -> int:
        return self._size

    @property
    def nodes(self) -> tuple[bytes, ...]:
        """The state to store; ``MerkleFrontier(size, nodes)`` resumes from it."""
        return tuple(self._nodes)

    def append(self, leaf: bytes) -> None:
        """Add one leaf hash (not the leaf data: hash it with :func:`leaf_hash`)."""
        node = leaf
        carry = self._size
        while carry & 1:
            node = node_hash(self._nodes.pop(), node)
            carry >>= 1
        self._nodes.append(node)
        self._size += 1

    def extend(self, leaves: Iterable[bytes]) -> None:
        for leaf in leaves:
            self.append(leaf)

    def root(self) -> bytes:
        """The tree head of the leaves appended so far."""
        if not self._nodes:
            return EMPTY_ROOT
        result = self._nodes[-1]
        for node in reversed(self._nodes[:-1]):
            result = node_hash(node, result)
        return result
