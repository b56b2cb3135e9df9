"""The optimizer lab: compare fastoptim's optimizers on real problems, find learning
rates, and write a report with plots. Uses only fastoptim's public API.

    from fastoptim import lab
    result = lab.compare("digits-mlp", ["SGD", "Adam"], lr="auto", seeds=3)
    print(result.ranking())
    finder = lab.lr_find("linear-regression", "Adam")
    lab.write_report(Path("out"), [result], [finder])
"""

from fastoptim.lab.compare import OPTIMIZERS, Comparison, Run, Standing, compare, train
from fastoptim.lab.demo import Demo, demo
from fastoptim.lab.lr_find import LRFind, lr_find
from fastoptim.lab.problems import PROBLEMS, Problem, Task, load_problem
from fastoptim.lab.report import write_report

__all__ = [
    "OPTIMIZERS",
    "PROBLEMS",
    "Comparison",
    "Demo",
    "LRFind",
    "Problem",
    "Run",
    "Standing",
    "Task",
    "compare",
    "demo",
    "load_problem",
    "lr_find",
    "train",
    "write_report",
]
