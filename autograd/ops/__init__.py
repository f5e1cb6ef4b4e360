"""The differentiable ops: primitive ops by family (elementwise, reduce, shape, linalg ...) and ``fused/``.

Each op is a Function subclass with its forward on arrays and its hand-derived backward on Tensors, side by side;
a fused op (one file each under ``fused/``) adds its composed reference and its NumPy / CUDA array code.
"""
