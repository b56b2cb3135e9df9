"""create_optimizer, the registry, and state dicts keyed by parameter names."""

import copy
import inspect
import io

import pytest
import torch
from optim_db import NAMES, OptimizerCase, each
from torch import nn

import fastoptim


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(10, 6)
        self.body = nn.Linear(6, 8)
        self.norm = nn.LayerNorm(8)
        self.batch = nn.BatchNorm1d(8)
        self.head = nn.Linear(8, 3)
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        hidden = self.batch(self.norm(torch.relu(self.body(self.embed(tokens)))))
        return self.head(hidden) * self.scale


def train(model: nn.Module, optimizer: torch.optim.Optimizer, steps: range) -> None:
    for step in steps:
        generator = torch.Generator().manual_seed(step)
        tokens = torch.randint(0, 10, (16,), generator=generator)
        optimizer.zero_grad()
        model(tokens).square().mean().backward()
        optimizer.step()


def test_registry_lists_every_optimizer_with_its_defaults() -> None:
    registry = fastoptim.registry()
    assert list(registry) == NAMES
    for name, defaults in registry.items():
        signature = inspect.signature(getattr(fastoptim, name)).parameters
        assert defaults == {k: p.default for k, p in signature.items() if k != "params"}
    assert registry["AdamW"]["weight_decay"] == 1e-2 and registry["Adadelta"]["lr"] == 1.0


@pytest.mark.parametrize("spelling", ["adam", "ADAM", "Adam", "aDaM"])
def test_names_are_case_insensitive(spelling: str) -> None:
    optimizer = fastoptim.create_optimizer(Net(), spelling)
    assert type(optimizer) is fastoptim.Adam


@pytest.mark.parametrize("case", each())
def test_every_optimizer_by_name_trains(case: OptimizerCase) -> None:
    model = Net()
    optimizer = fastoptim.create_optimizer(model, case.name.lower(), lr=0.01)
    assert type(optimizer) is case.cls
    before = copy.deepcopy(model.state_dict())
    train(model, optimizer, range(2))
    assert not torch.equal(before["body.weight"], model.body.weight)


def test_unknown_name_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError) as error:
        fastoptim.create_optimizer(Net(), "nosuch")
    assert str(error.value) == f"unknown optimizer 'nosuch': choose from {', '.join(NAMES)}"


def test_unknown_option_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError) as error:
        fastoptim.create_optimizer(Net(), "sgd", lr=0.1, momentun=0.9)
    message = str(error.value)
    assert message.startswith("unknown option 'momentun' for SGD: choose from lr, momentum,")
    assert "state_dtype" in message


def test_no_weight_decay_on_biases_and_normalization_weights() -> None:
    model = Net()
    optimizer = fastoptim.create_optimizer(model, "AdamW", lr=0.01)
    decay = {n for g in optimizer.param_groups if g["weight_decay"] for n in g["param_names"]}
    no_decay = {
        n for g in optimizer.param_groups if not g["weight_decay"] for n in g["param_names"]
    }
    assert decay == {"embed.weight", "body.weight", "head.weight"}
    assert no_decay == {
        "body.bias",
        "norm.weight",
        "norm.bias",
        "batch.weight",
        "batch.bias",
        "head.bias",
        "scale",
    }
    assert {g["weight_decay"] for g in optimizer.param_groups} == {0.0, 1e-2}  # AdamW's default


def test_no_decay_patterns_add_to_the_rule() -> None:
    optimizer = fastoptim.create_optimizer(
        Net(), "sgd", lr=0.1, weight_decay=0.1, no_decay=["embed.*", "*bias"]
    )
    decay = {n for g in optimizer.param_groups if g["weight_decay"] for n in g["param_names"]}
    assert decay == {"body.weight", "head.weight"}
    with pytest.raises(TypeError, match="sequence of patterns"):
        fastoptim.create_optimizer(Net(), "sgd", weight_decay=0.1, no_decay="*bias")


def test_without_weight_decay_one_group() -> None:
    optimizer = fastoptim.create_optimizer(Net(), "adam", lr=0.01)  # Adam's default decay: 0
    assert len(optimizer.param_groups) == 1
    assert len(optimizer.param_groups[0]["params"]) == len(list(Net().parameters()))


