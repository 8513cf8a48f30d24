"""nanochat.tokenizer and scripts/tok_train.py / tok_eval.py on a small generated corpus."""
from __future__ import annotations

import json
import pickle
import random
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from conftest import subprocess_env
from nanochat.common import UserError
from nanochat.tokenizer import (MIN_VOCAB_SIZE, SPECIAL_TOKENS, SPLIT_PATTERN, Tokenizer, get_token_bytes,
                                get_tokenizer)

WORDS = ("the of and to in a is that for it as was with be by on not he this are or his from at which but have an "
         "they you were her she there been one all we their has would when if so no will can more about "
         "nation people government congress union state peace war law great public country year time").split()
UNICODE_BITS = ["café", "naïve", "日本語", "中文字符", "😀", "👍🏽", "e\u0301", "a\u0308\u0304", "Ελληνικά", "русский",
                "عربى", "\t", "\n", "\r\n", "  ", "1234567", "3.14", "<|bos|>", "<|user_start|>", "\x00", "𝔘𝔫𝔦"]


def make_corpus(n_docs=300, seed=0) -> list[str]:
    rng = random.Random(seed)
    docs = []
    for _ in range(n_docs):
        words = []
        for _ in range(rng.randint(20, 120)):
            r = rng.random()
            if r < 0.85:
                words.append(rng.choice(WORDS))
            elif r < 0.95:
                words.append(str(rng.randint(0, 99999)))
            else:
                words.append(rng.choice(UNICODE_BITS))
        text = " ".join(words).capitalize() + "."
        docs.append(text.replace(" and ", ", and ").replace(" but ", "; but "))
    return docs


def random_unicode(rng: random.Random, n: int) -> str:
    pools = [
        lambda: rng.choice(WORDS),
        lambda: rng.choice(UNICODE_BITS),
        lambda: chr(rng.randint(0x20, 0x7E)),
        lambda: chr(rng.randint(0xA0, 0x2FF)),          # Latin-1 / extended, combining marks (0x300..)
        lambda: chr(rng.randint(0x300, 0x36F)),          # bare combining marks
        lambda: chr(rng.randint(0x4E00, 0x9FFF)),        # CJK
        lambda: chr(rng.randint(0x1F300, 0x1FAFF)),      # emoji
        lambda: rng.choice([" ", "\n", "\n\n", "\t", "   "]),
    ]
    return "".join(rng.choice(pools)() for _ in range(n))


@pytest.fixture(scope="module")
def corpus():
    return make_corpus()


@pytest.fixture(scope="module")
def tok(corpus):
    return Tokenizer.train_from_iterator(iter(corpus), 512)


def test_vocab_layout(tok):
    n_ranks = len(tok.mergeable_ranks)
    assert tok.get_vocab_size() == 512 == n_ranks + len(SPECIAL_TOKENS)
    assert [tok.encode_special(s) for s in SPECIAL_TOKENS] == list(range(n_ranks, n_ranks + len(SPECIAL_TOKENS)))
    assert tok.get_bos_token_id() == tok.encode_special("<|bos|>")
    assert tok.id_to_token(ord("a")) == "a"
    with pytest.raises(KeyError):
        tok.encode_special("<|nope|>")
    assert "\\p{N}{1,2}" in SPLIT_PATTERN and tok.pattern == SPLIT_PATTERN


def test_round_trip_arbitrary_unicode(tok):
    rng = random.Random(1234)
    texts = [random_unicode(rng, rng.randint(0, 200)) for _ in range(300)] + ["", " ", "\n" * 5, "\u200d" * 3]
    for t in texts:
        assert tok.decode(tok.encode(t)) == t
    big = texts * 4   # > 64 KB in total: exercises the threaded batch path
    assert sum(map(len, big)) > 64 * 1024
    for threads in (1, 2, 4):
        batch = tok.encode(big, num_threads=threads)
        assert batch == [tok.encode(t) for t in big]
        assert [tok.decode(ids) for ids in batch] == big


