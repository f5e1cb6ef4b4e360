"""Train a small network with nothing but the engine: micrograd's demo (two moons, a 2-16-16-1 MLP, a max-margin
loss, plain gradient descent), written with autograd Tensors.

    python examples/02_train_an_mlp.py

The data: 100 points in two interleaving half circles (the "moons"), labels -1 and +1, generated here with NumPy
(micrograd takes them from scikit-learn's make_moons; these are the same curves and noise). The model: three
weight matrices and three bias vectors, ReLU between layers. The loss: the mean of relu(1 - y * score) (a support
vector machine's hinge) plus a little L2 regularisation. Each step is the whole training loop in four lines:
forward, backward, update every parameter against its gradient, and zero the gradients.

What to expect: the loss falls from about 1.8 to about 0.01 and the accuracy climbs from 50% to 100% in 100 steps
(well under a second); the decision boundary is drawn in the terminal at the end.
"""
from __future__ import annotations

import numpy as np

from course import FAST, done, lesson, section

import autograd as ag

lesson("Lesson 02: train an MLP with the engine (micrograd's demo)",
       "a training loop: forward, loss, backward, gradient step, zero the gradients; watch the accuracy rise",
       "loss ~1.8 -> ~0.01, accuracy 50% -> 100% in 100 steps; an ASCII picture of the learned boundary")


def make_moons(n: int, noise: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two interleaving half circles, n points in all; labels -1 (upper moon) and +1 (lower moon)."""
    a = rng.uniform(0, np.pi, n // 2)
    b = rng.uniform(0, np.pi, n - n // 2)
    upper = np.stack([np.cos(a), np.sin(a)], axis=1)
    lower = np.stack([1 - np.cos(b), 0.5 - np.sin(b)], axis=1)
    X = np.concatenate([upper, lower]) + rng.normal(0, noise, (n, 2))
    y = np.concatenate([-np.ones(n // 2), np.ones(n - n // 2)])
    return X, y


rng = np.random.default_rng(1337)
X, y = make_moons(100, 0.1, rng)
sizes = [2, 16, 16, 1]
params = []
for fan_in, fan_out in zip(sizes, sizes[1:]):                    # micrograd's init: uniform(-1, 1)
    params.append(ag.Tensor(rng.uniform(-1, 1, (fan_in, fan_out)), requires_grad=True))
    params.append(ag.Tensor(np.zeros(fan_out), requires_grad=True))
print(f"{len(X)} points, {sum(p.size for p in params)} parameters in a {'-'.join(map(str, sizes))} MLP")


def model(x: ag.Tensor) -> ag.Tensor:
    """(N, 2) -> (N,) scores: Linear -> ReLU -> Linear -> ReLU -> Linear."""
    h = x
    for i in range(0, len(params), 2):
        h = h @ params[i] + params[i + 1]
        if i < len(params) - 2:
            h = h.relu()
    return h.reshape(-1)


def loss_and_accuracy(Xb: np.ndarray, yb: np.ndarray) -> tuple[ag.Tensor, float]:
    scores = model(ag.Tensor(Xb))
    margins = (1.0 - ag.Tensor(yb) * scores).relu()                # hinge: zero once a point is 1 past the line
    data_loss = margins.mean()
    reg_loss = 1e-4 * sum((p * p).sum() for p in params)           # L2 on every parameter, as micrograd
    accuracy = float(((scores.numpy() > 0) == (yb > 0)).mean())
    return data_loss + reg_loss, accuracy


section("training: full batch, learning rate 1.0 decaying to 0.1")
steps = 100
for k in range(steps):
    loss, acc = loss_and_accuracy(X, y)
    loss.backward()
    lr = 1.0 - 0.9 * k / steps
    for p in params:                                               # gradient descent, by hand
        p.data -= lr * p.grad.data
        p.grad = None                                              # zero the gradient for the next step
    if k % 10 == 0 or k == steps - 1:
        print(f"step {k:3d}  loss {loss.item():.4f}  accuracy {acc:.0%}")
final_loss, final_acc = loss_and_accuracy(X, y)
print(f"final loss {final_loss.item():.4f}, accuracy {final_acc:.0%}")

section("the decision boundary (+ and - are the model's regions, o and x the training points)")
width, height = (36, 12) if FAST else (60, 20)
xs, ys = np.linspace(-1.5, 2.5, width), np.linspace(1.3, -0.9, height)
grid = np.array([[gx, gy] for gy in ys for gx in xs])
with ag.no_grad():
    region = model(ag.Tensor(grid)).numpy().reshape(height, width) > 0
canvas = [["+" if region[r, c] else "-" for c in range(width)] for r in range(height)]
for (px, py), label in zip(X, y):
    c = int(round((px - xs[0]) / (xs[-1] - xs[0]) * (width - 1)))
    r = int(round((py - ys[0]) / (ys[-1] - ys[0]) * (height - 1)))
    if 0 <= r < height and 0 <= c < width:
        canvas[r][c] = "x" if label > 0 else "o"
print("\n".join("  " + "".join(row) for row in canvas))
done(f"final accuracy {final_acc:.0%} (micrograd's demo reaches 100%)")
