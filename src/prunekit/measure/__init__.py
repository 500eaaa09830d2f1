"""Measurements taken from real runs: params, MACs, latency, peak memory, file size; whole model or per layer."""
from .compare import Comparison, Measurement, measure
from .counting import Counts, count
from .latency import Latency, LatencyConfig, PairedLatency, measure_latency, paired_latency
from .layers import LayerMeasurement, measure_layers
from .memory import peak_activation_bytes, peak_memory, tensor_bytes
from .size import file_size, state_bytes

__all__ = ["Comparison", "Counts", "LayerMeasurement", "Latency", "LatencyConfig", "Measurement", "PairedLatency",
           "count", "file_size", "measure", "measure_latency", "measure_layers", "paired_latency",
           "peak_activation_bytes", "peak_memory", "state_bytes", "tensor_bytes"]
