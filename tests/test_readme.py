"""README.md's two commands are the ones that work: CI runs the test command verbatim."""

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
