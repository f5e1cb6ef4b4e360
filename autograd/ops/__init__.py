"""The differentiable ops, one module per family: elementwise, reduce, shape, linalg and nn (fused ops).

Each op is a Function subclass with its forward on arrays and its hand-derived backward on Tensors, side by side.
"""
