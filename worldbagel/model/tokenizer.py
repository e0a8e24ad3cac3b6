"""The BAGEL tokenizer: the model folder's Qwen2 BPE tokenizer plus the four special tokens BAGEL uses.

As the official `add_special_tokens` (spec §2.5), `<|im_start|>`, `<|im_end|>`, `<|vision_start|>` and
`<|vision_end|>` are added when missing (none are for Qwen2.5 vocabularies, whose ids are 151644, 151645,
151652, 151653). `encode` adds no special tokens: every text segment is framed by the caller as
`<|im_start|> + tokens + <|im_end|>`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worldbagel.errors import CheckpointError

logger = logging.getLogger(__name__)

BOS, EOS, SOI, EOI = "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>"
#: Files a folder may hold; either vocab.json + merges.txt or tokenizer.json is required.
TOKENIZER_FILES = (
    "vocab.json",
    "merges.txt",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
)


@dataclass(frozen=True)
class SpecialTokens:
    """Ids of the tokens BAGEL frames text and images with (keys as the official `new_token_ids`)."""

    bos_token_id: int
    """`<|im_start|>`: opens every text segment."""
    eos_token_id: int
    """`<|im_end|>`: closes every text segment; ends text generation."""
    start_of_image: int
    """`<|vision_start|>`: precedes every image's tokens."""
    end_of_image: int
    """`<|vision_end|>`: follows every image's tokens."""


class BagelTokenizer:
    """A transformers Qwen2 tokenizer with BAGEL's special-token ids."""

    def __init__(self, hf_tokenizer: Any):
        self.hf = hf_tokenizer
        missing = [t for t in (BOS, EOS, SOI, EOI) if t not in hf_tokenizer.get_vocab()]
        # The official add_special_tokens calls tokenizer.add_tokens (not as "special" tokens).
        self.num_new_tokens = hf_tokenizer.add_tokens(missing) if missing else 0
        if self.num_new_tokens:
            logger.info("added %d missing special tokens to the tokenizer: %s", self.num_new_tokens, missing)
        ids = hf_tokenizer.convert_tokens_to_ids([BOS, EOS, SOI, EOI])
        self.special = SpecialTokens(*ids)

    # ------------------------------------------------------------------------------------ loading
    @classmethod
    def from_folder(cls, folder: str | Path) -> BagelTokenizer:
        """Load the tokenizer files of a BAGEL model folder (vocab.json + merges.txt or tokenizer.json)."""
        folder = Path(folder)
        has_bpe = (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()
        if not (has_bpe or (folder / "tokenizer.json").is_file()):
            raise CheckpointError(
                f"no tokenizer in {folder}: a BAGEL model folder needs vocab.json + merges.txt (or "
                "tokenizer.json) and tokenizer_config.json from the Qwen2.5 release"
            )
        # lazy: transformers takes seconds to import; only loading a tokenizer needs it
        from transformers import Qwen2Tokenizer

        try:
            hf = Qwen2Tokenizer.from_pretrained(str(folder), local_files_only=True)
        except Exception as exc:  # transformers raises many types for unreadable files
            raise CheckpointError(f"cannot load the tokenizer files in {folder}: {exc}") from exc
        return cls(hf)

    # ------------------------------------------------------------------------------------ use
    def encode(self, text: str) -> list[int]:
        """Token ids of `text` with no special tokens added."""
        return list(self.hf.encode(text, add_special_tokens=False))

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        """Text of `ids` (special tokens shown unless `skip_special_tokens`)."""
        return self.hf.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def __len__(self) -> int:
        """Number of ids in use, including added tokens (must not exceed the embedding rows)."""
        return len(self.hf)

    @property
    def bos_token_id(self) -> int:
        return self.special.bos_token_id

    @property
    def eos_token_id(self) -> int:
        return self.special.eos_token_id

    @property
    def start_of_image(self) -> int:
        return self.special.start_of_image

    @property
    def end_of_image(self) -> int:
        return self.special.end_of_image

    # ------------------------------------------------------------------------------------ saving
    def save(self, folder: str | Path) -> None:
        """Write tokenizer files that both transformers and the official (slow, vocab.json + merges.txt)
        tokenizer read back to the same ids. Each file is replaced atomically."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".tokenizer-tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            self.hf.save_pretrained(str(tmp))
            self.hf.backend_tokenizer.model.save(str(tmp))  # vocab.json + merges.txt for slow tokenizers
            added = {tok.content: int(i) for i, tok in sorted(self.hf.added_tokens_decoder.items())}
            cfg_file = tmp / "tokenizer_config.json"
            cfg = json.loads(cfg_file.read_text()) if cfg_file.exists() else {}
            cfg.setdefault(
                "added_tokens_decoder",
                {
                    str(i): {
                        "content": t.content,
                        "lstrip": t.lstrip,
                        "normalized": t.normalized,
                        "rstrip": t.rstrip,
                        "single_word": t.single_word,
                        "special": t.special,
                    }
                    for i, t in sorted(self.hf.added_tokens_decoder.items())
                },
            )
            cfg.setdefault("tokenizer_class", "Qwen2Tokenizer")
            cfg_file.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")
            (tmp / "added_tokens.json").write_text(json.dumps(added, indent=2, ensure_ascii=False) + "\n")
            (tmp / "special_tokens_map.json").write_text(
                json.dumps(self.hf.special_tokens_map, indent=2, ensure_ascii=False) + "\n"
            )
            for f in tmp.iterdir():
                os.replace(f, folder / f.name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def load_tokenizer(folder: str | Path) -> BagelTokenizer:
    """Load a BAGEL model folder's tokenizer (see `BagelTokenizer.from_folder`)."""
    return BagelTokenizer.from_folder(folder)
