"""Fused ops: one file per layer-sized computation, each with the same three parts.

1. its composed reference, a public function built from primitive ops (``gelu_reference``, ...; what
   ``F.gelu(x, fused=False)`` returns), differentiable any number of times;
2. its Function (a ``FusedFunction``: declared ``params``, a ``rule`` for the step-through), one node in the graph;
3. its array code: one NumPy forward/backward (also run on CuPy when no kernel serves), and the name of its CUDA
   kernel, looked up with ``autograd.cuda.kernel_for(name, array)``.

The path is chosen by device only: a CuPy array goes to the registered CUDA kernel, anything else to the NumPy
code. Under ``create_graph=True`` a fused op differentiates its reference (``base.reference_grads``), so the local
rule is written once in NumPy and once in CUDA. Files: gelu, softmax, cross_entropy, layer_norm, rms_norm,
add_norm (the residual add + a norm), attention, heads (split/merge), linear, embedding, dropout.
"""