def test_matches_hand_made_groups_bit_for_bit() -> None:
    model, manual_model = Net(), Net()
    made = fastoptim.create_optimizer(model, "adamw", lr=0.01, weight_decay=0.05)
    named = dict(manual_model.named_parameters())
    with_decay = ["embed.weight", "body.weight", "head.weight"]
    manual = fastoptim.AdamW(
        [
            {"params": [p for n, p in named.items() if n in with_decay], "weight_decay": 0.05},
            {"params": [p for n, p in named.items() if n not in with_decay], "weight_decay": 0.0},
        ],
        lr=0.01,
    )
    train(model, made, range(5))
    train(manual_model, manual, range(5))
    for (name, a), b in zip(
        model.state_dict().items(), manual_model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name


def test_layer_wise_lr_decay() -> None:
    optimizer = fastoptim.create_optimizer(Net(), "adamw", lr=0.1, layer_decay=0.5)
    lr_of = {n: g["lr"] for g in optimizer.param_groups for n in g["param_names"]}
    # Top-level children in order: embed, body, norm, batch, head; then the model's own.
    assert lr_of["embed.weight"] == pytest.approx(0.1 * 0.5**5)
    assert lr_of["body.weight"] == lr_of["body.bias"] == pytest.approx(0.1 * 0.5**4)
    assert lr_of["head.weight"] == pytest.approx(0.1 * 0.5)
    assert lr_of["scale"] == pytest.approx(0.1)
    torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.5, total_iters=2)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**5 * 0.5)
    for value in (0, 1.5, -0.1, "0.5"):
        with pytest.raises(ValueError, match="invalid layer_decay"):
            fastoptim.create_optimizer(Net(), "adamw", layer_decay=value)


def test_takes_pairs_and_plain_tensors() -> None:
    weight, bias = torch.zeros(3, 3, requires_grad=True), torch.zeros(3, requires_grad=True)
    by_pairs = fastoptim.create_optimizer([("w", weight), ("b", bias)], "adamw")
    assert [g["param_names"] for g in by_pairs.param_groups] == [["w"], ["b"]]
    by_tensors = fastoptim.create_optimizer([weight, bias], "adamw")
    assert [g["param_names"] for g in by_tensors.param_groups] == [["0"], ["1"]]
    frozen = Net()
    frozen.embed.weight.requires_grad_(False)
    names = fastoptim.create_optimizer(frozen, "sgd").param_groups[0]["param_names"]
    assert "embed.weight" not in names
    with pytest.raises(TypeError, match="single Tensor"):
        fastoptim.create_optimizer(weight, "sgd")
    with pytest.raises(TypeError, match="hand-made parameter groups"):
        fastoptim.create_optimizer([{"params": [weight]}], "sgd")
    with pytest.raises(ValueError, match="no trainable parameters"):
        fastoptim.create_optimizer([], "sgd")


