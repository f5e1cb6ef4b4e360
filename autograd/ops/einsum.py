"""Einstein summation, ``einsum('bij,bjk->bik', a, b)``. The gradient of each operand is again an einsum: of the
output gradient with the other operands, into that operand's subscripts; a letter summed inside one operand alone
is broadcast back, an ellipsis axis that broadcast from size 1 is summed back to 1, and a letter repeated inside
one operand (a diagonal, 'ii->i') gets its gradient through identity matrices (d x_ii / d x_ij = delta_ij)."""
from __future__ import annotations

import string

from .. import backend, dtypes
from ..function import Function
from ..tensor import Tensor, as_tensor
from .shape import broadcast_to, reshape


class Einsum(Function):
    """z = einsum(equation, *xs) with an explicit ``equation`` of letters ('ij,jk->ik');
    dz/dx_k = einsum(out, others -> subscripts of x_k)."""
    rule = "d einsum(..x_k..)/dx_k = einsum of the gradient with the other operands into x_k's subscripts"
    params = ("equation",)

    def forward(self, *xs):
        return dtypes.widened(lambda *a: backend.xp_of(*a).einsum(self.equation, *a), *xs)

    def backward(self, gz):
        ins, out = self.equation.split("->")
        ins = ins.split(",")
        grads = []
        for k, x in enumerate(self.inputs):
            if not self.needs_input_grad[k]:
                grads.append(None)
                continue
            others = [j for j in range(len(ins)) if j != k]
            subs, eyes = _undiagonal(ins[k], x.shape, self.equation, gz)
            terms = [out] + [ins[j] for j in others] + [t for t, _ in eyes]
            seen = set().union(*terms)
            target = "".join(c for c in subs if c in seen)
            g = Einsum.apply(gz, *(self.inputs[j] for j in others), *(e for _, e in eyes),
                             equation=",".join(terms) + "->" + target)
            sizes = iter(g.shape)
            g = reshape(g, tuple(next(sizes) if c in seen else 1 for c in subs))
            widened = tuple(i for i, (n, m) in enumerate(zip(x.shape, g.shape)) if n == 1 and m != 1)
            if widened:
                g = g.sum(axis=widened, keepdims=True)
            grads.append(broadcast_to(g, x.shape))
        return tuple(grads)


def _undiagonal(subs: str, shape, equation: str, like: Tensor):
    """``subs`` with each repeat of a letter renamed to a new letter, and for each an identity matrix term
    ('i' + new letter, eye(n)) that ties the new letter to the old: 'ii' -> 'ia' with ('ia', eye)."""
    free = iter(c for c in string.ascii_letters if c not in equation)
    out, eyes = [], []
    for c, n in zip(subs, shape):
        if c in out:
            new = next(free)
            eyes.append((c + new, Tensor(backend.xp_of(like.data).eye(n, dtype=like.dtype))))
            c = new
        out.append(c)
    return "".join(out), eyes


def _explicit(equation: str, shapes) -> str:
    """The equation with every '...' replaced by letters and the output written out (NumPy's implicit rule:
    the letters used once, in alphabetical order, after the ellipsis axes)."""
    eq = equation.replace(" ", "")
    lhs, arrow, rhs = eq.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(shapes):
        raise ValueError(f"einsum: the equation {equation!r} names {len(terms)} operands, got {len(shapes)}")
    used = set(c for c in eq if c.isalpha())
    free = [c for c in string.ascii_letters if c not in used]
    n_ell = max((len(s) - (len(t) - 3) for t, s in zip(terms, shapes) if "..." in t), default=0)
    ell = "".join(free[:n_ell])
    out_terms = []
    for t, s in zip(terms, shapes):
        if "..." in t:
            k = len(s) - (len(t) - 3)
            t = t.replace("...", ell[n_ell - k:] if k else "")
        if not all(c.isalpha() for c in t) or len(t) != len(s):
            raise ValueError(f"einsum: term {t!r} of {equation!r} does not fit an operand of shape {tuple(s)}")
        out_terms.append(t)
    if arrow:
        rhs = rhs.replace("...", ell)
    else:
        counts = "".join(out_terms)
        rhs = ell + "".join(sorted(c for c in set(counts) if counts.count(c) == 1 and c not in ell))
    return ",".join(out_terms) + "->" + rhs


def einsum(equation: str, *operands) -> Tensor:
    """Einstein summation over Tensors, as ``numpy.einsum`` / ``torch.einsum`` (ellipsis included)."""
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = tuple(operands[0])
    xs = [as_tensor(x) for x in operands]
    eq = _explicit(equation, [x.shape for x in xs])
    try:
        return Einsum.apply(*xs, equation=eq)
    except ValueError as e:
        raise ValueError(f"einsum: {equation!r} does not fit operands of shapes {[x.shape for x in xs]}: {e}") \
            from None
