"""The Merkle tree of RFC 6962 / RFC 9162 §2.1 over SHA-256.

Leaves are hashed as ``SHA-256(0x00 || data)`` and interior nodes as
``SHA-256(0x01 || left || right)``, so a leaf can never pass for a node. The tree of
``n`` leaves splits at ``k``, the largest power of two smaller than ``n``; the empty tree
hashes to ``SHA-256("")``.

The functions taking ``leaf_hashes`` build proofs from the whole list (proving costs
O(n)). A store that keeps the roots of the tree's *perfect* subtrees (``2**level``
leaves starting at ``index * 2**level``) proves in O(log² n) instead: every hash of a
proof is the root of a subtree ``[start, end)`` named by :func:`inclusion_ranges` /
:func:`consistency_ranges`, and such a subtree is a handful of perfect ones
(:func:`perfect_pieces`) folded together (:func:`fold_pieces`). Verification needs only
the proof, the sizes and the hashes. :class:`MerkleFrontier` keeps the O(log n) right
edge of a growing tree, enough to compute the root after each append: that is how a
verifier checks a million-entry export without holding it, and how a sequencer extends
the tree batch after batch (:meth:`MerkleFrontier.extend_with_nodes` also hands back the
perfect subtrees each batch completes, for such a store).
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


def inclusion_ranges(index: int, size: int) -> list[tuple[int, int]]:
    """The subtrees ``[start, end)`` whose roots make up PATH(index, D[size]), in the
    proof's order (from the leaf upwards)."""
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} is not in a tree of size {size}")
    ranges: list[tuple[int, int]] = []
    start, end, m = 0, size, index
    # Walk down from the root; each level contributes the sibling subtree, which the
    # recursive definition appends after the deeper part of the path.
    while end - start > 1:
        k = split_point(end - start)
        if m < k:
            ranges.append((start + k, end))
            end = start + k
        else:
            ranges.append((start, start + k))
            start, m = start + k, m - k
    ranges.reverse()
    return ranges


def inclusion_proof(index: int, size: int, leaf_hashes: Sequence[bytes]) -> list[bytes]:
    """The audit path PATH(index, D[size]) of RFC 9162 §2.1.3.1, from the leaf upwards."""
    _check_size(size, leaf_hashes)
    return [_subtree_root(leaf_hashes, s, e) for s, e in inclusion_ranges(index, size)]


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


def consistency_ranges(m: int, n: int) -> list[tuple[int, int]]:
    """The subtrees ``[start, end)`` whose roots make up PROOF(m, D[n]), in the proof's
    order; none when ``m`` is 0 or equal to ``n``."""
    if not 0 <= m <= n:
        raise ProofError(f"size {m} is not between 0 and {n}")
    if m in (0, n):
        return []
    ranges: list[tuple[int, int]] = []
    start, end, mm, whole = 0, n, m, True
    while True:
        size = end - start
        if mm == size:
            # SUBPROOF(m, D[m], b): nothing when m is the original old size, else MTH.
            if not whole:
                ranges.append((start, end))
            break
        k = split_point(size)
        if mm <= k:
            ranges.append((start + k, end))
            end = start + k
        else:
            ranges.append((start, start + k))
            start, mm, whole = start + k, mm - k, False
    ranges.reverse()
    return ranges


def consistency_proof(m: int, n: int, leaf_hashes: Sequence[bytes]) -> list[bytes]:
    """PROOF(m, D[n]) of RFC 9162 §2.1.4.1: the tree of ``m`` leaves is a prefix of the
    tree of ``n``. Empty when ``m`` is 0 or equal to ``n`` (nothing to prove)."""
    _check_size(n, leaf_hashes)
    return [_subtree_root(leaf_hashes, s, e) for s, e in consistency_ranges(m, n)]


def perfect_pieces(start: int, end: int) -> list[tuple[int, int]]:
    """The perfect subtrees, as ``(level, index)`` from left to right, that make up the
    subtree ``[start, end)`` of the tree — the ranges :func:`inclusion_ranges`,
    :func:`consistency_ranges` and ``(0, size)`` name, whose ``start`` is a multiple of
    a power of two at least as large as ``end - start``. Level 0 pieces are leaves."""
    if not 0 <= start < end:
        raise ProofError(f"[{start}, {end}) is not a non-empty range of leaves")
    pieces: list[tuple[int, int]] = []
    while start < end:
        level = (end - start).bit_length() - 1
        if start:
            level = min(level, (start & -start).bit_length() - 1)
        pieces.append((level, start >> level))
        start += 1 << level
    return pieces


def fold_pieces(roots: Sequence[bytes]) -> bytes:
    """The root of a subtree from the roots of its :func:`perfect_pieces`, in order.

    The left split of a subtree is its largest perfect piece, so the root is the right
    fold ``node(p1, node(p2, … node(pk-1, pk)))``.
    """
    if not roots:
        raise ProofError("a subtree has at least one piece")
    result = roots[-1]
    for piece in reversed(roots[:-1]):
        result = node_hash(piece, result)
    return result


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
        self.extend((leaf,))

    def extend(self, leaves: Iterable[bytes]) -> None:
        """Add leaf hashes in order (the hot loop of a verifier: kept free of calls)."""
        nodes = self._nodes
        size = self._size
        sha256 = hashlib.sha256
        try:
            for leaf in leaves:
                node = leaf
                carry = size
                while carry & 1:
                    node = sha256(b"\x01" + nodes.pop() + node).digest()
                    carry >>= 1
                nodes.append(node)
                size += 1
        finally:
            self._size = size  # what was appended stays appended if ``leaves`` raises

    def extend_with_nodes(self, leaves: Iterable[bytes]) -> list[tuple[int, int, bytes]]:
        """Like :meth:`extend`, and return each perfect subtree of two or more leaves the
        new leaves complete, as ``(level, index, root)`` (see :func:`perfect_pieces`)."""
        completed: list[tuple[int, int, bytes]] = []
        nodes = self._nodes
        for leaf in leaves:
            position = self._size
            node = leaf
            level = 0
            while (position >> level) & 1:
                node = node_hash(nodes.pop(), node)
                level += 1
                completed.append((level, position >> level, node))
            nodes.append(node)
            self._size = position + 1
        return completed

    def root(self) -> bytes:
        """The tree head of the leaves appended so far."""
        if not self._nodes:
            return EMPTY_ROOT
        result = self._nodes[-1]
        for node in reversed(self._nodes[:-1]):
            result = node_hash(node, result)
        return result
