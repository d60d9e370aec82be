"""The options naming a person (``--email``, ``--user-id``, ...) and the account refuse a value
that is not UTF-8 text (an argument's undecodable bytes reach Python as lone surrogates) with a
usage error naming the option, before anything is looked up."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from connector.cli.main import _register, cli

COMMANDS = [["segments", "history"], ["explain"], ["profiles", "show"], ["profiles", "export"],
            ["profiles", "delete", "--yes"]]  # fmt: skip
# b"\xed\xa0\x80" (an encoded surrogate) and b"caf\xe9" (Latin-1) as Python decodes argv
NOT_UTF8 = ["\udced\udca0\udc80", "caf\udce9"]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
@pytest.mark.parametrize("option", ["--email", "--user-id", "--anonymous-id", "--profile-id", "--account"])
@pytest.mark.parametrize("value", NOT_UTF8)
def test_a_value_that_is_not_utf8_is_a_usage_error_naming_the_option(
    command: list[str], option: str, value: str
) -> None:
    _register()
    given = {"--account": "demo", "--email": "a@example.com", option: value}
    result = CliRunner().invoke(cli, [*command, *(part for pair in given.items() for part in pair)])
    assert result.exit_code == 2, result.output
    assert not isinstance(result.exception, UnicodeError)
    assert f"Invalid value for '{option}': is not valid UTF-8 text (byte " in result.output
    assert "Traceback" not in result.output


def test_the_byte_named_is_the_first_that_cannot_be_decoded() -> None:
    _register()
    result = CliRunner().invoke(cli, ["segments", "history", "--account", "demo", "--email", "é\udced"])
    assert "(byte 3 cannot be decoded)" in result.output  # é is two bytes


@pytest.mark.parametrize("value", NOT_UTF8)
def test_predict_explain_refuses_a_profile_id_that_is_not_utf8(value: str) -> None:
    _register()
    result = CliRunner().invoke(cli, ["predict", "explain", "--account", "demo", "--profile", value])
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--profile': is not valid UTF-8 text (byte " in result.output
