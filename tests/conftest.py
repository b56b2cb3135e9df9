"""Every test starts from the same torch seed, so its random data (and the stochastic
rounding stream, which is drawn from torch's seed) do not depend on which tests ran before."""

import pytest
import torch


@pytest.fixture(autouse=True)
def seeded_torch() -> None:
    torch.manual_seed(0)
