"""Write a new differentiable op, then prove its backward right with a gradient check.

    python examples/03_write_an_op.py

An op is a ``Function`` with two methods: ``forward(self, *arrays)`` computes on NumPy (or CuPy) arrays, and
``backward(self, *grads)`` receives the gradient arriving at the output (a Tensor) and returns one gradient per
input, written with Tensor ops (so the gradient itself can be differentiated again). The class attribute ``rule``
is the local derivative the step-through trace prints.

The op here is softplus(x) = log(1 + exp(x)), a smooth ReLU, whose derivative is the sigmoid. ``ag.gradcheck``
compares the backward with float64 central differences, (f(x + eps) - f(x - eps)) / (2 eps), element by element;
``ag.gradgradcheck`` does the same one order higher. Then a classic mistake (forgetting the chain rule's factor
``g``) is caught with a report of the worst element.

What to expect: a table where analytic and numerical derivatives agree to ~1e-10, "gradcheck passed" and
"gradgradcheck passed", and the buggy op rejected with GradcheckError.
"""
from __future__ import annotations

import numpy as np

from course import done, lesson, section

import autograd as ag

lesson("Lesson 03: write an op and gradcheck it",
       "the Function contract (forward on arrays, backward on Tensors, a `rule`), central differences, gradcheck",
       "analytic = numerical to ~1e-10; gradcheck and gradgradcheck pass; a wrong backward is caught")


class Softplus(ag.Function):
    """y = log(1 + exp(x)), computed without overflow."""
    rule = "d softplus(x)/dx = sigmoid(x) = 1 / (1 + exp(-x))"

    def forward(self, x):
        return np.logaddexp(0.0, x)                   # log(exp(0) + exp(x)), stable for large |x|

    def backward(self, g):
        (x,) = self.inputs                            # the input Tensor: differentiable again
        return g * x.sigmoid()


class BuggySoftplus(Softplus):
    """The same forward; backward forgets to multiply by the gradient arriving at the output."""

    def backward(self, g):
        (x,) = self.inputs
        return x.sigmoid()


def softplus(x: ag.Tensor) -> ag.Tensor:
    return Softplus.apply(x)


section("the op on a few numbers, and its trace")
x = ag.Tensor(np.array([-3.0, -0.5, 0.0, 0.5, 3.0]), requires_grad=True, name="x")
y = softplus(x)
y.name = "y"
loss = (y * y).sum()                                  # something to differentiate: d loss/dy = 2 y
print("x          =", x.numpy())
print("softplus(x)=", np.round(y.numpy(), 4))
steps = list(ag.trace.backward_steps(loss))
print(steps[-1])                                      # the Softplus step: its rule, what x receives

section("by hand: central differences against backward")
eps = 1e-6
f = lambda v: float((np.logaddexp(0.0, v) ** 2).sum())   # noqa: E731  the same loss in plain NumPy
print(f"{'x':>6} {'analytic':>14} {'numerical':>14} {'|difference|':>14}")
worst = 0.0
for i in range(x.size):
    e = np.zeros(x.size)
    e[i] = eps
    numerical = (f(x.numpy() + e) - f(x.numpy() - e)) / (2 * eps)
    analytic = x.grad.numpy()[i]
    worst = max(worst, abs(analytic - numerical))
    print(f"{x.numpy()[i]:6.2f} {analytic:14.10f} {numerical:14.10f} {abs(analytic - numerical):14.2e}")
print(f"largest difference by hand: {worst:.1e}")

section("ag.gradcheck: the same test, on random inputs of any shape")
rng = np.random.default_rng(0)
xs = rng.standard_normal((3, 4))
print("gradcheck passed" if ag.gradcheck(softplus, [xs]) else "gradcheck FAILED")
print("gradgradcheck passed" if ag.gradgradcheck(softplus, [xs]) else "gradgradcheck FAILED")

section("a wrong backward does not get through")
try:
    ag.gradcheck(BuggySoftplus.apply, [xs])
    print("the buggy op passed: this should not happen")
except ag.GradcheckError as err:
    print("caught: GradcheckError:", str(err).splitlines()[0])
done(f"softplus's backward agrees with central differences (largest difference {worst:.1e})")
