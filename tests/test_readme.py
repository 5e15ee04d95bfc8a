"""README.md: its first two commands are the ones that work (CI runs the test command verbatim), its
contents links resolve, and its CLI section names every command."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _ci_test_command() -> str:
    lines = (ROOT / ".ci" / "run").read_text().splitlines()
    marker = lines.index("# README test command (keep identical to README.md):")
    return lines[marker + 1].strip()


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    command = _ci_test_command()
    assert "pytest" in command
    assert command in readme.splitlines()


def test_readme_first_command_runs_the_demo() -> None:
    readme = (ROOT / "README.md").read_text()
    blocks = readme.split("```sh\n")[1:]
    first, second = blocks[0].split("```")[0].strip(), blocks[1].split("```")[0].strip()
    assert first.endswith("pyxp demo")
    assert second == _ci_test_command()


def _github_anchor(heading: str) -> str:
    anchor = "".join(c for c in heading.strip().lower() if c.isalnum() or c in " -_")
    return anchor.replace(" ", "-")


def test_readme_contents_links_point_at_headings() -> None:
    readme = (ROOT / "README.md").read_text()
    anchors = {_github_anchor(line.lstrip("#")) for line in readme.splitlines() if line.startswith("## ")}
    contents = next(i for i, line in enumerate(readme.splitlines()) if line.startswith("Contents:"))
    links = re.findall(r"\]\(#([^)]+)\)", " ".join(readme.splitlines()[contents:contents + 8]))
    assert "from-other-languages" in links
    assert [link for link in links if link not in anchors] == []


def test_readme_cli_section_names_every_command_and_option() -> None:
    """The CLI synopsis lists each command (and sub-command) that `pyxp --help` lists."""
    from click.testing import CliRunner

    from pyxp.cli import cli

    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("\n## CLI"):]
    synopsis = section.split("```")[1]
    for name, command in cli.commands.items():
        assert f"pyxp {name}" in synopsis or f"| {name}" in synopsis, name
        for sub in getattr(command, "commands", {}):
            assert re.search(rf"\b{re.escape(sub)}\b", synopsis), f"{name} {sub}"
    for option in ("--max-rows", "--offset-rows", "--before-id", "--keep"):
        assert option in synopsis, option
    assert "_PYXP_COMPLETE=bash_source pyxp" in section
    help_text = CliRunner().invoke(cli, ["--help"]).output
    assert "bench" in help_text and "pyxp bench" in synopsis
