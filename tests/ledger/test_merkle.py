"""The RFC 6962 / RFC 9162 Merkle tree, checked three ways: the published RFC 6962 test
vectors, a second implementation written straight from the RFC's recursive definitions
(below), and brute force over every proof of every tree up to 64 leaves, where every
proof must verify and any flipped bit must make it fail."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import pytest

from forgehall.ledger.merkle import (
    EMPTY_ROOT,
    MerkleFrontier,
    ProofError,
    consistency_proof,
    consistency_ranges,
    fold_pieces,
    inclusion_proof,
    inclusion_ranges,
    leaf_hash,
    node_hash,
    perfect_pieces,
    root,
    verify_consistency,
    verify_inclusion,
)

# The leaves of the certificate-transparency RFC 6962 test vectors, and their roots.
RFC6962_LEAVES = [
    b"",
    b"\x00",
    b"\x10",
    b"\x20\x21",
    b"\x30\x31",
    b"\x40\x41\x42\x43",
    bytes(range(0x50, 0x58)),
    bytes(range(0x60, 0x70)),
]
RFC6962_ROOTS = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
MAX_SIZE = 64


# --- the RFC's definitions, transcribed as plainly as possible -------------------------


def sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def k_of(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def mth(d: Sequence[bytes]) -> bytes:
    """MTH(D[n]) over leaf *data*."""
    if not d:
        return sha(b"")
    if len(d) == 1:
        return sha(b"\x00" + d[0])
    k = k_of(len(d))
    return sha(b"\x01" + mth(d[:k]) + mth(d[k:]))


def path(m: int, d: Sequence[bytes]) -> list[bytes]:
    """PATH(m, D[n])."""
    if len(d) == 1:
        return []
    k = k_of(len(d))
    if m < k:
        return [*path(m, d[:k]), mth(d[k:])]
    return [*path(m - k, d[k:]), mth(d[:k])]


def subproof(m: int, d: Sequence[bytes], b: bool) -> list[bytes]:
    """SUBPROOF(m, D[n], b)."""
    n = len(d)
    if m == n:
        return [] if b else [mth(d)]
    k = k_of(n)
    if m <= k:
        return [*subproof(m, d[:k], b), mth(d[k:])]
    return [*subproof(m - k, d[k:], False), mth(d[:k])]


def mth_of_hashes(hashes: Sequence[bytes]) -> bytes:
    """MTH from leaf hashes (the same recursion, one step shorter)."""
    if not hashes:
        return sha(b"")
    if len(hashes) == 1:
        return hashes[0]
    k = k_of(len(hashes))
    return sha(b"\x01" + mth_of_hashes(hashes[:k]) + mth_of_hashes(hashes[k:]))


# --------------------------------------------------------------------------------------

DATA = [f"leaf {i}".encode() for i in range(MAX_SIZE)]
HASHES = [leaf_hash(d) for d in DATA]
ROOTS = [mth(DATA[:n]) for n in range(MAX_SIZE + 1)]


def flipped(data: bytes) -> list[bytes]:
    """``data`` with one bit flipped, once per byte (a different bit each time)."""
    out = []
    for position in range(len(data)):
        changed = bytearray(data)
        changed[position] ^= 1 << (position % 8)
        out.append(bytes(changed))
    return out


def test_rfc6962_vectors() -> None:
    hashes = [leaf_hash(leaf) for leaf in RFC6962_LEAVES]
    for n, expected in enumerate(RFC6962_ROOTS):
        assert root(hashes[:n]).hex() == expected
        assert mth(RFC6962_LEAVES[:n]).hex() == expected
    assert EMPTY_ROOT.hex() == RFC6962_ROOTS[0]
    assert leaf_hash(b"") == sha(b"\x00")
    assert node_hash(b"l", b"r") == sha(b"\x01lr")


def test_every_inclusion_proof_up_to_64_leaves() -> None:
    for size in range(1, MAX_SIZE + 1):
        tree_root = ROOTS[size]
        assert root(HASHES[:size]) == tree_root
        for index in range(size):
            proof = inclusion_proof(index, size, HASHES)
            assert proof == path(index, DATA[:size]), (index, size)
            leaf = HASHES[index]
            assert verify_inclusion(index, size, leaf, proof, tree_root)
            for bad in flipped(leaf):
                assert not verify_inclusion(index, size, bad, proof, tree_root)
            for bad in flipped(tree_root):
                assert not verify_inclusion(index, size, leaf, proof, bad)
            for position, element in enumerate(proof):
                for bad in flipped(element):
                    changed = [*proof[:position], bad, *proof[position + 1 :]]
                    assert not verify_inclusion(index, size, leaf, changed, tree_root)
            if proof:
                assert not verify_inclusion(index, size, leaf, proof[:-1], tree_root)
            assert not verify_inclusion(index, size, leaf, [*proof, leaf], tree_root)
            for other in range(size):
                if other != index:
                    assert not verify_inclusion(other, size, leaf, proof, tree_root)
            assert not verify_inclusion(size, size, leaf, proof, tree_root)


def test_every_consistency_proof_up_to_64_leaves() -> None:
    for new in range(1, MAX_SIZE + 1):
        new_root = ROOTS[new]
        for old in range(0, new + 1):
            old_root = ROOTS[old]
            proof = consistency_proof(old, new, HASHES)
            if 0 < old < new:
                assert proof == subproof(old, DATA[:new], True), (old, new)
            else:
                assert proof == []
            assert verify_consistency(old, new, old_root, new_root, proof)
            if old == 0:
                continue  # the empty tree is a prefix of every tree: nothing to tamper with
            for bad in flipped(old_root):
                assert not verify_consistency(old, new, bad, new_root, proof)
            for bad in flipped(new_root):
                assert not verify_consistency(old, new, old_root, bad, proof)
            for position, element in enumerate(proof):
                for bad in flipped(element):
                    changed = [*proof[:position], bad, *proof[position + 1 :]]
                    assert not verify_consistency(old, new, old_root, new_root, changed)
            if proof:
                assert not verify_consistency(old, new, old_root, new_root, proof[:-1])
            assert not verify_consistency(old, new, old_root, new_root, [*proof, old_root])
            if old < new:
                # a different old tree (one leaf more or less) is not what the proof shows
                assert not verify_consistency(old, new, ROOTS[old - 1], new_root, proof)


def test_consistency_between_unrelated_trees_fails() -> None:
    other = [leaf_hash(f"other {i}".encode()) for i in range(8)]
    proof = consistency_proof(3, 8, HASHES)
    assert not verify_consistency(3, 8, root(other[:3]), ROOTS[8], proof)
    assert not verify_consistency(5, 3, ROOTS[5], ROOTS[3], [])


def test_bad_proof_arguments_are_errors() -> None:
    with pytest.raises(ProofError):
        inclusion_proof(4, 4, HASHES)
    with pytest.raises(ProofError):
        inclusion_proof(0, MAX_SIZE + 1, HASHES)
    with pytest.raises(ProofError):
        consistency_proof(5, 4, HASHES)
    assert not verify_inclusion(0, 0, HASHES[0], [], EMPTY_ROOT)


def test_frontier_matches_the_tree_at_every_size_and_resumes_from_its_state() -> None:
    frontier = MerkleFrontier()
    assert frontier.root() == EMPTY_ROOT
    hashes = [leaf_hash(str(i).encode()) for i in range(300)]
    for size, leaf in enumerate(hashes, start=1):
        frontier.append(leaf)
        assert frontier.size == size
        assert len(frontier.nodes) == size.bit_count()  # O(log n) state
        assert frontier.root() == mth([str(i).encode() for i in range(size)])
        if size == 150:
            resumed = MerkleFrontier(frontier.size, frontier.nodes)
    resumed.extend(hashes[150:])
    assert resumed.root() == frontier.root()


def test_frontier_on_a_larger_tree() -> None:
    size = (1 << 17) + 5
    hashes = [leaf_hash(i.to_bytes(4, "big")) for i in range(size)]
    frontier = MerkleFrontier()
    frontier.extend(hashes)
    assert len(frontier.nodes) == 3
    assert frontier.root() == mth_of_hashes(hashes)


def test_a_frontier_refuses_an_impossible_state() -> None:
    with pytest.raises(ProofError, match="size 3 has 2 nodes"):
        MerkleFrontier(3, [HASHES[0]])
    with pytest.raises(ProofError, match="32-byte"):
        MerkleFrontier(1, [b"short"])


def test_proofs_from_stored_perfect_subtrees_equal_proofs_from_the_leaves() -> None:
    """What the server does: keep the perfect subtrees a frontier completes, batch after
    batch, and answer any proof from O(log n) of them."""
    store: dict[tuple[int, int], bytes] = {(0, i): h for i, h in enumerate(HASHES)}
    frontier = MerkleFrontier()
    for batch in (HASHES[0:1], HASHES[1:7], HASHES[7:8], HASHES[8:33], HASHES[33:]):
        for level, index, node in frontier.extend_with_nodes(batch):
            assert (level, index) not in store, "a perfect subtree is completed once"
            store[(level, index)] = node
    assert frontier.root() == ROOTS[MAX_SIZE]
    # Every perfect subtree of 2+ leaves inside the 64 leaves was handed back.
    assert len(store) == 2 * MAX_SIZE - 1

    def subtree(start: int, end: int) -> bytes:
        return fold_pieces([store[piece] for piece in perfect_pieces(start, end)])

    for size in range(1, MAX_SIZE + 1):
        assert subtree(0, size) == ROOTS[size]
        for index in range(size):
            proof = [subtree(s, e) for s, e in inclusion_ranges(index, size)]
            assert proof == inclusion_proof(index, size, HASHES)
        for old in range(size + 1):
            proof = [subtree(s, e) for s, e in consistency_ranges(old, size)]
            assert proof == consistency_proof(old, size, HASHES)


def test_perfect_pieces_are_the_binary_digits_of_an_aligned_range() -> None:
    assert perfect_pieces(0, 13) == [(3, 0), (2, 2), (0, 12)]
    assert perfect_pieces(8, 11) == [(1, 4), (0, 10)]
    assert perfect_pieces(5, 6) == [(0, 5)]
    with pytest.raises(ProofError):
        perfect_pieces(3, 3)
    with pytest.raises(ProofError):
        fold_pieces([])
    with pytest.raises(ProofError):
        inclusion_ranges(3, 3)
    with pytest.raises(ProofError):
        consistency_ranges(4, 3)


def test_a_frontier_extended_from_a_failing_iterator_keeps_what_it_appended() -> None:
    def leaves():  # type: ignore[no-untyped-def]
        yield from HASHES[:5]
        raise RuntimeError("reader broke")

    frontier = MerkleFrontier()
    with pytest.raises(RuntimeError):
        frontier.extend(leaves())
    assert frontier.size == 5
    assert frontier.root() == ROOTS[5]
