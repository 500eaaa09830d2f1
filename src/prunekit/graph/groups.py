"""Groups: the sets of coupled slices that are removed together, and the closure that finds them.

A *unit* is one removable thing (a channel, a head, a head-width offset); its closure lists
every ``(tensor, dim, index)`` slice that must go with it. A :class:`Group` gathers the units
of one coupled dimension (e.g. the 64 channels shared by ``conv1``, ``bn1`` and the next
conv's input), so a ratio can be applied to it.
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable

import numpy as np

from .labels import LabelStore


class InvalidRemoval(Exception):
    """The requested set of units cannot be removed on its own (``root``: the pinned class met)."""

    def __init__(self, reason: str, root: int | None = None):
        super().__init__(reason)
        self.root = root


def _unit_spans(res: "Resolver", units) -> tuple[np.ndarray, np.ndarray]:
    """For every class of every unit: the unit's position and the class's row span."""
    sizes = [len(u) for u in units]
    roots = np.fromiter((r for u in units for r in u), dtype=np.int64, count=sum(sizes))
    unit_of = np.repeat(np.arange(len(units), dtype=np.int64), sizes)
    spans = res.span[roots]
    has = spans[:, 1] > spans[:, 0]
    return unit_of[has], spans[has]


def _span_rows(spans) -> tuple[np.ndarray, np.ndarray]:
    """Row indices covered by ``[(start, end), ...]`` (concatenated) and each span's length."""
    sp = np.asarray(spans, dtype=np.int64).reshape(-1, 2)
    lengths = sp[:, 1] - sp[:, 0]
    offsets = np.cumsum(lengths) - lengths
    rows = np.arange(int(lengths.sum())) - np.repeat(offsets, lengths) + np.repeat(sp[:, 0], lengths)
    return rows, lengths


