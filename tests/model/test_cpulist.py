"""The one cpulist grammar: what the kernel prints parses, everything else is refused by name."""

from __future__ import annotations

import random

import pytest

from gedge_model.cpulist import MAX_CPU_ID, CpulistError, format_cpulist, parse_cpulist


@pytest.mark.parametrize(
    ("text", "ids"),
    [
        ("", set()),
        ("  \n", set()),
        ("0", {0}),
        ("5", {5}),
        ("0-3,8,10-11", {0, 1, 2, 3, 8, 10, 11}),
        ("1,3-4\n", {1, 3, 4}),
        ("10-11,2", {2, 10, 11}),
        ("3,1,2", {1, 2, 3}),
        ("2-2", {2}),
        ("0-7:2/4", {0, 1, 4, 5}),
        ("0-7:4/4", set(range(8))),
        (f"{MAX_CPU_ID}", {MAX_CPU_ID}),
    ],
)
def test_parses_the_kernel_forms(text: str, ids: set[int]) -> None:
    assert parse_cpulist(text) == ids


@pytest.mark.parametrize(
    ("bad", "item"),
    [
        ("a", "a"),
        ("0-", "0-"),
        ("1-", "1-"),
        ("-1", "-1"),
        ("3-1", "3-1"),
        ("0-3,7-5", "7-5"),
        ("1,,2", ""),
        (",1", ""),
        ("1,", ""),
        ("1 2", "1 2"),
        ("0 - 3", "0 - 3"),
        ("0x3", "0x3"),
        ("1.5", "1.5"),
        ("+1", "+1"),
        ("1-4:1/0", "1-4:1/0"),
        ("0-7:0/4", "0-7:0/4"),
        ("0-7:5/4", "0-7:5/4"),
        ("0-7:2", "0-7:2"),
        ("0:2/4", "0:2/4"),
        ("0-99999", "0-99999"),
        (f"{MAX_CPU_ID + 1}", f"{MAX_CPU_ID + 1}"),
        ("٣", "٣"),
        ("0;1", "0;1"),
        ("0-3\n4", "0-3\n4"),
    ],
)
def test_garbage_is_refused_naming_the_list_and_the_item(bad: str, item: str) -> None:
    with pytest.raises(CpulistError) as caught:
        parse_cpulist(bad, what="annotation")
    message = str(caught.value)
    assert message.startswith("annotation: ")
    assert "is not a Linux cpu list" in message
    assert repr(item) in message


def test_the_error_says_what_was_read_before_the_bad_item() -> None:
    with pytest.raises(CpulistError, match=r"reversed range '9-8' .*\(read 0-3,5 before it\)"):
        parse_cpulist("0-3,5,9-8,12")
    with pytest.raises(CpulistError, match=r"\(read nothing before it\)"):
        parse_cpulist("x,1")


def test_a_cpulist_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="cpu list"):
        parse_cpulist("3-1")


def test_format_is_the_kernel_form() -> None:
    assert format_cpulist([8, 0, 1, 2, 3, 10]) == "0-3,8,10"
    assert format_cpulist((0, 1, 2, 3, 8, 10, 11, 51, 104, 105)) == "0-3,8,10-11,51,104-105"
    assert format_cpulist([4, 4, 4]) == "4"
    assert format_cpulist([]) == ""


def test_round_trip_over_random_sets() -> None:
    rng = random.Random(21)
    for _ in range(500):
        ids = {rng.randrange(0, 300) for _ in range(rng.randrange(0, 40))}
        text = format_cpulist(ids)
        assert parse_cpulist(text) == ids
        assert format_cpulist(parse_cpulist(text)) == text
