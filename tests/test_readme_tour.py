"""The README's tour is executable: each `$ command` runs against a live server and must print
what the README shows (cursors, keys and timestamps normalised). Docs don't rot."""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path

import pytest

from opstwin.policy.rbac import Role
from opstwin.services import Services
from tests.conftest import Keys, LiveServer

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

_VOLATILE = [
    (re.compile(r"otk_[0-9a-f]{16}_[A-Za-z0-9_-]{43}"), "<key>"),
    (re.compile(r"(?<![A-Za-z0-9_-])[A-Za-z0-9_-]{39}(?![A-Za-z0-9_-])"), "<cursor>"),
    (re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z"), "<time>"),
]


def normalise(text: str) -> list[str]:
    for pattern, replacement in _VOLATILE:
        text = pattern.sub(replacement, text)
    return [line.rstrip() for line in text.rstrip().splitlines()]


def tour_steps() -> list[tuple[str, str]]:
    """(command, expected output) for every `$ ` line of the README's console blocks."""
    steps: list[tuple[str, str]] = []
    for block in re.findall(r"```console\n(.*?)```", README.read_text(), flags=re.S):
        command: str | None = None
        output: list[str] = []
        for line in block.splitlines():
            if line.startswith("$ "):
                if command is not None:
                    steps.append((command, "\n".join(output)))
                command, output = line[2:], []
            else:
                output.append(line)
        if command is not None:
            steps.append((command, "\n".join(output)))
    return steps


def test_the_tour_has_steps() -> None:
    assert len(tour_steps()) >= 8


@pytest.mark.slow
async def test_readme_tour_prints_what_the_readme_shows(
    live_server: LiveServer, services: Services, keys: Keys
) -> None:
    settings = services.settings
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPSTWIN_")}
    env.update({role.value.upper(): keys.by_role[role].token for role in Role})
    env["OPSTWIN_DATA_DIR"] = str(settings.data_dir)
    if settings.database.url:
        env["OPSTWIN_DATABASE_URL"] = settings.database.url
    if settings.database.schema_name:
        env["OPSTWIN_DATABASE_SCHEMA_NAME"] = settings.database.schema_name
    host_port = live_server.url.removeprefix("http://")
    for command, expected in tour_steps():
        proc = await asyncio.create_subprocess_exec(
            "bash",
            "-c",
            command.replace("localhost:8000", host_port),
            cwd=ROOT,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        async with asyncio.timeout(60):
            out, _ = await proc.communicate()
        assert normalise(out.decode()) == normalise(expected), f"README step changed: $ {command}"
