"""Tokenizer loading, BAGEL's special-token ids and a save round trip readable by a vocab/merges-only loader."""

from __future__ import annotations

import json
import shutil

import pytest

from worldbagel.errors import CheckpointError
from worldbagel.model.tokenizer import BOS, EOI, EOS, SOI, SpecialTokens, load_tokenizer

TEXT = "the agent turns left 30 degrees and goes forward"


@pytest.fixture(scope="module")
def tok(tiny_dir):
    return load_tokenizer(tiny_dir)


def test_special_ids_match_added_tokens_json(tok, tiny_dir):
    added = json.loads((tiny_dir / "added_tokens.json").read_text())
    assert tok.special == SpecialTokens(added[BOS], added[EOS], added[SOI], added[EOI])
    assert tok.special == SpecialTokens(389, 390, 391, 392)
    assert (tok.bos_token_id, tok.eos_token_id, tok.start_of_image, tok.end_of_image) == (389, 390, 391, 392)
    assert tok.num_new_tokens == 0
    assert len(tok) == 393


def test_encode_adds_no_special_tokens_and_decodes(tok):
    ids = tok.encode(TEXT)
    assert ids and all(i not in (389, 390, 391, 392) for i in ids)
    assert tok.decode(ids) == TEXT
    framed = [tok.bos_token_id, *ids, tok.eos_token_id]
    assert tok.decode(framed) == f"{BOS}{TEXT}{EOS}"
    assert tok.decode(framed, skip_special_tokens=False).startswith(BOS)
    # a special token written in text maps to its id
    assert tok.encode(f"a{SOI}b")[1] == 391


def test_missing_special_tokens_are_added(tiny_dir, tmp_path):
    folder = tmp_path / "tok"
    folder.mkdir()
    for f in ("vocab.json", "merges.txt"):
        shutil.copy(tiny_dir / f, folder / f)
    tok = load_tokenizer(folder)
    assert tok.num_new_tokens == 4
    vocab = json.loads((tiny_dir / "vocab.json").read_text())
    base = len(vocab)
    assert tok.special == SpecialTokens(base, base + 1, base + 2, base + 3)


def test_save_round_trip_and_vocab_merges_only_reload(tok, tmp_path):
    tok.save(tmp_path)
    for f in ("vocab.json", "merges.txt", "tokenizer_config.json", "added_tokens.json"):
        assert (tmp_path / f).is_file(), f
    again = load_tokenizer(tmp_path)
    assert again.special == tok.special and again.encode(TEXT) == tok.encode(TEXT)
    # the official loader reads only vocab.json + merges.txt + the added tokens
    (tmp_path / "tokenizer.json").unlink()
    slow = load_tokenizer(tmp_path)
    assert slow.special == tok.special and slow.encode(TEXT) == tok.encode(TEXT) and len(slow) == len(tok)


def test_folder_without_tokenizer_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="vocab.json") as info:
        load_tokenizer(tmp_path)
    assert str(tmp_path) in str(info.value)
