"""Label store: the units of removal and how they are coupled.

Every prunable index of every traced tensor dimension carries an integer *label*.
Ops couple labels in three ways:

* ``unify(a, b)`` -- elementwise: removing label ``a[i]`` requires removing ``b[i]``
  (union-find; a class of labels is one unit of removal).
* ``Product(elements, axes)`` -- a reshape that splits or merges dimensions: element
  ``elements[i, j, ...]`` is removed exactly when ``axes[0][i]`` or ``axes[1][j]`` ... is
  removed (attention heads and head width, channel shuffle, flatten). An axis of ``None``
  can never be removed.
* ``pin(a)`` -- these labels must stay (model inputs/outputs, ignored modules, ops that
  cannot be pruned through). Each pin keeps its reason and the (op, module path) that made it
  (``pinned``, ``pin_sites``), so :meth:`DependencyGraph.blocked` can say why a dim was kept.
* ``Renumber`` -- an index buffer whose values index labelled positions (``x[:, perm]``).

Labels of a parameter/buffer dim (``param_dims``) are its *members*: label ``start + i`` is
the slice ``(tensor_name, dim, i)``, removed with its class.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Product:
    """``elements`` (an n-d label array) is the outer product of ``axes`` (1-d label arrays or None)."""

    elements: np.ndarray
    axes: list[np.ndarray | None]


@dataclass
class Counter:
    """An attribute of a module that counts labels (e.g. ``num_heads``); rewritten after removal."""

    module: str
    attr: str
    labels: np.ndarray
    scale: int = 1  # attribute value = scale * number of kept labels


@dataclass
class Renumber:
    """An integer index buffer whose *values* index a prunable dim (``x[:, perm]``,
    ``x.index_select(1, perm)``): ``labels[v]`` is the label of value ``v``. Removing those
    labels removes the buffer's positions holding them and renumbers the remaining values
    (see :func:`prunekit.graph.rules.indexing.renumber_index`); soft application leaves it."""

    buffer: str
    labels: np.ndarray


@dataclass
class ScaleFold:
    """Attention whose softmax scale is ``1 / sqrt(width)`` of the query's head width (SDPA with no
    ``scale``), its query a view of an op output whose last-dim labels are ``rows`` (the query's
    source rows, e.g. the q part of a fused qkv projection). Removing head-width units would change the
    scale; multiplying the kept ``rows`` by ``sqrt(kept / width)`` gives it back exactly, so the
    removal stays exact (:func:`prunekit.plan.make_plan` writes the factor into the plan)."""

    width: np.ndarray  # the query's head-width labels (size ``width``)
    rows: np.ndarray  # labels of the query's source rows
    owner: str  # module path of the projection whose output rows they are (its weight and bias may be scaled)


@dataclass
class LabelStore:
    _parent: np.ndarray = field(default_factory=lambda: np.zeros(1024, dtype=np.int64))
    _n: int = 0
    _active: np.ndarray = field(default_factory=lambda: np.zeros(1024, dtype=bool))
    _kind: np.ndarray = field(default_factory=lambda: np.zeros(1024, dtype=np.int16))  # codes into kind_names
    kind_names: list[str] = field(default_factory=lambda: ["channel"])
    pinned: dict[int, str] = field(default_factory=dict)
    pin_sites: dict[int, tuple[str, str]] = field(default_factory=dict)  # label -> (op, module) that pinned it
    context: tuple[str, str] = ("", "")  # (op, module path) of the op rule running now; the tracer sets it
    renumber: list["Renumber"] = field(default_factory=list)
    folds: list[ScaleFold] = field(default_factory=list)
    inexact: set[int] = field(default_factory=set)
    inexact_other: set[int] = field(default_factory=set)  # inexact for a reason other than a 1-d normalization
    products: list[Product] = field(default_factory=list)
    counters: list[Counter] = field(default_factory=list)
    param_dims: dict[tuple[str, int], np.ndarray] = field(default_factory=dict)
    _product_by_axes: dict[bytes, Product] = field(default_factory=dict)
    _product_by_elements: dict[bytes, Product] = field(default_factory=dict)
    _product_by_flat: dict[bytes, Product] = field(default_factory=dict)
    _param_at: dict[int, tuple[str, int]] = field(default_factory=dict)  # first label -> its (tensor, dim)

    # -- creation -----------------------------------------------------------------
    @property
    def parent(self) -> np.ndarray:
        """``parent[i] <= i`` (union by smaller label), so class representatives are minima."""
        return self._parent[:self._n]

    @property
    def active(self) -> np.ndarray:
        """Labels that may start a unit (a parameter's output dim, a head axis ...)."""
        return self._active[:self._n]

    @property
    def kind(self) -> np.ndarray:
        """Kind code of every label (``kind_names[code]``: channel, group, head ...)."""
        return self._kind[:self._n]

    def _kind_code(self, kind: str) -> int:
        if kind not in self.kind_names:
            self.kind_names.append(kind)
        return self.kind_names.index(kind)

    def new(self, n: int, kind: str, active: bool) -> np.ndarray:
        start = self._n
        end = start + n
        if end > self._parent.size:
            size = max(2 * self._parent.size, end)
            for attr in ("_parent", "_active", "_kind"):
                old = getattr(self, attr)
                grown = np.zeros(size, dtype=old.dtype)
                grown[:start] = old[:start]
                setattr(self, attr, grown)
        labels = np.arange(start, end, dtype=np.int64)
        self._parent[start:end] = labels
        # past ``_n`` the arrays are still zero (never written): inactive, kind 0 ("channel")
        if active:
            self._active[start:end] = True
        code = self._kind_code(kind)
        if code:
            self._kind[start:end] = code
        self._n = end
        return labels

    def param_dim(self, name: str, dim: int, size: int, active: bool = False,
                  kind: str = "channel") -> np.ndarray:
        """Labels of dimension ``dim`` of parameter/buffer ``name`` (created once, reused)."""
        key = (name, dim)
        labels = self.param_dims.get(key)
        if labels is None:
            labels = self.new(size, kind, active)  # contiguous: label start + i is index i of (name, dim)
            self.param_dims[key] = labels
            if size:
                self._param_at[int(labels[0])] = key
        elif active:
            fresh = labels[~self._active[labels]]
            self._active[fresh] = True
            self._kind[fresh] = self._kind_code(kind)
        return labels

    def param_with_labels(self, labels: np.ndarray) -> tuple[str, int] | None:
        """The ``(tensor, dim)`` whose labels are exactly ``labels`` (in order), if any: parameter dims hold
        disjoint ranges of fresh labels, so only the one starting at ``labels[0]`` can be."""
        if labels.size == 0:
            return None
        key = self._param_at.get(int(labels[0]))
        if key is None:
            return None
        own = self.param_dims[key]
        return key if own.size == labels.size and np.array_equal(own, labels) else None

    # -- union-find ---------------------------------------------------------------
    def find(self, x: int) -> int:
        return int(self.find_many(np.asarray([x], dtype=np.int64))[0])

    def find_many(self, xs: np.ndarray) -> np.ndarray:
        """Representatives of ``xs`` (vectorized pointer jumping, with path compression)."""
        parent = self._parent
        r = parent[xs]
        while True:
            rr = parent[r]
            if (rr == r).all():  # same shape: np.array_equal's checks cost more than the compare
                break
            r = rr
        parent[xs] = r
        return r

    def unify(self, a: np.ndarray, b: np.ndarray) -> None:
        a = np.asarray(a, dtype=np.int64).reshape(-1)
        b = np.asarray(b, dtype=np.int64).reshape(-1)
        if a.shape != b.shape:
            raise ValueError(f"cannot unify label arrays of sizes {a.size} and {b.size}")
        if a is b or (a == b).all():  # same shape (checked above)
            return
        parent = self._parent
        ra = self.find_many(a)
        if b.size and b[0] > ra.max() and (b[1:] > b[:-1]).all() and (parent[b] == b).all():
            parent[b] = ra  # fresh singleton labels (a parameter dim met for the first time): hook directly
            return
        while True:  # hook larger representatives under smaller ones until all pairs agree
            ra, rb = self.find_many(a), self.find_many(b)
            diff = ra != rb
            if not diff.any():
                return
            hi = np.maximum(ra[diff], rb[diff])
            lo = np.minimum(ra[diff], rb[diff])
            parent[hi] = lo  # duplicates: one write wins, the loop hooks the rest

    # -- constraints --------------------------------------------------------------
    def pin(self, labels: np.ndarray, reason: str, site: tuple[str, str] | None = None) -> None:
        """Keep ``labels``; ``reason`` and ``site`` (op, module path; default: the op being traced)
        explain it later (:meth:`DependencyGraph.blocked`). The first reason of a label wins."""
        site = self.context if site is None else site
        pinned, sites = self.pinned, self.pin_sites
        for lab in np.asarray(labels).reshape(-1).tolist():
            if lab not in pinned:
                pinned[lab] = reason
                sites[lab] = site

    def mark_inexact(self, labels: np.ndarray, norm: bool = False) -> None:
        """Removing these labels is not exactly zeroing them. ``norm=True``: only because a 1-d
        layer/RMS normalization runs over them (the verification can then build an exact reference by
        normalizing over the kept indices); any other mark makes them plainly approximate."""
        lst = np.asarray(labels).reshape(-1).tolist()
        self.inexact.update(lst)
        if not norm:
            self.inexact_other.update(lst)

    def add_product(self, elements: np.ndarray, axes: list[np.ndarray | None]) -> None:
        sizes = [a.size if a is not None else elements.shape[k] for k, a in enumerate(axes)]
        big = [k for k, s in enumerate(sizes) if s > 1]
        if len(big) == 1 and axes[big[0]] is not None:
            self.unify(elements.reshape(-1), axes[big[0]])
            return
        if not big:
            return
        prod = Product(elements.copy(), list(axes))
        self.products.append(prod)
        self._product_by_axes[self._axes_key(axes, elements.shape)] = prod
        self._product_by_elements[elements.tobytes() + bytes(str(elements.shape), "ascii")] = prod
        self._product_by_flat[elements.tobytes()] = prod

    @staticmethod
    def _axes_key(axes: list[np.ndarray | None], shape: tuple[int, ...]) -> bytes:
        parts = []
        for a, s in zip(axes, shape):
            parts.append(a.tobytes() if a is not None else f"none{s}".encode())
            parts.append(b"|")
        return b"".join(parts)

    def product_with_axes(self, axes: list[np.ndarray | None], shape: tuple[int, ...]) -> Product | None:
        return self._product_by_axes.get(self._axes_key(axes, shape))

    def product_with_elements(self, elements: np.ndarray) -> Product | None:
        return self._product_by_elements.get(elements.tobytes() + bytes(str(elements.shape), "ascii"))

    def same_axes(self, flat_elements: np.ndarray, axes: list[np.ndarray | None]) -> bool:
        """True when ``flat_elements`` come from a product over exactly these (non-None) axes."""
        prod = self._product_by_flat.get(np.ascontiguousarray(flat_elements).tobytes())
        if prod is None:
            return False
        mine = {self.find(int(a[0])) for a in prod.axes if a is not None}
        theirs = {self.find(int(a[0])) for a in axes if a is not None}
        return bool(mine) and mine == theirs

    def add_counter(self, module: str, attr: str, labels: np.ndarray, scale: int = 1) -> None:
        self.counters.append(Counter(module, attr, np.asarray(labels).copy(), scale))

    def add_fold(self, width: np.ndarray, rows: np.ndarray, owner: str) -> None:
        self.folds.append(ScaleFold(np.asarray(width).copy(), np.asarray(rows).reshape(-1).copy(), owner))

    def __len__(self) -> int:
        return self._n
