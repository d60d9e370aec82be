"""A file that is not UTF-8 is refused with the byte and where it is, by every command that reads
an account or rules file: never a traceback."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from connector.cli.main import _register, cli

NOT_UTF8 = b"account: zz\n\xff\xfe: 1\n"
REASON = "not UTF-8: byte 0xff at offset 12; save the file as UTF-8"


def test_config_validate_names_the_file_and_the_byte(tmp_path: Path) -> None:
    _register()
    (tmp_path / "zz.yaml").write_bytes(NOT_UTF8)
    result = CliRunner().invoke(cli, ["config", "validate", str(tmp_path)])
    assert result.exit_code == 1
    assert f"{tmp_path / 'zz.yaml'}: {REASON}" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_rules_validate_names_the_file_and_the_byte(tmp_path: Path) -> None:
    _register()
    path = tmp_path / "rules.yaml"
    path.write_bytes(NOT_UTF8)
    result = CliRunner().invoke(cli, ["rules", "validate", str(path)])
    assert result.exit_code == 1
    assert f"{path}: {REASON}" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
