"""The README's quick start runs as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_quick_start_runs(capsys) -> None:
    quick_start = README.read_text().split("## Quick start", 1)[1]
    code = re.search(r"```python\n(.*?)```", quick_start, re.DOTALL).group(1)
    assert "import fastoptim as optim" in code
    exec(compile(code, "README quick start", "exec"), {})
    assert capsys.readouterr().out.count("learned A = ") == 10


def python_blocks(section: str) -> list[str]:
    text = README.read_text().split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", text, re.DOTALL)


def test_lab_examples_run_as_written(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    own_problem, notebook = python_blocks("The optimizer lab")
    namespace: dict = {}
    exec(compile(own_problem, "README lab problem", "exec"), namespace)
    from fastoptim import lab

    result = lab.compare(namespace["bowl"], ["Adam"], lr=0.1)
    assert result.runs[0].steps_to_target is not None
    namespace = {}
    exec(compile(notebook, "README lab notebook", "exec"), namespace)
    assert namespace["result"].ranking() == ["Adam", "SGD"]  # as the README's comment says
    assert (tmp_path / "out" / "report.html").is_file()


def test_readme_images_exist() -> None:
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", README.read_text())
    assert images
    for image in images:
        assert (README.parent / image).is_file(), image


def test_optimizer_table_lists_the_catalog() -> None:
    from fastoptim import catalog

    section = README.read_text().split("## The optimizers", 1)[1].split("\n#", 1)[0]
    listed = re.findall(r"^\| `(\w+)\(params", section, re.MULTILINE)
    assert listed == catalog.NAMES