def roundtrip(state_dict: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("case", each())
def test_named_state_dict_survives_reordering(case: OptimizerCase) -> None:
    name = case.name
    model = Net()
    optimizer = fastoptim.create_optimizer(model, name, lr=0.01, weight_decay=0.01)
    train(model, optimizer, range(3))
    saved = roundtrip(optimizer.state_dict(named=True))
    assert all(isinstance(key, str) for key in saved["state"])
    assert saved["param_groups"][0]["params"] == saved["param_groups"][0]["param_names"]
    uninterrupted = copy.deepcopy(model)
    continuing = fastoptim.create_optimizer(uninterrupted, name, lr=0.01, weight_decay=0.01)
    continuing.load_state_dict(optimizer.state_dict())
    train(uninterrupted, continuing, range(3, 6))
    # The same model, its parameters handed over in reverse order.
    resumed = copy.deepcopy(model)
    reordered = list(resumed.named_parameters())[::-1]
    optimizer = fastoptim.create_optimizer(reordered, name, lr=0.01, weight_decay=0.01)
    optimizer.load_state_dict(saved)
    train(resumed, optimizer, range(3, 6))
    for key, value in uninterrupted.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key


def test_named_state_dict_with_compact_state() -> None:
    model = nn.Linear(128, 64)
    optimizer = fastoptim.create_optimizer(model, "adam", state_dtype="int8")
    model(torch.randn(4, 128)).sum().backward()
    optimizer.step()
    saved = roundtrip(optimizer.state_dict(named=True))
    assert "exp_avg_codes" in saved["state"]["weight"]
    fresh = fastoptim.create_optimizer(
        list(model.named_parameters())[::-1], "adam", state_dtype="int8"
    )
    fresh.load_state_dict(saved)
    assert torch.equal(
        fresh.state[model.weight]["exp_avg_codes"], optimizer.state[model.weight]["exp_avg_codes"]
    )


def test_named_loading_rejects_mismatched_names_and_changes_nothing() -> None:
    model = Net()
    optimizer = fastoptim.create_optimizer(model, "adam", lr=0.01)
    train(model, optimizer, range(2))
    saved = optimizer.state_dict(named=True)
    other = nn.Sequential(nn.Linear(3, 3))
    target = fastoptim.create_optimizer(other, "adam", lr=0.02)
    before = copy.deepcopy(target.state_dict())
    with pytest.raises(ValueError) as error:
        target.load_state_dict(saved)
    message = str(error.value)
    assert "missing ['0.weight', '0.bias']" in message
    assert "unexpected ['scale', 'embed.weight', 'body.weight'" in message
    assert target.state_dict() == before and target.param_groups[0]["lr"] == 0.02


def test_named_loading_rejects_parameters_in_another_group() -> None:
    model = Net()
    saved = fastoptim.create_optimizer(model, "adamw", lr=0.01).state_dict(named=True)
    named = dict(model.named_parameters())
    swapped = fastoptim.AdamW(
        [
            {"params": [("embed.weight", named["embed.weight"])]},
            {"params": [(n, p) for n, p in named.items() if n != "embed.weight"]},
        ]
    )
    with pytest.raises(ValueError) as error:
        swapped.load_state_dict(saved)
    assert str(error.value).startswith(
        "parameter group 0 differs from the loaded named state dict's: [] only here, "
        "['body.weight', 'head.weight'] only there"
    )


def test_named_state_dict_needs_names() -> None:
    optimizer = fastoptim.Adam(Net().parameters())
    with pytest.raises(ValueError, match=r"needs parameter names: build the optimizer from"):
        optimizer.state_dict(named=True)
    assert isinstance(next(iter(optimizer.state_dict()["param_groups"][0]["params"])), int)


def test_positional_state_dicts_still_load_into_named_optimizers() -> None:
    model = Net()
    optimizer = fastoptim.create_optimizer(model, "rmsprop", lr=0.01)
    train(model, optimizer, range(2))
    other = fastoptim.create_optimizer(copy.deepcopy(model), "rmsprop", lr=0.01)
    other.load_state_dict(roundtrip(optimizer.state_dict()))
    assert other.state_dict()["state"].keys() == optimizer.state_dict()["state"].keys()


def test_only_marked_state_dicts_load_by_name() -> None:
    model = Net()
    optimizer = fastoptim.create_optimizer(model, "adam", lr=0.01)
    train(model, optimizer, range(2))
    named = optimizer.state_dict(named=True)
    assert named["keyed_by_name"] is True
    # torch.distributed.checkpoint hands over name-keyed dicts already in the optimizer's
    # order, without the marker: those load by position, as torch.optim does.
    unmarked = {k: v for k, v in named.items() if k != "keyed_by_name"}
    other = fastoptim.create_optimizer(model, "adam", lr=0.01)
    other.load_state_dict(unmarked)
    assert torch.equal(
        other.state[model.head.weight]["exp_avg"], optimizer.state[model.head.weight]["exp_avg"]
    )
    assert "keyed_by_name" not in other.state_dict()
    # By position into another order, state of the wrong shape is refused (nothing changes).
    reordered = fastoptim.create_optimizer(list(model.named_parameters())[::-1], "adam")
    with pytest.raises(ValueError, match="has shape"):
        reordered.load_state_dict(unmarked)
    assert not reordered.state
