"""Measurements taken from real runs: params, MACs, latency, peak memory, file size."""
from .compare import Comparison, Measurement, measure
from .counting import Counts, count
from .latency import Latency, measure_latency
from .memory import peak_activation_bytes, peak_memory, tensor_bytes
from .size import file_size

__all__ = ["Comparison", "Counts", "Latency", "Measurement", "count", "file_size", "measure", "measure_latency",
           "peak_activation_bytes", "peak_memory", "tensor_bytes"]
