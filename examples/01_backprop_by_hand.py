"""Backpropagation by hand, then by the engine, and a check that both agree.

The network is the smallest one that still shows every idea of backprop:

    x (4, 3) --Linear(W1 (3, 5), b1 (5,))--> a (4, 5) --tanh--> h (4, 5)
             --Linear(W2 (5, 2), b2 (2,))--> out (4, 2) --MSE against y (4, 2)--> loss (a number)

Part 1 computes the forward pass and then the chain rule with plain NumPy, one local rule at a time, printing
every intermediate gradient. Part 2 builds the same network with `autograd` and prints the engine's own
step-through (`ag.trace.backward_steps`), one step per op in the order the backward pass runs them.
Part 3 asserts that the hand-made gradients equal the engine's.

    python examples/01_backprop_by_hand.py

What to expect: every gradient printed twice (by hand, then by the engine's steps, with the same numbers), "max
|hand - engine|" below 1e-15 for W1, b1, W2, b2, "they agree", and an interactive page of the same backward pass
written to mlp_backward.html (open it in a browser and click "next").
"""
import numpy as np

from course import done, lesson

import autograd as ag

lesson("Lesson 01: backprop by hand",
       "the chain rule one local rule at a time, for a 2-layer network; the engine's step-through of the same pass",
       "hand = engine to ~1e-16 for every parameter; the engine's 8 steps; an interactive page to click through")
np.set_printoptions(precision=4, suppress=True)


def show(name: str, value: np.ndarray) -> None:
    """Print a named array on one line (or indented lines for a matrix)."""
    text = np.array2string(np.asarray(value), separator=", ")
    if "\n" in text:
        text = "\n      " + text.replace("\n", "\n      ")
    print(f"  {name} {np.shape(value)} = {text}")


# ------------------------------------------------------------------------------------------------ the data
rng = np.random.default_rng(0)
x = rng.standard_normal((4, 3))            # 4 examples, 3 features each
y = rng.standard_normal((4, 2))            # 4 targets, 2 values each
W1 = rng.standard_normal((3, 5)) * 0.5     # first layer: 3 -> 5
b1 = rng.standard_normal(5) * 0.1
W2 = rng.standard_normal((5, 2)) * 0.5     # second layer: 5 -> 2
b2 = rng.standard_normal(2) * 0.1

# ================================================================================ part 1: by hand, with NumPy
print("=" * 30, "part 1: the chain rule by hand (NumPy)", "=" * 30)
print("forward pass:")
a = x @ W1 + b1                            # (4, 5)  pre-activation of the hidden layer
h = np.tanh(a)                             # (4, 5)  hidden activations
out = h @ W2 + b2                          # (4, 2)  predictions
d = out - y                                # (4, 2)  errors
loss = np.mean(d ** 2)                     # ()      mean squared error over all 8 numbers
show("a = x @ W1 + b1", a)
show("h = tanh(a)", h)
show("out = h @ W2 + b2", out)
print(f"  loss = mean((out - y)^2) = {loss:.6f}")

print("\nbackward pass: start from dloss/dloss = 1 and apply one local rule per step, right to left")
# Step 1. loss = mean(d^2) = sum(d^2) / N, so dloss/dd = 2 d / N (N = 8 numbers averaged).
N = d.size
g_d = 2.0 * d / N
show("dloss/dd   = 2 d / N", g_d)

# Step 2. d = out - y: the gradient flows to `out` unchanged (y is data, it gets no gradient).
g_out = g_d
show("dloss/dout = dloss/dd", g_out)

# Step 3. out = h @ W2 + b2. For a matrix product Z = A @ B with upstream gradient G:
#   dZ/dA -> G @ B^T   and   dZ/dB -> A^T @ G   (the shapes tell you where the transposes go).
# b2 was broadcast over the 4 rows, so its gradient sums the rows.
g_W2 = h.T @ g_out                         # (5, 2), same shape as W2
g_b2 = g_out.sum(axis=0)                   # (2,),   same shape as b2
g_h = g_out @ W2.T                         # (4, 5), same shape as h
show("dloss/dW2  = h^T @ dloss/dout", g_W2)
show("dloss/db2  = sum over rows of dloss/dout", g_b2)
show("dloss/dh   = dloss/dout @ W2^T", g_h)

