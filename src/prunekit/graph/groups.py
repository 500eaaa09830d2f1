"""Groups: the sets of coupled slices that are removed together, and the closure that finds them.

A *unit* is one removable thing (a channel, a head, a head-width offset); its closure lists
every ``(tensor, dim, index)`` slice that must go with it. A :class:`Group` gathers the units
of one coupled dimension (e.g. the 64 channels shared by ``conv1``, ``bn1`` and the next
conv's input), so a ratio can be applied to it.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

from .labels import LabelStore


class InvalidRemoval(Exception):
    """The requested set of units cannot be removed on its own."""


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
            key = np.repeat(np.arange(len(arrays)), [a.size for a in arrays])
            idx = np.concatenate([np.arange(a.size) for a in arrays])
        else:
            lab = key = idx = np.zeros(0, dtype=np.int64)
        r = self.root[lab]
        order = np.lexsort((idx, key, r))
        self.m_root, self.m_key, self.m_idx = r[order], key[order], idx[order]
        uniq, first, counts = np.unique(self.m_root, return_index=True, return_counts=True)
        self.ptr = dict(zip(uniq.tolist(), zip(first.tolist(), (first + counts).tolist())))
        self._mk: list[int] | None = None
        self._mi: list[int] | None = None
        self.pinned: dict[int, str] = {}
        for lab, why in store.pinned.items():
            self.pinned.setdefault(int(self.root[lab]), why)
        self.inexact = {int(self.root[lab]) for lab in store.inexact}
        active = np.asarray(store.active, dtype=bool)
        self.active_roots = set(np.unique(self.root[active]).tolist()) if n else set()
        self.kind: dict[int, str] = {}
        for lab in np.nonzero(active)[0].tolist():
            self.kind.setdefault(int(self.root[lab]), store.kind[lab])
        self._mask = np.zeros(max(n, 1), dtype=bool)
        self.products = []
        self.touch: dict[int, list[int]] = defaultdict(list)
        self.element_roots: set[int] = set()
        for p in store.products:
            el = self.root[p.elements]
            axes = [self.root[a] if a is not None else None for a in p.axes]
            idx = len(self.products)
            self.products.append((el, axes))
            for r in np.unique(el).tolist():
                self.touch[r].append(idx)
            self.element_roots.update(np.unique(el).tolist())
            for a in axes:
                if a is not None:
                    for r in np.unique(a).tolist():
                        self.touch[r].append(idx)

    def free_roots(self) -> list[int]:
        free = self.active_roots - self.element_roots - set(self.pinned)
        return sorted(free)

    def closure(self, roots: Iterable[int]) -> set[int]:
        """Everything that must go with ``roots``: follow products until nothing changes."""
        removed = set(int(r) for r in roots)
        pending = set()
        for r in removed:
            pending.update(self.touch.get(r, ()))
        if not pending:
            bad = removed & self.pinned.keys()
            if bad:
                raise InvalidRemoval(self.pinned[next(iter(bad))])
            return removed
        mask = self._mask
        mask[list(removed)] = True
        try:
            while pending:
                todo, pending = pending, set()
                for pi in sorted(todo):
                    el, axes = self.products[pi]
                    direct = mask[el]
                    ax_rm = [mask[a] if a is not None else np.zeros(el.shape[k], bool) for k, a in enumerate(axes)]
                    implied = self._implied(ax_rm, el.shape)
                    cur = direct | implied
                    changed = False
                    for k, a in enumerate(axes):
                        if a is None:
                            continue
                        other = tuple(j for j in range(el.ndim) if j != k)
                        full = cur.all(axis=other) if other else cur
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
                    cand = cand[~mask[cand]]
                    if cand.size:
                        new_roots = np.unique(cand)
                        mask[new_roots] = True
                        for r in new_roots.tolist():
                            removed.add(r)
                            pending.update(self.touch.get(r, ()))
        finally:
            mask[list(removed)] = False
        bad = removed & self.pinned.keys()
        if bad:
            raise InvalidRemoval(self.pinned[next(iter(bad))])
        return removed

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
        spans = [self.ptr[r] for r in roots if r in self.ptr]
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

    def __init__(self, id: int, kind: str, units: list[frozenset[int]], exact: bool, signature: tuple,
                 resolver: Resolver):
        self.id = id
        self.kind = kind
        self.units = units
        self.exact = exact
        self.signature = signature
        self._res = resolver
        self._slices: list[dict[tuple[str, int], list[int]]] | None = None

    def __len__(self) -> int:
        return len(self.units)

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
        if all(len(u) == 1 for u in self.units):  # vectorized: one span of rows per unit
            spans = np.array([res.ptr.get(next(iter(u)), (0, 0)) for u in self.units], dtype=np.int64).reshape(-1, 2)
            lengths = spans[:, 1] - spans[:, 0]
            total = int(lengths.sum())
            offsets = np.cumsum(lengths) - lengths
            rows = np.arange(total) - np.repeat(offsets, lengths) + np.repeat(spans[:, 0], lengths)
            unit_ids = np.repeat(np.arange(len(self.units)), lengths)
            return unit_ids, res.m_key[rows], res.m_idx[rows], res.keys
        units, keys, idx = [], [], []
        for i, u in enumerate(self.units):
            for r in u:
                span = res.ptr.get(r)
                if span is not None:
                    a, b = span
                    units.append(np.full(b - a, i, dtype=np.int64))
                    keys.append(res.m_key[a:b])
                    idx.append(res.m_idx[a:b])
        if not units:
            z = np.zeros(0, dtype=np.int64)
            return z, z, z, res.keys
        return np.concatenate(units), np.concatenate(keys), np.concatenate(idx), res.keys

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


def _simple_signatures(res: Resolver, roots: np.ndarray) -> dict[int, tuple[tuple, int]]:
    """Signature ``((tensor, dim), count)...`` and first index of each single-class unit.

    Vectorized: each root's run of (key, count) pairs is hashed with numpy; the tuple is built
    once per distinct hash (equal hashes are checked against the first root's pairs).
    """
    if roots.size == 0:
        return {}
    rows = np.isin(res.m_root, roots)
    r, k, ix = res.m_root[rows], res.m_key[rows], res.m_idx[rows]
    change = np.ones(r.size, dtype=bool)
    change[1:] = (r[1:] != r[:-1]) | (k[1:] != k[:-1])
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
    # bucket roots by (hash, length); verify every root's pairs against its bucket's first root
    hv = np.stack([h.view(np.int64), npairs])
    _, first_of, inv = np.unique(hv, axis=1, return_index=True, return_inverse=True)
    inv = inv.reshape(-1)
    rep_start = rstarts[first_of[inv]]
    same = (pk == pk[np.repeat(rep_start, npairs) + pos]) & (counts == counts[np.repeat(rep_start, npairs) + pos])
    ok = np.logical_and.reduceat(same, rstarts)
    sig_of_bucket: dict[int, tuple] = {}
    out: dict[int, tuple[tuple, int]] = {}

    def build(a: int, n: int) -> tuple:
        return tuple((keys[kk], cc) for kk, cc in zip(pk[a:a + n].tolist(), counts[a:a + n].tolist()))

    for root, b, n, a, good in zip(pr[rstarts].tolist(), inv.tolist(), npairs.tolist(), rstarts.tolist(),
                                   ok.tolist()):
        if good:
            sig = sig_of_bucket.get(b)
            if sig is None:
                sig = sig_of_bucket[b] = build(a, n)
        else:  # hash collision: use the true signature
            sig = build(a, n)
        out[root] = (sig, int(pfirst[a]))
    return out


def build_groups(graph, kinds: Iterable[str] | None = None) -> list[Group]:
    res = Resolver(graph.store)
    graph._resolver = res
    wanted = set(kinds) if kinds is not None else None
    order = {n: i for i, n in enumerate(graph.param_names + graph.buffer_names)}
    buckets: dict[tuple, list] = defaultdict(list)
    seen: set[frozenset[int]] = set()
    free = [r for r in res.free_roots() if wanted is None or res.kind.get(r, "channel") in wanted]
    simple = [r for r in free if r not in res.touch]
    for r, (sig, first_idx) in _simple_signatures(res, np.asarray(simple, dtype=np.int64)).items():
        buckets[(res.kind.get(r, "channel"), sig)].append((first_idx, frozenset((r,))))
    for r in free:
        if r not in res.touch:
            continue
        try:
            closure = res.closure([r])
        except InvalidRemoval:
            continue
        key = frozenset(closure)
        if key in seen:  # the same unit reached from another root (e.g. a head in every layer)
            continue
        seen.add(key)
        sl = res.slices(closure)
        if not sl:
            continue
        sig = tuple((k, len(v)) for k, v in sl.items())
        buckets[(res.kind.get(r, "channel"), sig)].append((next(iter(sl.values()))[0], key))
    groups = []
    for (kind, sig), items in buckets.items():
        items.sort(key=lambda it: it[0])  # by index in the group's first tensor
        exact = not any(res.inexact & c for _, c in items)
        groups.append(Group(0, kind, [c for _, c in items], exact, sig, res))
    groups.sort(key=lambda g: (order.get(g.root[0], 1 << 30), g.root, g.kind))
    for i, g in enumerate(groups):
        g.id = i
    return groups
