"""The filter and prioritize replies' per-node pieces, joined block by block, against a plain dict's join."""

from __future__ import annotations

import random

import pytest

from scheduler_extender.verbs import _Pieces


@pytest.mark.parametrize("seed", range(20))
def test_pieces_join_as_a_dict_in_insertion_order_would(seed: int) -> None:
    rng = random.Random(seed)
    pieces, expected = _Pieces(), dict[str, bytes]()
    # Few names, many steps: blocks thin out by removals and get packed again along the way.
    for _ in range(3000):
        name = f"node-{rng.randint(0, 300)}"
        roll = rng.random()
        if roll < 0.5:
            piece = f'"{name}":"reason {rng.random()}"'.encode()
            pieces[name] = piece
            expected[name] = piece
        elif name in expected:
            if roll < 0.75:
                del pieces[name]
                del expected[name]
            else:
                assert pieces.pop(name) == expected.pop(name)
        else:
            assert pieces.pop(name) is None
        if rng.random() < 0.1:
            assert pieces.joined() == b",".join(expected.values())
            assert pieces.names() == list(expected)
            assert pieces.names_tuple() == tuple(expected)
    assert pieces.joined() == b",".join(expected.values())
    assert len(pieces) == len(expected)
    assert all(name in pieces and pieces[name] == piece for name, piece in expected.items())


def test_a_node_set_again_keeps_its_place() -> None:
    pieces = _Pieces()
    for i in range(200):
        pieces[f"n{i}"] = b"%d" % i
    pieces["n3"] = b"x"
    assert pieces.names() == [f"n{i}" for i in range(200)]
    assert pieces.names_tuple() == tuple(f"n{i}" for i in range(200))
    assert pieces.joined().split(b",")[3] == b"x"
    assert _Pieces().joined() == b""
