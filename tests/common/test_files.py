"""Bounded YAML/JSON loading: each error names what the file is for and its path."""

from __future__ import annotations

from pathlib import Path

import pytest

from gedge_common.files import (
    FileLoadError,
    load_json,
    load_yaml,
    parse_json,
    parse_yaml_all,
    read_bounded,
)


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
