"""Docs that must track the code: every setting is in the configuration table."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from opstwin.config import Settings

ROOT = Path(__file__).resolve().parents[1]


def _env_names(model: type[BaseModel], prefix: str) -> list[str]:
    names: list[str] = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            names.extend(_env_names(annotation, f"{prefix}{name.upper()}_"))
        else:
            names.append(f"{prefix}{name.upper()}")
    return names


def test_every_setting_is_documented() -> None:
    operations = (ROOT / "docs" / "operations.md").read_text()
    missing = [name for name in _env_names(Settings, "OPSTWIN_") if f"`{name}`" not in operations]
    assert not missing, f"add to docs/operations.md: {missing}"


def test_every_doc_the_readme_links_exists() -> None:
    readme = (ROOT / "README.md").read_text()
    for doc in ("concepts", "api", "operations", "benchmarks"):
        assert f"docs/{doc}.md" in readme
        assert (ROOT / "docs" / f"{doc}.md").exists()


def test_the_readme_configuration_table_is_the_operations_table() -> None:
    def rows(path: Path) -> list[str]:
        return [line for line in path.read_text().splitlines() if line.startswith("| `OPSTWIN_")]

    readme = rows(ROOT / "README.md")
    assert readme, "README.md lost its configuration table"
    assert readme == rows(ROOT / "docs" / "operations.md"), (
        "README.md's configuration table differs from docs/operations.md: copy the rows over"
    )
