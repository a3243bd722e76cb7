import os
from pathlib import Path

from agent.discovery.sysfs import SysfsTree, parse_cpumask


def test_cpumask_words_are_most_significant_first() -> None:
    assert parse_cpumask("00000001,00000003") == (0, 1, 32)
    assert parse_cpumask("0") == ()


def test_absolute_symlinks_resolve_inside_the_root(tmp_path: Path) -> None:
    (tmp_path / "sys/devices/x").mkdir(parents=True)
    (tmp_path / "sys/class").mkdir(parents=True)
    os.symlink("/sys/devices/x", tmp_path / "sys/class/abs")
    os.symlink("../../../../../../sys/devices/x", tmp_path / "sys/class/up")
    fs = SysfsTree(tmp_path)
    assert fs.resolve("sys/class/abs") == "sys/devices/x"
    assert fs.resolve("sys/class/up") == "sys/devices/x"
    assert fs.warnings == []


def test_symlink_loop_is_a_warning_naming_the_path(tmp_path: Path) -> None:
    (tmp_path / "sys").mkdir()
    os.symlink("b", tmp_path / "sys/a")
    os.symlink("a", tmp_path / "sys/b")
    fs = SysfsTree(tmp_path)
    assert fs.resolve("sys/a/class") is None
    assert fs.read("sys/a") is None
    assert any(w.startswith("/sys/a") and "symlink loop" in w for w in fs.warnings)


def test_unreadable_and_missing_files(tmp_path: Path) -> None:
    (tmp_path / "dir_not_file").mkdir()
    (tmp_path / "nul").write_bytes(b"0-3\n\x00")
    (tmp_path / "word").write_text("many\n")
    fs = SysfsTree(tmp_path)
    assert fs.read("missing") is None and fs.warnings == []
    assert fs.read("missing", required=True) is None
    assert fs.read("dir_not_file") is None
    assert fs.read_cpulist("nul") == (0, 1, 2, 3)
    assert fs.read_int("word") is None
    assert fs.warnings == [
        "/missing: missing",
        f"/dir_not_file: unreadable ({os.strerror(21)})",
        "/word: not a number: 'many'",
    ]


def test_a_fifo_where_an_attribute_should_be_does_not_block(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "numa_node")
    fs = SysfsTree(tmp_path)
    assert fs.read_int("numa_node") is None
    assert fs.warnings == ["/numa_node: not a number: ''"]
