"""Op rules, one module per family; importing this package registers them all."""
from . import elementwise, indexing, linalg, nn_functional, recurrent, reduce, shape  # noqa: F401
