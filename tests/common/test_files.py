"""Bounded YAML/JSON loading: each error names what the file is for and its path."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from gedge_common.files import (
    FileLoadError,
    load_json,
    load_yaml,
    parse_json,
    parse_yaml,
    parse_yaml_all,
    read_bounded,
)
from tests.entry_points import entry_point


def test_a_file_at_its_bound_loads_and_one_byte_more_is_refused(tmp_path: Path) -> None:
    file = tmp_path / "agent.yaml"
    file.write_text("a: 1\n" + "#" * 95)
    assert len(file.read_bytes()) == 100
    assert load_yaml(file, what="config", limit=100) == {"a": 1}
    with pytest.raises(FileLoadError, match=rf"^config {file}: larger than 99 bytes$"):
        load_yaml(file, what="config", limit=99)


def test_a_missing_file_says_so_and_is_marked_missing(tmp_path: Path) -> None:
    with pytest.raises(FileLoadError, match=r"^checkpoint .*/gone: No such file or directory$") as caught:
        read_bounded(tmp_path / "gone", what="checkpoint")
    assert caught.value.missing


def test_a_directory_is_unreadable_not_missing(tmp_path: Path) -> None:
    with pytest.raises(FileLoadError, match=rf"^{tmp_path}: Is a directory$") as caught:
        read_bounded(tmp_path)
    assert not caught.value.missing


@pytest.mark.parametrize(
    ("text", "loader", "why"),
    [
        ("a: [1\n", load_yaml, "not YAML"),
        ("{", load_json, "not JSON"),
        ("[" * 2000 + "]" * 2000, load_json, "not JSON"),
        ("NaN", load_json, "not JSON"),
    ],
)
def test_bad_content_names_the_file(tmp_path: Path, text: str, loader, why: str) -> None:
    file = tmp_path / "f"
    file.write_text(text)
    with pytest.raises(FileLoadError, match=rf"^pod file {file}: {why}"):
        loader(file, what="pod file")


def test_yaml_streams_keep_every_non_empty_document_in_order() -> None:
    assert parse_yaml_all("a: 1\n---\n---\nb: 2\n", source="x") == [{"a": 1}, {"b": 2}]


def test_text_over_its_bound_is_refused_before_parsing() -> None:
    with pytest.raises(FileLoadError, match=r"^body: larger than 3 bytes$"):
        parse_json(b"[1,2]", source="body", limit=3)
    assert parse_json(b"[1]", source="body", limit=3) == [1]


LAUGHS = (
    "data_routes: [&a [x,x,x,x,x,x,x,x,x], "
    + ", ".join(f"&{b} [{','.join(['*' + a] * 9)}]" for a, b in zip("abcdefgh", "bcdefghi", strict=True))
    + "]\n"
)


def test_aliases_that_expand_past_the_bound_are_refused_naming_the_file(tmp_path: Path) -> None:
    file = tmp_path / "agent.yaml"
    file.write_text(LAUGHS)
    assert len(LAUGHS) < 600
    with pytest.raises(FileLoadError, match=rf"^config {file}: aliases expand to \d+ nodes from \d+ written"):
        load_yaml(file, what="config")
    with pytest.raises(FileLoadError, match=r"^file: aliases expand to"):
        parse_yaml_all("a: 1\n---\n" + LAUGHS, source="file")


def test_a_few_aliases_and_merge_keys_still_load() -> None:
    text = "base: &b {cpus: 2, devices: [a, b]}\nnode1: {<<: *b, name: n1}\nnode2: *b\n"
    assert parse_yaml_all(text, source="file") == [
        {
            "base": {"cpus": 2, "devices": ["a", "b"]},
            "node1": {"cpus": 2, "devices": ["a", "b"], "name": "n1"},
            "node2": {"cpus": 2, "devices": ["a", "b"]},
        }
    ]


def test_a_recursive_anchor_is_refused() -> None:
    with pytest.raises(FileLoadError, match=r"^file: an alias refers to a node that contains it"):
        parse_yaml_all("a: &a [1, *a]\n", source="file")


@pytest.mark.parametrize("depth", [65, 100_000])
def test_nesting_past_64_levels_is_refused_naming_the_file(tmp_path: Path, depth: int) -> None:
    file = tmp_path / "agent.yaml"
    file.write_text("node_name: " + "[" * depth + "]" * depth + "\n")
    with pytest.raises(
        FileLoadError, match=rf"^config {file}: nested deeper than 64 levels \(line 1, column"
    ):
        load_yaml(file, what="config")


def test_nesting_of_64_levels_loads() -> None:
    # The document's mapping is the first level.
    assert parse_yaml_all("a: " + "[" * 63 + "]" * 63, source="file")[0]["a"] is not None


@pytest.mark.parametrize(
    ("command", "prefix"),
    [
        (["gedge-agent", "serve", "--config"], "config "),
        (["gedge-agent", "topology", "--weights"], "--weights "),
        (["gedge-flow", "lint"], ""),
    ],
)
@pytest.mark.parametrize(
    ("text", "why"),
    [
        (LAUGHS, "aliases expand to"),
        ("node_name: " + "[" * 100_000 + "]" * 100_000 + "\n", "nested deeper than 64"),
    ],
)
def test_commands_refuse_such_files_with_one_line_naming_them(
    tmp_path: Path, command: list[str], prefix: str, text: str, why: str
) -> None:
    file = tmp_path / "input.yaml"
    file.write_text(text)
    done = subprocess.run(
        [entry_point(command[0]), *command[1:], str(file)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode in (1, 2)
    assert "Traceback" not in done.stderr
    assert f"{prefix}{file}: {why}" in done.stderr + done.stdout  # lint reports its findings on stdout


@pytest.mark.parametrize(
    "text",
    ["- {node: edge-1, node: edge-2, address: '127.0.0.1:1'}\n", "a: 1\nb:\n  c: 2\n  c: 3\n"],
)
def test_a_key_written_twice_in_one_mapping_is_refused_naming_the_file(tmp_path: Path, text: str) -> None:
    path = tmp_path / "twice.yaml"
    path.write_text(text)
    with pytest.raises(FileLoadError) as caught:
        load_yaml(path, what="agents file")
    assert str(caught.value).startswith(f"agents file {path}: key ") and "is written twice" in str(
        caught.value
    )


def test_merged_keys_may_still_be_overridden_at_every_level() -> None:
    text = "a: &a {x: 1, y: 2}\nb: &b {<<: *a, x: 3}\nc: {<<: *b, x: 4, y: 5}\n"
    loaded = parse_yaml(text, source="s")
    assert loaded == {"a": {"x": 1, "y": 2}, "b": {"x": 3, "y": 2}, "c": {"x": 4, "y": 5}}
