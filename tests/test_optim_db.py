"""The test table itself: one case per catalog entry, and entries the tests can use."""

import pytest
import torch
from optim_db import NAMES, OPTIMIZER_DB, OptimizerCase, each

from fastoptim import catalog

SINGLE_OPTIONS = [
    "rich_options",
    "kernel_options",
    "kernel_complex_options",
    "tensor_lr_options",
    "sparse_refused_options",
    "ecosystem_options",
    "stateful_options",
    "compact_options",
    "digits_options",
    "distributed_options",
]
OPTION_LISTS = [
    "parity_grid",
    "complex_options",
    "differentiable_options",
    "lr_gradient_options",
    "sparse_options",
]


def test_one_case_per_catalog_entry_in_catalog_order() -> None:
    """A catalog entry without a case (or a case without an entry) fails here."""
    assert NAMES == catalog.NAMES
    assert [case.cls for case in OPTIMIZER_DB] == [entry.cls for entry in catalog.OPTIMIZERS]


@pytest.mark.parametrize("case", each())
def test_every_option_set_builds_the_optimizer(case: OptimizerCase) -> None:
    """A misspelt option in the table fails here, not as a puzzling test failure elsewhere."""
    option_sets = [getattr(case, key) for key in SINGLE_OPTIONS]
    option_sets += [options for key in OPTION_LISTS for options in getattr(case, key)]
    for options in option_sets:
        case.cls([torch.zeros(2, requires_grad=True)], **options)
    assert case.parity_grid and case.complex_options and case.differentiable_options


@pytest.mark.parametrize("case", each())
def test_errors_without_a_reference_state_theirs(case: OptimizerCase) -> None:
    """An error input compared with the reference needs one; every type error is stated."""
    for error_input in case.error_inputs:
        assert error_input.error is not None or case.reference is not None
    assert all(error_input.error is TypeError for error_input in case.type_errors)
