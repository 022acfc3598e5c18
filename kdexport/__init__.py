"""kdexport: distill a PyTorch teacher into a small student, export, compile, verify, benchmark.

``import kdexport`` imports neither onnxruntime nor openvino: the backends load them when a
target needs them.
"""

__version__ = "0.1.0"