class Resolver:
    """Class-level view of a :class:`LabelStore` (after union-find) with the closure operator."""

    def __init__(self, store: LabelStore):
        n = len(store)
        self.store = store
        parent = np.asarray(store.parent, dtype=np.int64)
        root = parent.copy()
        while True:  # pointer jumping: every label to its class representative
            nxt = root[root]
            if np.array_equal(nxt, root):
                break
            root = nxt
        self.root = root
        # members, sorted by (root, tensor-dim key, index): root r owns rows [ptr[r], end[r])
        self.keys: list[tuple[str, int]] = list(store.param_dims)
        arrays = list(store.param_dims.values())
        if arrays:
            lab = np.concatenate(arrays)
            sizes = np.fromiter((a.size for a in arrays), dtype=np.int64, count=len(arrays))
            key = np.repeat(np.arange(len(arrays)), sizes)
            idx = np.arange(lab.size) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        else:
            lab = key = idx = np.zeros(0, dtype=np.int64)
        r = self.root[lab]
        order = np.argsort(r, kind="stable")  # rows already run in (key, index) order: a stable sort keeps it
        self.m_root, self.m_key, self.m_idx = r[order], key[order], idx[order]
        self.span = np.zeros((max(n, 1), 2), dtype=np.int64)  # root -> [start, end) rows; empty if none
        if r.size:
            first = np.flatnonzero(np.r_[True, self.m_root[1:] != self.m_root[:-1]])
            uniq = self.m_root[first]
            self.span[uniq, 0], self.span[uniq, 1] = first, np.r_[first[1:], r.size]
        self._mk: list[int] | None = None
        self._mi: list[int] | None = None
        self._width: int | None = None  # largest member index + 1 (slices' sort key)
        self.pinned: dict[int, str] = {}
        self.pin_site: dict[int, tuple[str, str]] = {}  # root -> (op, module) of its first pin
        sites = store.pin_sites
        if store.pinned:  # each class's first pinned label (in pin order) gives its reason and site
            labs = np.fromiter(store.pinned, dtype=np.int64, count=len(store.pinned))
            roots, first = np.unique(self.root[labs], return_index=True)
            order = np.argsort(first, kind="stable")  # classes in the order of their first pin, as before
            whys = list(store.pinned.values())
            labs_l = labs.tolist()
            for r, i in zip(roots[order].tolist(), first[order].tolist()):
                self.pinned[r] = whys[i]
                self.pin_site[r] = sites.get(labs_l[i], ("", ""))
        inexact = np.fromiter(store.inexact, dtype=np.int64, count=len(store.inexact))
        self.inexact_roots = np.unique(self.root[inexact])
        self.inexact = set(self.inexact_roots.tolist())
        other = np.fromiter(store.inexact_other, dtype=np.int64, count=len(store.inexact_other))
        self.inexact_other = set(np.unique(self.root[other]).tolist())
        act = np.flatnonzero(store.active)
        self.active_roots, first = np.unique(self.root[act], return_index=True)  # and each class's first label
        self.kind_names = list(store.kind_names)
        self.kind_code = np.full(max(n, 1), -1, dtype=np.int16)  # per class; -1: not a unit
        self.kind_code[self.active_roots] = store.kind[act[first]]
        self._mask = np.zeros(max(n, 1), dtype=bool)
        self._comp_of: list[int] | None = None  # product -> connected component (see closures)
        self.counter_blocked: dict[int, tuple[str, str]] = {}  # width class -> the attribute that kept it
        self._components: list[list[int]] = []
        self.failed: dict[int, int | None] = {}  # free root whose closure met a pinned class -> that class
        self.products = []
        self.distinct: list[bool] = []
        self.touch: dict[int, list[int]] = defaultdict(list)
        self.is_element = np.zeros(max(n, 1), dtype=bool)
        for p in store.products:
            el = self.root[p.elements]
            axes = [self.root[a] if a is not None else None for a in p.axes]
            idx = len(self.products)
            self.products.append((el, axes))
            el_roots = np.unique(el)
            self.distinct.append(el_roots.size == el.size)  # no class twice among its elements
            self.is_element[el_roots] = True
            for r in el_roots.tolist():
                self.touch[r].append(idx)
            for a in axes:
                if a is not None:
                    for r in np.unique(a).tolist():
                        self.touch[r].append(idx)
        self.folds = [f for f in store.folds if self._fold_holds(f)]
        for f in store.folds:
            if not any(f is g for g in self.folds):  # its query rows go with more than themselves: the scale changes
                roots = np.unique(self.root[f.width])
                self.inexact.update(roots.tolist())
                self.inexact_other.update(roots.tolist())
                self.inexact_roots = np.union1d(self.inexact_roots, roots)

    def _fold_holds(self, fold) -> bool:
        """Can the query rows of ``fold`` be scaled on their own: are their classes exactly those rows of
        the projection's own parameters (weight rows, bias), nothing coupled to them elsewhere (a residual
        stream, the key rows)?"""
        roots = np.unique(self.root[fold.rows])
        if roots.size != np.unique(fold.rows).size:
            return False
        prefix = fold.owner + "." if fold.owner else ""
        for (name, dim), idx in self.slices(roots.tolist()).items():
            own = name.startswith(prefix) and "." not in name[len(prefix):]
            if not own or dim != 0 or len(idx) != roots.size:
                return False
        return True

    def kind(self, root: int) -> str:
        code = int(self.kind_code[root])
        return self.kind_names[code] if code >= 0 else "channel"

    def free_roots(self) -> np.ndarray:
        """Classes that can start a unit: active, not inside a reshape product, not pinned."""
        r = self.active_roots
        pinned = np.fromiter(self.pinned, dtype=np.int64, count=len(self.pinned))
        return r[~self.is_element[r] & ~np.isin(r, pinned)]

    def closure(self, roots: Iterable[int]) -> set[int]:
        """Everything that must go with ``roots``: follow products until nothing changes."""
        removed = set(int(r) for r in roots)
        pending = set()
        for r in removed:
            pending.update(self.touch.get(r, ()))
        if not pending:
            bad = removed & self.pinned.keys()
            if bad:
                r = min(bad)
                raise InvalidRemoval(self.pinned[r], r)
            return removed
        mask = self._mask
        mask[list(removed)] = True
        try:
            while pending:
                todo, pending = pending, set()
                for pi in sorted(todo):
                    el, axes = self.products[pi]
                    direct = mask[el]
                    if el.ndim == 2 and axes[0] is not None and axes[1] is not None:
                        cand = self._step_2d(el, axes[0], axes[1], direct, mask)
                    else:
                        cand = self._step(el, axes, direct, mask)
                    if cand.size:
                        new_roots = np.unique(cand)
                        mask[new_roots] = True
                        for r in new_roots.tolist():
                            removed.add(r)
                            pending.update(self.touch.get(r, ()))
                        if self.distinct[pi]:  # its step saw the current mask and reached its fixpoint
                            pending.discard(pi)
        finally:
            mask[list(removed)] = False
        bad = removed & self.pinned.keys()
        if bad:
            r = min(bad)
            raise InvalidRemoval(self.pinned[r], r)
        return removed

    _BATCH_CELLS = 1 << 22  # at most this many (root, class) cells per batched closure matrix
    _BATCH_WIDTH = 2048  # batched where a component's products hold at most this many labels (measured on the zoo)

    def closures(self, roots: np.ndarray) -> list[set[int] | InvalidRemoval]:
        """:meth:`closure` of each single class in ``roots`` (each must touch a product), the same sets.

        Per connected set of products, the roots are closed either one at a time (:meth:`closure`) or
        together (:meth:`_closures_in`: one boolean root x class matrix driven to its fixpoint with numpy).
        Batching wins on small products (attention heads: 1.5-2.5x, grouped convs 1.4x); one at a time wins
        on wide ones, where the matrix grows with roots x width: a weight reshape's tiny closures, and also
        closures that cross many wide products (components of more than 2,048 labels in the zoo: beit_base's
        24 products 639 ms against 895 batched, mobilevit_xxs's 10 products 15 ms against 31, crossvit_tiny's
        12 products 24 against 34).
        An entry is an :class:`InvalidRemoval` where that root cannot be removed on its own (a product
        whose removed elements are not whole slices of its axes; else a pinned class in its closure:
        ``root`` is the smallest, as in :meth:`closure`)."""
        roots = np.asarray(roots, dtype=np.int64)
        out: list[set[int] | InvalidRemoval | None] = [None] * roots.size
        if not roots.size:
            return []
        comp_of_product = self._product_components()
        comp = np.fromiter((comp_of_product[self.touch[r][0]] for r in roots.tolist()), dtype=np.int64,
                           count=roots.size)

        for c in np.unique(comp).tolist():
            rows = np.flatnonzero(comp == c)
            products = self._components[c]
            width = sum(el.size + sum(a.size for a in axes if a is not None)
                        for el, axes in (self.products[pi] for pi in products))
            if width > self._BATCH_WIDTH:
                for i in rows.tolist():  # wide products: one root at a time is cheaper
                    try:
                        out[i] = self.closure([int(roots[i])])
                    except InvalidRemoval as exc:
                        out[i] = exc
                continue
            step = max(1, self._BATCH_CELLS // max(width, 1))  # bounds the (root x class) matrix
            for s in range(0, rows.size, step):
                chunk = rows[s:s + step]
                for i, got in zip(chunk.tolist(), self._closures_in(products, roots[chunk])):
                    out[i] = got
        return out  # type: ignore[return-value]

    def _product_components(self) -> list[int]:
        """Component id of each product (products sharing a class are connected); cached."""
        if self._comp_of is None:
            parent = list(range(len(self.products)))

            def find(i: int) -> int:
                while parent[i] != i:
                    parent[i] = parent[parent[i]]
                    i = parent[i]
                return i

            for pis in self.touch.values():
                a = find(pis[0])
                for pi in pis[1:]:
                    b = find(pi)
                    if a != b:
                        parent[b] = a
            ids: dict[int, int] = {}
            self._comp_of = [ids.setdefault(find(i), len(ids)) for i in range(len(self.products))]
            self._components = [[] for _ in ids]
            for pi, c in enumerate(self._comp_of):
                self._components[c].append(pi)
        return self._comp_of

    def _closures_in(self, products: list[int], roots: np.ndarray) -> list[set[int] | InvalidRemoval]:
        """Batched closures of ``roots`` whose products all lie in ``products`` (one component): a
        (root x class) boolean matrix; each product whose classes changed is stepped again
        until nothing changes. Same steps as :meth:`_step`."""
        parts = [self.products[pi] for pi in products]
        flat = [np.concatenate([el.reshape(-1)] + [a for a in axes if a is not None]) for el, axes in parts]
        universe = np.unique(np.concatenate(flat))  # every class these products hold
        local = [(np.searchsorted(universe, el), [np.searchsorted(universe, a) if a is not None else None
                                                  for a in axes]) for el, axes in parts]
        cols = [np.unique(np.searchsorted(universe, f)) for f in flat]
        incidence = np.zeros((len(parts), universe.size), dtype=bool)  # product x class
        for k, c in enumerate(cols):
            incidence[k, c] = True
        b = roots.size
        m = np.zeros((b, universe.size), dtype=bool)  # (root, class): removed with that root
        m[np.arange(b), np.searchsorted(universe, roots)] = True
        dirty = incidence[:, np.searchsorted(universe, roots)].any(axis=1)
        while dirty.any():
            for k in np.flatnonzero(dirty).tolist():
                dirty[k] = False
                el, axes = local[k]
                direct = m[:, el]  # (B, *el.shape)
                ax_rm = [m[:, a] if a is not None else None for a in axes]
                cur = direct | self._implied_batch(ax_rm, el.shape, b)
                new_cols = []
                for j, a in enumerate(axes):
                    if a is None:
                        continue
                    other = tuple(1 + i for i in range(el.ndim) if i != j)
                    full = cur.all(axis=other) if other else cur  # a whole slice removed removes its axis label
                    rr, pos = np.nonzero(full & ~ax_rm[j])
                    if rr.size:
                        m[rr, a[pos]] = True
                        ax_rm[j] = m[:, a]
                        new_cols.append(a[pos])
                rr, *pos = np.nonzero(self._implied_batch(ax_rm, el.shape, b) & ~direct)
                if rr.size:
                    m[rr, el[tuple(pos)]] = True
                    new_cols.append(el[tuple(pos)])
                if new_cols:
                    dirty |= incidence[:, np.unique(np.concatenate(new_cols))].any(axis=1)
        bad = np.zeros(b, dtype=bool)  # at the fixpoint: removed elements that are not whole axis slices
        for el, axes in local:
            ax_rm = [m[:, a] if a is not None else None for a in axes]
            bad |= (m[:, el] & ~self._implied_batch(ax_rm, el.shape, b)).reshape(b, -1).any(axis=1)
        pinned = np.isin(universe, np.fromiter(self.pinned, dtype=np.int64, count=len(self.pinned)))
        hit = m[:, pinned].any(axis=1)
        out: list[set[int] | InvalidRemoval] = []
        for i in range(b):
            if bad[i]:
                out.append(InvalidRemoval("removal breaks a reshape/group structure"))
            elif hit[i]:
                r = int(universe[pinned & m[i]].min())
                out.append(InvalidRemoval(self.pinned[r], r))
            else:
                out.append(set(universe[m[i]].tolist()))
        return out

    @staticmethod
    def _implied_batch(ax_rm: list, shape: tuple, b: int) -> np.ndarray:
        """Elements removed by removed axis labels, for a batch: ``(B, *shape)``."""
        out = np.zeros((b, *shape), dtype=bool)
        for k, rm in enumerate(ax_rm):
            if rm is not None:
                view = [b] + [1] * len(shape)
                view[1 + k] = shape[k]
                out |= rm.reshape(view)
        return out

    def _slices_vectorized(self, spans: np.ndarray) -> dict[tuple[str, int], list[int]]:
        rows, _ = _span_rows(spans)
        k, i = self.m_key[rows], self.m_idx[rows]
        if self._width is None:
            self._width = int(self.m_idx.max(initial=0)) + 1
        pairs = np.sort(k * self._width + i)  # by (key, index); classes are disjoint
        k, i = np.divmod(pairs, self._width)
        starts = np.flatnonzero(np.diff(k)) + 1
        bounds = [0, *starts.tolist(), int(k.size)]  # one run per key: list slices (np.split costs ~1 us a piece)
        first = k[bounds[:-1]].tolist() if k.size else []
        il, keys = i.tolist(), self.keys
        return {keys[kk]: il[bounds[j]:bounds[j + 1]] for j, kk in enumerate(first)}

    def _step(self, el: np.ndarray, axes: list, direct: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """One product: what its removed elements and axes imply (new classes to remove)."""
        ax_rm = [mask[a] if a is not None else np.zeros(el.shape[k], bool) for k, a in enumerate(axes)]
        implied = self._implied(ax_rm, el.shape)
        cur = direct | implied
        changed = False
        for k, a in enumerate(axes):
            if a is None:
                continue
            other = tuple(j for j in range(el.ndim) if j != k)
            full = cur.all(axis=other) if other else cur  # a whole slice removed removes its axis label
            new = full & ~ax_rm[k]
            if new.any():
                ax_rm[k] = ax_rm[k] | new
                changed = True
        if changed:
            implied = self._implied(ax_rm, el.shape)
        if (direct & ~implied).any():
            raise InvalidRemoval("removal breaks a reshape/group structure")
        cand = [el[implied]]
        for k, a in enumerate(axes):
            if a is not None:
                cand.append(a[ax_rm[k]])
        cand = np.concatenate([c.reshape(-1) for c in cand])
        return cand[~mask[cand]]

    @staticmethod
    def _step_2d(el: np.ndarray, a0: np.ndarray, a1: np.ndarray, direct: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """The general step below, specialised to a 2-axis product (groups x width, heads x head_dim)."""
        r0, r1 = mask[a0], mask[a1]
        cur = direct | r0[:, None] | r1[None, :]
        r0 = r0 | cur.all(axis=1)  # a whole row removed removes its axis label
        r1 = r1 | cur.all(axis=0)
        implied = r0[:, None] | r1[None, :]
        if (direct & ~implied).any():
            raise InvalidRemoval("removal breaks a reshape/group structure")
        cand = np.concatenate([el[implied], a0[r0], a1[r1]])
        return cand[~mask[cand]]

    @staticmethod
    def _implied(ax_rm, shape):
        out = np.zeros(shape, bool)
        for k, rm in enumerate(ax_rm):
            if rm.any():
                view = [1] * len(shape)
                view[k] = shape[k]
                out = out | rm.reshape(view)
        return out

    def slices(self, roots: Iterable[int]) -> dict[tuple[str, int], list[int]]:
        """``(tensor, dim) -> sorted indices`` removed with ``roots``, in trace order of the tensors."""
        if self._mk is None:
            self._mk, self._mi = self.m_key.tolist(), self.m_idx.tolist()
        mk, mi, keys = self._mk, self._mi, self.keys
        sp = self.span[np.fromiter(roots, dtype=np.int64)]
        sp = sp[sp[:, 1] > sp[:, 0]]  # (classes with rows, 2)
        if len(sp) > 32:  # many classes (a whole plan): select rows with numpy
            return self._slices_vectorized(sp)
        spans = [tuple(x) for x in sp.tolist()]
        if len(spans) == 1:  # one class: rows are already sorted by (key, index), indices unique
            out: dict[tuple[str, int], list[int]] = {}
            a, b = spans[0]
            for j in range(a, b):
                k = keys[mk[j]]
                lst = out.get(k)
                if lst is None:
                    out[k] = [mi[j]]
                else:
                    lst.append(mi[j])
            return out
        acc: dict[int, set[int]] = {}
        for a, b in spans:
            for j in range(a, b):
                acc.setdefault(mk[j], set()).add(mi[j])
        return {keys[k]: sorted(acc[k]) for k in sorted(acc)}


class Group:
    """Units of one coupled dimension; removing unit ``i`` removes ``slices[i]`` everywhere.

    ``units[i]`` is the set of label classes removed with unit ``i`` (its closure);
    ``slices[i]`` maps ``(tensor name, dim)`` to the indices removed there.
    """

    def __init__(self, id: int, kind: str, units: list[frozenset[int]] | None, exact: bool, signature: tuple,
                 resolver: Resolver, roots: np.ndarray | None = None):
        self.id = id
        self.kind = kind
        self._units = units
        self.exact = exact
        self.signature = signature
        self._res = resolver
        self._slices: list[dict[tuple[str, int], list[int]]] | None = None
        self._roots = roots  # the class of each unit, when every unit is one class

    @property
    def units(self) -> list[frozenset[int]]:
        if self._units is None:
            self._units = [frozenset((r,)) for r in self._roots.tolist()]
        return self._units

    def unit_roots(self, indices) -> list[int]:
        """Every class removed with the units at ``indices``."""
        if self._roots is not None:
            return self._roots[np.asarray(indices, dtype=np.int64)].tolist()
        return [r for i in indices for r in self.units[i]]

    def __len__(self) -> int:
        return len(self._roots) if self._roots is not None else len(self._units)

    def __repr__(self) -> str:
        return f"Group(id={self.id}, kind={self.kind!r}, units={len(self)}, root={self.root}, exact={self.exact})"

    @property
    def slices(self) -> list[dict[tuple[str, int], list[int]]]:
        if self._slices is None:
            self._slices = [self._res.slices(u) for u in self.units]
        return self._slices

    def member_rows(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[tuple[str, int]]]:
        """Vectorized members: ``(unit index, tensor-dim key, index)`` arrays and the key names."""
        res = self._res
        if self._roots is not None or all(len(u) == 1 for u in self.units):  # one span of rows per unit
            if self._roots is None:
                self._roots = np.fromiter((next(iter(u)) for u in self.units), dtype=np.int64, count=len(self.units))
            rows, lengths = _span_rows(res.span[self._roots])
            unit_ids = np.repeat(np.arange(len(self)), lengths)
            return unit_ids, res.m_key[rows], res.m_idx[rows], res.keys
        unit_of, spans = _unit_spans(res, self.units)
        rows, lengths = _span_rows(spans)
        return np.repeat(unit_of, lengths), res.m_key[rows], res.m_idx[rows], res.keys

    @property
    def root(self) -> tuple[str, int]:
        """The first (tensor, dim) of the group, used to name it."""
        return self.signature[0][0]

    @property
    def modules(self) -> list[str]:
        return sorted({n.rsplit(".", 1)[0] if "." in n else "" for (n, _), _ in self.signature})

    def __str__(self) -> str:
        lines = [f"Group {self.id}: {len(self)} {self.kind}{'s' if len(self) != 1 else ''}"
                 f" ({'exact' if self.exact else 'approximate: normalization over the pruned dim'})"]
        for (name, dim), count in self.signature:
            lines.append(f"  {name}[dim {dim}]  x{count} per unit")
        return "\n".join(lines)


@dataclass
class _Signed:
    """Units with their signature bucket and first index (parallel arrays) and each bucket's
    signature ``((tensor, dim), count)...``."""
    unit: np.ndarray
    bucket: np.ndarray
    first: np.ndarray
    sigs: list[tuple]


def _simple_signatures(res: Resolver, roots: np.ndarray) -> _Signed:
    """Signatures of single-class units (a class's rows are already sorted by key, index)."""
    mask = np.zeros(max(len(res.root), 1), dtype=bool)  # np.isin sorts all members (~0.7 ms on 230k)
    mask[roots] = True
    rows = mask[res.m_root]
    return _signatures(res, res.m_root[rows], res.m_key[rows], res.m_idx[rows])


def _unit_signatures(res: Resolver, units: list[list[int]]) -> _Signed:
    """Signatures of multi-class units; ``unit`` holds positions in ``units``."""
    unit_of, spans = _unit_spans(res, units)
    rows, lengths = _span_rows(spans)
    u = np.repeat(unit_of, lengths)
    k, ix = res.m_key[rows], res.m_idx[rows]
    order = np.lexsort((ix, k, u))
    return _signatures(res, u[order], k[order], ix[order])


def _signatures(res: Resolver, r: np.ndarray, k: np.ndarray, ix: np.ndarray) -> _Signed:
    """Signature and first index of each unit ``r`` (rows sorted by unit, key, index).

    Vectorized: each unit's run of (key, count) pairs is hashed with numpy and units are
    bucketed by hash; every unit's pairs are checked against its bucket's first unit, and the
    rare collision gets a bucket of its own. Signature tuples are built once per bucket.
    """
    if r.size == 0:
        z = np.zeros(0, dtype=np.int64)
        return _Signed(z, z, z, [])
    change = np.ones(r.size, dtype=bool)
    change[1:] = (r[1:] != r[:-1]) | (k[1:] != k[:-1])
    if change.all():  # one index per (unit, tensor dim), the usual case: every row is its own pair
        counts = np.ones(r.size, dtype=np.int64)
        pr, pk, pfirst = r, k, ix
    else:
        starts = np.flatnonzero(change)
        counts = np.diff(np.append(starts, r.size))
        pr, pk, pfirst = r[starts], k[starts], ix[starts]
    root_change = np.ones(pr.size, dtype=bool)
    root_change[1:] = pr[1:] != pr[:-1]
    rstarts = np.flatnonzero(root_change)
    npairs = np.diff(np.append(rstarts, pr.size))
    pos = np.arange(pr.size) - np.repeat(rstarts, npairs)
    with np.errstate(over="ignore"):
        v = (pk.astype(np.uint64) * np.uint64(1000003) + counts.astype(np.uint64)) * np.uint64(2654435761)
        v = (v ^ (pos.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15))) * np.uint64(0xBF58476D1CE4E5B9)
        h = np.add.reduceat(v, rstarts)
    keys = res.keys
    hv = np.stack([h.view(np.int64), npairs])
    _, first_of, inv = np.unique(hv, axis=1, return_index=True, return_inverse=True)
    inv = inv.reshape(-1).copy()
    rep_start = rstarts[first_of[inv]]
    same = (pk == pk[np.repeat(rep_start, npairs) + pos]) & (counts == counts[np.repeat(rep_start, npairs) + pos])
    ok = np.logical_and.reduceat(same, rstarts)

    def build(a: int, n: int) -> tuple:
        return tuple((keys[kk], cc) for kk, cc in zip(pk[a:a + n].tolist(), counts[a:a + n].tolist()))

    sigs = [build(int(rstarts[f]), int(npairs[f])) for f in first_of.tolist()]
    for i in np.flatnonzero(~ok).tolist():  # hash collision: the true signature, its own bucket
        inv[i] = len(sigs)
        sigs.append(build(int(rstarts[i]), int(npairs[i])))
    return _Signed(pr[rstarts], inv, pfirst[rstarts], sigs)


def build_groups(graph, kinds: Iterable[str] | None = None) -> list[Group]:
    """The groups of ``graph`` of the given kinds (all when None). ``"head"`` without ``"head_dim"`` also
    returns the head-width groups that factor a head group with it, when all of that head group's widths
    (q/k and v may be two) are exact, or approximate only through 1-d norms (verified norm-aware): SDPA's
    default scale is kept by rescaling the query rows (:class:`~prunekit.graph.labels.ScaleFold`).
    Selection cuts each attention's heads x widths to the ratio together, whole heads first, every width
    by the same count (crossvit's ``reshape(B, N, heads, C // heads)`` needs q/k and v widths equal)."""
    res = Resolver(graph.store)
    graph._resolver = res
    wanted = set(kinds) if kinds is not None else None
    # heads asked for without their width: an exact head width that factors a head group comes along, as
    # that group's second factor (selection cuts heads x width together to the ratio, whole heads first)
    implied_width = wanted is not None and "head" in wanted and "head_dim" not in wanted
    if implied_width:
        wanted = wanted | {"head_dim"}
    order = {n: i for i, n in enumerate(graph.param_names + graph.buffer_names)}
    free = res.free_roots()
    if wanted is not None:
        codes = [i for i, k in enumerate(res.kind_names) if k in wanted]
        free = free[np.isin(res.kind_code[free], codes)]
    # (kind, signature) -> chunks of (first indices, units, unit classes when single)
    buckets: dict[tuple, list[tuple[np.ndarray, list[frozenset[int]] | None, np.ndarray | None]]] = defaultdict(list)

    def collect(signed: _Signed, kind_code: np.ndarray, unit_sets: list[frozenset[int]] | None) -> None:
        key = signed.bucket * (len(res.kind_names) + 1) + kind_code
        srt = np.lexsort((signed.first, key))
        bounds = np.flatnonzero(np.diff(key[srt])) + 1
        for chunk in np.split(srt, bounds):
            if chunk.size:
                i0 = int(chunk[0])
                kind = res.kind_names[kind_code[i0]] if kind_code[i0] >= 0 else "channel"
                buckets[(kind, signed.sigs[int(signed.bucket[i0])])].append(
                    (signed.first[chunk], None if unit_sets is None else [unit_sets[j] for j in chunk.tolist()],
                     signed.unit[chunk] if unit_sets is None else None))

    touched = np.fromiter(res.touch, dtype=np.int64, count=len(res.touch))
    in_touch = np.isin(free, touched)
    simple = free[~in_touch]
    if simple.size:
        signed = _simple_signatures(res, simple)  # units come back sorted by class
        collect(signed, res.kind_code[signed.unit].astype(np.int64), None)
    seen: set[frozenset[int]] = set()
    closures: list[tuple[int, frozenset[int]]] = []
    touched_free = free[in_touch]
    for r, got in zip(touched_free.tolist(), res.closures(touched_free)):
        if isinstance(got, InvalidRemoval):
            res.failed[r] = got.root  # kept because removing it would remove this pinned class
            continue
        key = frozenset(got)
        if key in seen:  # the same unit reached from another root (e.g. a head in every layer)
            continue
        seen.add(key)
        closures.append((r, key))
    if closures:
        signed = _unit_signatures(res, [list(c) for _, c in closures])  # units without slices drop out
        pos = signed.unit.tolist()
        codes = res.kind_code[np.array([closures[i][0] for i in pos], dtype=np.int64)].astype(np.int64)
        collect(signed, codes, [closures[i][1] for i in pos])
    groups = []
    for (kind, sig), chunks in buckets.items():
        first = np.concatenate([c[0] for c in chunks])
        single = all(c[2] is not None for c in chunks)
        srt = np.argsort(first, kind="stable") if len(chunks) > 1 else None  # by index in the first tensor
        if single:
            roots = np.concatenate([c[2] for c in chunks])
            roots = roots[srt] if srt is not None else roots
            units = None
            exact = not np.isin(roots, res.inexact_roots).any()
        else:
            units = []
            for _, us, rs in chunks:
                units.extend(us if us is not None else (frozenset((r,)) for r in rs.tolist()))
            units = [units[i] for i in srt.tolist()] if srt is not None else units
            roots = None
            exact = not any(res.inexact & u for u in units)
        groups.append(Group(0, kind, units, exact, sig, res, roots=roots))
    if implied_width:  # all of an attention's widths, each exact (or approximate through 1-d norms only), or none
        for i, g in enumerate(groups):
            g.id = i  # factor_pairs keys groups by id
        verifiable = lambda w: res.inexact_other.isdisjoint(w.unit_roots(range(len(w))))  # noqa: E731
        paired = {w.id for _, widths in factor_pairs(groups, "head", "head_dim") if all(map(verifiable, widths))
                  for w in widths}
        groups = [g for g in groups if g.kind != "head_dim" or g.id in paired]
    groups = _without_partial_widths(groups, res, graph.store)
    groups.sort(key=lambda g: (order.get(g.root[0], 1 << 30), g.root, g.kind))
    for i, g in enumerate(groups):
        g.id = i
    if kinds is None:
        graph._all_groups = (len(graph.store), groups)  # for blocked(), while the store is unchanged
    return groups


def _without_partial_widths(groups: list[Group], res: Resolver, store: LabelStore) -> list[Group]:
    """Head-width groups whose module attribute (a :class:`~prunekit.graph.labels.Counter`, e.g. Llama's
    ``head_dim``) also counts a width that no group holds are dropped: the attribute has one value, so
    cutting one width without the other cannot be applied (Llama: the value width is a group, the
    query/key widths are kept by rotary; its MAC search's copy at max_ratio failed on it, #13)."""
    widths = [g for g in groups if g.kind == "head_dim"]
    if not widths:
        return groups
    covered = np.zeros(max(len(res.root), 1), dtype=bool)
    for g in groups:
        covered[np.asarray(g.unit_roots(range(len(g))), dtype=np.int64)] = True
    by_key: dict[tuple[str, str], list[np.ndarray]] = defaultdict(list)
    for c in store.counters:
        by_key[(c.module, c.attr)].append(np.unique(res.root[c.labels]))
    drop: set[int] = set()
    shared = [(key, regs) for key, regs in by_key.items() if len(regs) > 1]
    if not shared:
        return groups
    mine = np.zeros_like(covered)  # the width group's own roots, as a mask (np.isin per counter cost ~1 ms a model)
    for g in widths:
        roots = np.asarray(g.unit_roots(range(len(g))), dtype=np.int64)
        mine[roots] = True
        hit = [(key, regs) for key, regs in shared if any(mine[r].any() for r in regs)]
        mine[roots] = False
        for key, regs in hit:
            if any(not covered[r].any() for r in regs):
                drop.add(id(g))
                res.counter_blocked.update((int(r), key) for r in roots.tolist())
    return [g for g in groups if id(g) not in drop]


def factor_pairs(groups: list[Group], outer: str = "group", inner: str = "channel") -> list[tuple[Group, list[Group]]]:
    """``outer``-kind groups with their ``inner``-kind factor groups: a grouped conv's groups with its input
    and output widths (``group`` x ``channel``), an attention's heads with their width (``head`` x
    ``head_dim``): every inner group touches the outer group's tensor dims, has the same size as the
    others and belongs to no other outer group."""
    by_id = {g.id: g for g in groups}
    inner_dims: dict[tuple[str, int], set[int]] = {}
    for g in groups:
        if g.kind == inner:
            for key, _ in g.signature:
                inner_dims.setdefault(key, set()).add(g.id)
    partners: dict[int, set[int]] = {}
    for g in groups:
        if g.kind == outer:
            partners[g.id] = {pid for key, _ in g.signature for pid in inner_dims.get(key, ())}
    used: dict[int, int] = {}
    for pids in partners.values():
        for pid in pids:
            used[pid] = used.get(pid, 0) + 1
    out = []
    for gid, pids in partners.items():
        widths = [by_id[p] for p in sorted(pids)]
        if widths and all(used[p] == 1 for p in pids) and len({len(w) for w in widths}) == 1:
            out.append((by_id[gid], widths))
    return out


@dataclass
class Blocked:
    """Indices of one parameter dim that are in no group, and why: the op and module that kept them.

    ``op`` is the traced op (``getitem``, ``linear`` ...) or one of ``output`` (a model output),
    ``ignore`` / ``keep_outputs`` (the trace options), ``unused`` (never used by the traced
    forward), ``structure`` (no op makes them a removable unit)."""

    tensor: str
    dim: int
    size: int
    indices: list[int]
    op: str
    module: str
    reason: str

    def __str__(self) -> str:
        n = len(self.indices)
        part = "all" if n == self.size else f"{n} of {self.size}"
        where = self.module or "<top-level forward>"
        return f"`{self.tensor}` dim {self.dim} ({part} kept): pinned by op `{self.op}` in module `{where}`: " \
               f"{self.reason}"


def blocked_dims(graph, include_inert: bool = False, include_buffers: bool = False,
                 groups: list[Group] | None = None) -> list[Blocked]:
    """Every parameter dim (or part of one) that ended in no group, with the op and module that
    kept it. Dims no op couples to anything (a conv's kernel dims) are left out unless
    ``include_inert``; buffers are left out unless ``include_buffers`` (they follow a parameter).
    ``groups``: the result of ``build_groups(graph)`` (all kinds) when already at hand."""
    cached = getattr(graph, "_all_groups", None)
    if groups is None:
        groups = cached[1] if cached is not None and cached[0] == len(graph.store) else build_groups(graph)
    res: Resolver = graph._resolver
    store = res.store
    covered = np.zeros(max(len(store), 1), dtype=bool)
    for g in groups:
        if g._roots is not None:
            covered[g._roots] = True
        else:
            covered[np.fromiter((r for u in g.units for r in u), dtype=np.int64)] = True
    members = res.span[:, 1] - res.span[:, 0]
    wanted = set(graph.param_names) | (set(graph.buffer_names) if include_buffers else set())
    cache: dict[int, tuple[str, str, str] | None] = {}
    by_product: dict[int, tuple[str, str, str] | None] = {}

    def pinned(r: int, prefix: str = "") -> tuple[str, str, str]:
        op, mod = res.pin_site.get(r, ("", ""))
        return op, mod, prefix + res.pinned[r]

    def through(r: int) -> tuple[str, str, str] | None:
        """A pinned class that removing ``r`` (or the axis it belongs to) would remove."""
        if r in res.pinned:
            return pinned(r)
        met = res.failed.get(r)
        if met is not None and met in res.pinned:
            return pinned(met, "removing it would remove kept indices: ")
        return None

    def why(r: int) -> tuple[str, str, str] | None:
        """(op, module, reason) for an uncovered class; None when it is inert."""
        if r in cache:
            return cache[r]
        out = through(r)
        if out is None and res.is_element[r]:  # inside a reshape: the reason is on one of its axes
            for pi in res.touch.get(r, ()):
                if pi not in by_product:
                    found = None
                    for a in res.products[pi][1]:
                        for ar in (np.unique(a).tolist() if a is not None else ()):
                            found = found or through(ar)
                    by_product[pi] = found
                out = out or by_product[pi]
            if out is None:
                out = ("structure", "", "inside a reshape whose parts cannot be removed on their own")
        if out is None and r in res.touch:
            try:
                res.closure([r])
            except InvalidRemoval as exc:
                out = pinned(exc.root, "removing it would remove kept indices: ") \
                    if exc.root in res.pinned else ("structure", "", str(exc))
        if out is None and (include_inert or members[r] > 1 or res.kind_code[r] >= 0):
            out = ("structure", "", "no op makes these indices a removable unit (not an output dim of any "
                                    "parameter, nor coupled to one)")
        cache[r] = out
        return out

    records: list[Blocked] = []
    seen = set()
    for (name, dim), labels in store.param_dims.items():
        seen.add(name)
        if name not in wanted:
            continue
        roots = res.root[labels]
        open_idx = np.flatnonzero(~covered[roots])
        if not open_idx.size:
            continue
        uniq, inv = np.unique(roots[open_idx], return_inverse=True)
        reasons = [why(int(r)) for r in uniq.tolist()]
        by_reason: dict[tuple[str, str, str], list[int]] = {}
        for i, k in zip(open_idx.tolist(), inv.reshape(-1).tolist()):
            w = reasons[k]
            if w is not None:
                by_reason.setdefault(w, []).append(i)
        for (op, mod, reason), idx in by_reason.items():
            records.append(Blocked(name, dim, int(labels.size), idx, op, mod, reason))
    for name in graph.param_names:
        if name not in seen:
            shape = graph.shapes.get(name, ())
            owner = name.rsplit(".", 1)[0] if "." in name else ""
            for d, size in enumerate(shape):
                if size > 1:
                    records.append(Blocked(name, d, size, list(range(size)), "unused", owner,
                                           "the parameter is not used by the traced forward"))
    order = {n: i for i, n in enumerate(graph.param_names + graph.buffer_names)}
    records.sort(key=lambda b: (order.get(b.tensor, 1 << 30), b.dim, b.indices[:1]))
    return records


def index_renumbering(res: Resolver, closure: Iterable[int]) -> dict[str, list[int]]:
    """For a removal ``closure`` (label classes, as from :meth:`Resolver.closure`): every index
    buffer recorded in ``store.renumber`` that it touches -> the sorted values it removes. A hard
    apply replaces each such buffer by ``renumber_index(buffer, values)``
    (:mod:`prunekit.graph.rules.indexing`); a soft apply leaves it as it is."""
    gone = np.zeros(max(len(res.root), 1), dtype=bool)
    roots = np.fromiter(closure, dtype=np.int64)
    gone[roots] = True
    out: dict[str, list[int]] = {}
    for r in res.store.renumber:
        values = np.flatnonzero(gone[res.root[r.labels]])
        if values.size:
            out[r.buffer] = values.tolist()
    return out


def scale_folds(store: LabelStore, res: Resolver, gone: np.ndarray) -> list[tuple[str, int, list[int], float]]:
    """The slices a hard apply multiplies so that attentions keep their softmax scale (``res.folds``: the
    folds of ``store`` that hold):
    for each attention losing head-width units under SDPA's default ``1 / sqrt(width)``, its kept query
    rows (every parameter slice in their classes: weight rows, bias) times ``sqrt(kept / width)``.
    ``gone``: the removed classes (a mask over label roots). Raises PlanError when one row would need two
    factors (two attentions reading it with different widths)."""
    from ..errors import PlanError

    factor_of: dict[int, float] = {}
    for fold in res.folds:  # those that hold (Resolver._fold_holds); the others made their widths inexact
        width = res.root[fold.width]
        kept = int((~gone[width]).sum())
        if kept in (0, width.size):
            continue
        factor = math.sqrt(kept / width.size)
        for r in np.unique(res.root[fold.rows]).tolist():
            if gone[r]:
                continue
            if r in factor_of and abs(factor_of[r] - factor) > 1e-12:
                raise PlanError("a query row read by two attentions whose head widths are cut differently")
            factor_of[r] = factor
    by_factor: dict[float, list[int]] = defaultdict(list)
    for r, f in factor_of.items():
        by_factor[f].append(r)
    out = []
    for f, roots in sorted(by_factor.items()):
        for (name, dim), idx in res.slices(sorted(roots)).items():
            out.append((name, dim, idx, f))
    return out
