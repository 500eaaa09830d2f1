"""Progress bars for long steps (tqdm when installed, nothing otherwise)."""
from __future__ import annotations


def progress_bar(total: int | None, enabled: bool, desc: str):
    """A ``tqdm`` bar, or ``None`` when disabled or tqdm is missing (callers check)."""
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, leave=False)
