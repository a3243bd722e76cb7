"""NVIDIA driver versions: parsing, ordering and the integer code node affinities compare."""

from __future__ import annotations

import pytest

from gedge_model.driver import DriverVersion, DriverVersionError, driver_code, parse_driver_version


def test_versions_parse_into_parts():
    assert parse_driver_version(" 535.54.03 ") == DriverVersion(535, 54, 3)
    assert parse_driver_version("550.54") == DriverVersion(550, 54, 0)


def test_order_and_code_agree():
    texts = ["470.57.02", "535.54.03", "535.104.05", "550.54", "550.54.14"]
    versions = [parse_driver_version(t) for t in texts]
    assert sorted(versions) == versions
    assert sorted(driver_code(t) for t in texts) == [v.code for v in versions]
    assert driver_code("535.104.05") > driver_code("535.54.03")


@pytest.mark.parametrize("text", ["", "535", "v535.54.03", "535.54.03.1", "535.5400", None, 535.54])
def test_other_text_is_refused_with_the_text_quoted(text):
    with pytest.raises(DriverVersionError, match="is not an NVIDIA driver version"):
        parse_driver_version(text)