def test_specials_never_from_plain_text(tok):
    n_ranks = len(tok.mergeable_ranks)
    text = "<|bos|>hello<|user_start|> <|assistant_end|><|python_start|>x<|output_end|>"
    for ids in [tok.encode(text), *tok.encode([text, text * 3], num_threads=2)]:
        assert all(i < n_ranks for i in ids)
    assert tok.decode(tok.encode(text)) == text
    ids = tok.encode("hi", prepend="<|bos|>", append=tok.encode_special("<|assistant_end|>"))
    assert ids[0] == tok.get_bos_token_id() and ids[-1] == tok.encode_special("<|assistant_end|>")
    assert ids[1:-1] == tok.encode("hi")
    rows = tok.encode(["a", "b"], prepend=tok.get_bos_token_id())
    assert all(r[0] == tok.get_bos_token_id() for r in rows)


CONV = {"messages": [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is 2+2? <|assistant_start|>"},
    {"role": "assistant", "content": [
        {"type": "text", "text": "Let me compute."},
        {"type": "python", "text": "print(2+2)"},
        {"type": "python_output", "text": "4\n"},
        {"type": "text", "text": "It is 4."},
    ]},
    {"role": "user", "content": "Thanks"},
    {"role": "assistant", "content": "You're welcome."},
]}


def test_render_conversation_mask(tok):
    ids, mask = tok.render_conversation(CONV)
    s = tok.encode_special
    e = tok.encode
    expected = [  # (tokens, mask) built independently
        ([s("<|bos|>")], 0),
        ([s("<|user_start|>")] + e("You are terse.\n\nWhat is 2+2? <|assistant_start|>") + [s("<|user_end|>")], 0),
        ([s("<|assistant_start|>")], 0),
        (e("Let me compute."), 1),
        ([s("<|python_start|>")] + e("print(2+2)") + [s("<|python_end|>")], 1),
        ([s("<|output_start|>")] + e("4\n") + [s("<|output_end|>")], 0),
        (e("It is 4.") + [s("<|assistant_end|>")], 1),
        ([s("<|user_start|>")] + e("Thanks") + [s("<|user_end|>")], 0),
        ([s("<|assistant_start|>")], 0),
        (e("You're welcome.") + [s("<|assistant_end|>")], 1),
    ]
    exp_ids = [t for toks, _ in expected for t in toks]
    exp_mask = [m for toks, m in expected for _ in toks]
    assert ids == exp_ids and mask == exp_mask
    trained = tok.decode([i for i, m in zip(ids, mask) if m])
    assert trained == ("Let me compute.<|python_start|>print(2+2)<|python_end|>It is 4.<|assistant_end|>"
                       "You're welcome.<|assistant_end|>")


def test_render_truncation_and_completion(tok):
    ids, mask = tok.render_conversation(CONV)
    short_ids, short_mask = tok.render_conversation(CONV, max_tokens=12)
    assert short_ids == ids[:12] and short_mask == mask[:12] and len(short_ids) == 12
    prompt = tok.render_for_completion(CONV)
    assert prompt[-1] == tok.encode_special("<|assistant_start|>")
    head = {"messages": CONV["messages"][:-1]}
    head_ids, _ = tok.render_conversation(head)
    assert prompt == head_ids + [tok.encode_special("<|assistant_start|>")]
    assert tok.render_for_completion(head) == prompt    # ending with the user turn works too


@pytest.mark.parametrize("messages", [
    [{"role": "assistant", "content": "hi"}],
    [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
    [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "assistant", "content": "c"}],
    [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}],
    [{"role": "user", "content": "a"}, {"role": "assistant", "content": [{"type": "image", "text": "x"}]}],
    [{"role": "user", "content": ["not", "a", "string"]}],
    [],
])
def test_render_rejects_bad_conversations(tok, messages):
    with pytest.raises(ValueError):
        tok.render_conversation({"messages": messages})


def test_pickle_tokenizer(tok):
    clone = pickle.loads(pickle.dumps(tok))
    text = "Peace and war, 2024 😀"
    assert clone.encode(text) == tok.encode(text) and clone.get_vocab_size() == tok.get_vocab_size()


def test_training_is_reproducible(corpus, tok):
    again = Tokenizer.train_from_iterator(iter(corpus), 512)
    assert again.mergeable_ranks == tok.mergeable_ranks


