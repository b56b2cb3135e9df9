"""The seed tutorial's seven linear-regression examples, with fastoptim in place of torch.optim.

Each example fits ``t = A * x + b + noise`` with ``nn.Linear(1, 1)`` and one optimizer at
lr 0.05 for 10 iterations, printing the learned A and b after each iteration as the tutorial
does. Runs are seeded, so a seed gives the same numbers every time.

Run it as ``fastoptim tutorial [--seed N]`` or ``python examples/tutorial.py [--seed N]``.
"""

import sys

import torch
from torch import nn

import fastoptim as optim

N = 100  # number of data points
ERROR = 0.1  # standard deviation of the noise on the targets
LR = 0.05
NITER = 10

# The tutorial's examples, in its order: (optimizer, true A, true b).
EXAMPLES = [
    ("SGD", 5.1213945, 3.2047893),
    ("Adam", 2.4785692, 7.3256987),
    ("Adagrad", 9.2478, 6.7325),
    ("Adadelta", 5.5692478, 4.6987325),
    ("AdamW", 4.785237, 9.136489),
    ("Adamax", 6.5692478, 3.6987325),
    ("RMSprop", 2.1234567, 7.5625896),
]


def train(name: str, true_a: float, true_b: float, seed: int) -> list[tuple[float, float]]:
    """Fit the tutorial's noisy line with optimizer ``name``; the learned (A, b) per iteration."""
    torch.manual_seed(seed)
    x = torch.randn(N, 1)
    t = true_a * x + true_b + torch.randn(N, 1) * ERROR
    model = nn.Linear(1, 1)
    optimizer = getattr(optim, name)(model.parameters(), lr=LR)
    loss_fn = nn.MSELoss()
    learned = []
    for _ in range(NITER):
        optimizer.zero_grad()
        loss = loss_fn(model(x), t)
        loss.backward()
        optimizer.step()
        learned.append((model.weight[0, 0].item(), model.bias[0].item()))
    return learned


def run(seed: int) -> None:
    """Print every example's learned A and b after each iteration."""
    for name, true_a, true_b in EXAMPLES:
        print(f"=== {name}: learning A = {true_a}, b = {true_b} (lr {LR}, {NITER} iterations)")
        for learned_a, learned_b in train(name, true_a, true_b, seed):
            print("-" * 10)
            print(f"learned A = {learned_a}")
            print(f"learned b = {learned_b}")


if __name__ == "__main__":
    from fastoptim.cli import main

    sys.exit(main(["tutorial", *sys.argv[1:]]))