# Step 4. h = tanh(a): dtanh(a)/da = 1 - tanh(a)^2 = 1 - h^2, applied elementwise.
g_a = g_h * (1.0 - h ** 2)
show("dloss/da   = dloss/dh * (1 - h^2)", g_a)

# Step 5. a = x @ W1 + b1: the same rules as step 3 (x is data, so we stop there).
g_W1 = x.T @ g_a                           # (3, 5)
g_b1 = g_a.sum(axis=0)                     # (5,)
show("dloss/dW1  = x^T @ dloss/da", g_W1)
show("dloss/db1  = sum over rows of dloss/da", g_b1)

# ================================================================================ part 2: the engine
print("\n" + "=" * 30, "part 2: the engine's backward, step by step", "=" * 30)
# The same numbers as leaves of a graph. Names make the trace readable; x and y need no gradient.
tx = ag.Tensor(x, name="x")
ty = ag.Tensor(y, name="y")
tW1 = ag.Tensor(W1, requires_grad=True, name="W1")
tb1 = ag.Tensor(b1, requires_grad=True, name="b1")
tW2 = ag.Tensor(W2, requires_grad=True, name="W2")
tb2 = ag.Tensor(b2, requires_grad=True, name="b2")

t_a = tx @ tW1 + tb1
t_h = t_a.tanh()
t_out = t_h @ tW2 + tb2
t_d = t_out - ty
t_loss = (t_d ** 2).mean()
ag.trace.named(a=t_a, h=t_h, out=t_out, d=t_d, loss=t_loss)   # the intermediates' names, as in part 1
ag.trace.SMALL = 20                       # print arrays of up to 20 numbers in full (the (4, 5) ones too)
print(f"engine loss = {t_loss.item():.6f} (by hand: {loss:.6f})\n")

# backward_steps runs the real backward pass one node at a time: Mean, PowScalar, Sub, Add, MatMul, Tanh,
# Add, MatMul, matching steps 1-5 above (the engine splits `mean(d^2)` and `x @ W + b` into their ops).
# Each step shows the gradient arriving at the op's output, the op's local rule, and what each input receives.
for step in ag.trace.backward_steps(t_loss):
    print(step)
    print()

# ================================================================================ part 3: do they agree?
print("=" * 30, "part 3: hand vs engine", "=" * 30)
pairs = [("W1", g_W1, tW1), ("b1", g_b1, tb1), ("W2", g_W2, tW2), ("b2", g_b2, tb2)]
for name, hand, leaf in pairs:
    engine = leaf.grad.numpy()
    err = np.abs(hand - engine).max()
    print(f"  d loss / d {name:<3} max |hand - engine| = {err:.2e}")
    assert np.allclose(hand, engine, rtol=1e-10, atol=1e-12), f"{name}: hand and engine gradients differ"
print("\nthey agree: the engine's backward is the chain rule you just did by hand.")

# ================================================================================ drawing the graph
# backward() freed the graph above, so build the forward pass again to draw it.
again = (((tx @ tW1 + tb1).tanh() @ tW2 + tb2 - ty) ** 2).mean()
dot = ag.viz.to_dot(again)
print(f"\nThe same graph as Graphviz DOT text ({len(dot.splitlines())} lines; first ones below):")
print("\n".join("  " + line for line in dot.splitlines()[:6]) + "\n  ...")
print("Every box shows `data | grad` (the drawing runs its own backward). Render it:")
print("  ag.viz.save_dot(loss, 'mlp.dot')  then  dot -Tsvg mlp.dot -o mlp.svg")
page = ag.viz.to_html(again, "mlp_backward.html", title="lesson 01: x -> Linear -> tanh -> Linear -> MSE")
print("The backward pass to click through, step by step: mlp_backward.html (open it in a browser)")
done("the engine's gradients are the chain rule done by hand")