def test_vocab_too_small_rejected(corpus):
    with pytest.raises(UserError, match=str(MIN_VOCAB_SIZE)):
        Tokenizer.train_from_iterator(iter(corpus), 260)


def test_save_load_round_trip(base_dir, tok):
    tok.save(base_dir / "tokenizer")
    data = pickle.loads((base_dir / "tokenizer" / "tokenizer.pkl").read_bytes())
    assert set(data) == {"pattern", "mergeable_ranks", "special_tokens"}
    assert type(data["mergeable_ranks"]) is dict and all(type(k) is bytes for k in data["mergeable_ranks"])
    loaded = get_tokenizer()
    assert loaded.mergeable_ranks == tok.mergeable_ranks and loaded.special_tokens == tok.special_tokens
    sample = "The nation, 12345 😀 <|bos|>"
    assert loaded.encode(sample) == tok.encode(sample)
    tb = get_token_bytes("cpu")
    assert tb.dtype == torch.int32 and tb.shape == (tok.get_vocab_size(),)
    n_ranks = len(tok.mergeable_ranks)
    assert tb[n_ranks:].tolist() == [0] * len(SPECIAL_TOKENS)
    assert all(tb[r].item() == len(b) for b, r in tok.mergeable_ranks.items())


def test_missing_and_corrupt_tokenizer(base_dir, tok):
    with pytest.raises(UserError, match="make tokenizer"):
        get_tokenizer()
    with pytest.raises(UserError, match="make tokenizer"):
        get_token_bytes("cpu")
    d = tok.save(base_dir / "tokenizer")
    pkl = d / "tokenizer.pkl"
    good = pkl.read_bytes()
    pkl.write_bytes(good[: len(good) // 2])
    with pytest.raises(UserError, match="corrupt.*make tokenizer"):
        get_tokenizer()
    pkl.write_bytes(pickle.dumps({"pattern": 1}))
    with pytest.raises(UserError, match="corrupt.*make tokenizer"):
        get_tokenizer()
    pkl.write_bytes(pickle.dumps(Tokenizer))   # a class reference: refused, never imported/executed
    with pytest.raises(UserError, match="corrupt.*make tokenizer"):
        get_tokenizer()
    pkl.write_bytes(good)
    assert get_tokenizer().get_vocab_size() == 512
    (d / "token_bytes.pt").write_bytes(b"garbage")
    with pytest.raises(UserError, match="corrupt.*make tokenizer"):
        get_token_bytes("cpu")


def test_tok_train_and_eval_scripts(base_dir, repo_root, corpus):
    data = base_dir / "base_data"
    data.mkdir()
    pq.write_table(pa.table({"text": corpus[:200]}), data / "shard_00000.parquet", row_group_size=50)
    pq.write_table(pa.table({"text": corpus[200:]}), data / "shard_01822.parquet", row_group_size=50)
    env = subprocess_env(base_dir)
    res = subprocess.run([sys.executable, "-m", "scripts.tok_train", "--vocab-size", "400", "--max-chars", "20000",
                          "--doc-cap", "300"], cwd=repo_root, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    section = json.loads((base_dir / "report" / "tokenizer-training.json").read_text())
    assert section["vocab_size"] == 400 and section["max_chars"] == 20000 and section["doc_cap"] == 300
    assert 20000 <= section["num_chars"] < 20300            # stops right after max_chars, each doc <= 300 chars
    assert (base_dir / "tokenizer" / "tokenizer.pkl").exists() and (base_dir / "tokenizer" / "token_bytes.pt").exists()
    res = subprocess.run([sys.executable, "-m", "scripts.tok_eval", "--skip-reference"], cwd=repo_root, env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "unavailable offline" in res.stdout
    ev = json.loads((base_dir / "report" / "tokenizer-evaluation.json").read_text())
    assert ev["train_roundtrip_ok"] is True and ev["val_roundtrip_ok"] is True and ev["val_bytes_per_token"] > 1
    res = subprocess.run([sys.executable, "-m", "scripts.tok_train", "--vocab-size", "100"], cwd=repo_root, env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and res.stderr.startswith("error: ") and "too small" in res.stderr
