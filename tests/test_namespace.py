"""``import fastoptim as optim`` runs a torch.optim script: torch's own Optimizer, lr_scheduler
and swa_utils, fastoptim's optimizers from the one catalog, and a clear error for the rest."""

import pytest
import torch

import fastoptim
import fastoptim as optim
from fastoptim import catalog


def test_torch_namespaces_are_torchs_own() -> None:
    assert optim.Optimizer is torch.optim.Optimizer
    assert optim.lr_scheduler is torch.optim.lr_scheduler
    assert optim.swa_utils is torch.optim.swa_utils


def test_a_torch_optim_script_runs_unchanged() -> None:
    model = torch.nn.Linear(3, 1)
    optimizer = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    averaged = optim.swa_utils.AveragedModel(model)
    for _ in range(4):
        optimizer.zero_grad()
        model(torch.ones(2, 3)).sum().backward()
        optimizer.step()
        scheduler.step()
        averaged.update_parameters(model)
    assert isinstance(optimizer, optim.Optimizer)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.025)


def test_every_catalog_entry_is_exported() -> None:
    for entry in catalog.OPTIMIZERS:
        assert getattr(fastoptim, entry.name) is entry.cls
        assert entry.name in fastoptim.__all__
        assert entry.torch_cls is None or entry.torch_cls.__name__ == entry.name
    assert list(fastoptim.registry()) == catalog.NAMES


def test_an_optimizer_fastoptim_lacks_names_torchs() -> None:
    missing = next(
        name
        for name in dir(torch.optim)
        if isinstance(getattr(torch.optim, name), type)
        and issubclass(getattr(torch.optim, name), torch.optim.Optimizer)
        and name != "Optimizer"
        and name not in catalog.NAMES
    )
    with pytest.raises(AttributeError, match=f"fastoptim has no {missing} yet: use torch.optim"):
        getattr(fastoptim, missing)
    with pytest.raises(AttributeError, match="has no attribute 'nothing'"):
        fastoptim.nothing  # noqa: B018


def test_catalog_lookup_is_case_insensitive_and_lists_names() -> None:
    assert catalog.info("adamw").cls is fastoptim.AdamW
    with pytest.raises(ValueError, match="unknown optimizer 'nosuch': choose from SGD, Adam"):
        catalog.info("nosuch")


@pytest.mark.parametrize("fused", [None, False])
def test_sgd_without_momentum_keeps_no_state_entries(fused: bool | None) -> None:
    params = [torch.ones(3, requires_grad=True), torch.ones(2, 2, requires_grad=True)]
    ours = fastoptim.SGD(params, lr=0.1, fused=fused)
    theirs = torch.optim.SGD([p.detach().clone().requires_grad_() for p in params], lr=0.1)
    for optimizer in (ours, theirs):
        for param in optimizer.param_groups[0]["params"]:
            param.grad = torch.ones_like(param)
        optimizer.step()
    assert len(ours.state) == 0
    assert ours.state_dict()["state"] == theirs.state_dict()["state"] == {}
