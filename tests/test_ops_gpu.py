"""The new ops on CuPy against the same ops on NumPy: forward values and gradients (skipped without a GPU)."""
from __future__ import annotations

import numpy as np
import pytest

import autograd as ag
from autograd import functional as F

pytestmark = pytest.mark.gpu

rng = np.random.default_rng(0)
A = rng.standard_normal((3, 4))
B = rng.standard_normal((4, 5))
IDX = rng.integers(0, 4, size=(3, 2))
T = np.array([0, 2, -100])

CASES = {
    "gather": lambda x: x.gather(1, ag.Tensor(IDX).to(x.device)).sum(),
    "scatter_add": lambda x: x.scatter_add(1, ag.Tensor(IDX).to(x.device), x[:, :2] * 2.0),
    "sort": lambda x: x.sort(1)[0] * ag.arange(4.0).to(x.device),
    "topk": lambda x: x.topk(2, 0)[0],
    "cumsum_prod": lambda x: x.cumsum(1) + x.prod(axis=0),
    "flip_roll_tile": lambda x: x.flip(0).roll(1, 1).tile((2, 1)),
    "pad_tril": lambda x: F.pad(x, (1, 2)).tril(1),
    "einsum": lambda x: ag.einsum("ij,jk->ik", x, x.T @ x),
    "pointwise": lambda x: x.sin() + x.cos() + x.logaddexp(x * 2.0) + (x % 0.7) + ag.lerp(x, x * x, 0.3),
    "activations": lambda x: F.leaky_relu(x) + F.elu(x) + F.softplus(x) + F.logsigmoid(x) + F.mish(x)
    + F.hardswish(x),
    "losses": lambda x: F.cross_entropy(x, ag.Tensor(T).to(x.device), label_smoothing=0.1)
    + F.binary_cross_entropy_with_logits(x, (x > 0).astype(x.dtype)) + F.mse_loss(x, x * 0.5),
    "std_var": lambda x: x.std(axis=1) + x.var(axis=0, ddof=1).sum(),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_new_ops_match_numpy_on_cupy(name):
    fn = CASES[name]
    outs, grads = [], []
    for device in ("cpu", "cuda"):
        leaf = ag.Tensor(A, device=device, requires_grad=True)
        y = fn(leaf)
        y.sum().backward()
        outs.append(y.numpy())
        grads.append(leaf.grad.numpy())
        assert leaf.grad.device == leaf.device
    np.testing.assert_allclose(outs[1], outs[0], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(grads[1], grads[0], rtol=1e-10, atol=1e-12)


def test_promotion_and_creation_on_cupy():
    x = ag.Tensor(np.arange(4), device="cuda")
    assert (x + 1).dtype == np.int64 and (x * 0.5).dtype == np.float32 and (x + 1).device == x.device
    assert ag.full_like(x, 2.0).device == x.device and ag.zeros(2, device="cuda").device.startswith("cuda")
    ag.manual_seed(3)
    a = ag.randn(5, device="cuda").numpy()
    ag.manual_seed(3)
    np.testing.assert_array_equal(a, ag.randn(5).numpy())
    np.testing.assert_array_equal(F.one_hot(x).numpy(), np.eye(4, dtype=np.int64))
    assert x.argmax().item() == 3 and bool(x.any())
