"""Chat with a trained model in the terminal.

    python -m scripts.chat_cli                  # interactive; 'clear' starts over, 'quit' exits
    python -m scripts.chat_cli -p "Why is the sky blue?"   # one answer, then exit
    python -m scripts.chat_cli -i mid -g d20 -s 800 -t 0.6 -k 50

Tokens are printed as they are generated. Calculator tool calls are shown inline as
"[python: expr = result]"; they are kept in the conversation as tool parts.
"""
from __future__ import annotations

import argparse
import sys

from nanochat.common import UserError, compute_init, print0, run_main


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(allow_abbrev=False, description="Chat with a nanochat model")
    ap.add_argument("-i", "--source", choices=["base", "mid", "sft", "rl"], default="sft", help="which checkpoints")
    ap.add_argument("-g", "--model-tag", default=None, help="model tag (default: the only one there)")
    ap.add_argument("-s", "--step", type=int, default=None, help="checkpoint step (default: newest complete)")
    ap.add_argument("-p", "--prompt", default="", help="answer this one prompt and exit")
    ap.add_argument("-t", "--temperature", type=float, default=0.6, help="sampling temperature (0 = greedy)")
    ap.add_argument("-k", "--top-k", type=int, default=50, help="top-k sampling (0 = no limit)")
    ap.add_argument("-m", "--max-tokens", type=int, default=512, help="max tokens per answer")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--device-type", default="", help="cuda|cpu|mps (default: autodetect)")
    return ap


class Chat:
    """Keeps the conversation and streams the model's answers."""

    def __init__(self, model, tokenizer, device, temperature=0.6, top_k=50, max_tokens=512, seed=42, out=None):
        from nanochat.engine import Engine
        self.model, self.tokenizer, self.device = model, tokenizer, device
        self.engine = Engine(model, tokenizer)
        self.temperature, self.top_k, self.max_tokens, self.seed = temperature, top_k, max_tokens, seed
        self.out = out or sys.stdout
        self.messages: list[dict] = []
        self.turn = 0
        sp = tokenizer.encode_special
        self.stop = {sp("<|assistant_end|>"), tokenizer.get_bos_token_id()}
        self.pretty = {sp("<|python_start|>"): "[python: ", sp("<|python_end|>"): "",
                       sp("<|output_start|>"): " = ", sp("<|output_end|>"): "]"}
        cfg = getattr(model, "config", None)
        self.context = 10 * cfg.sequence_len if cfg is not None and hasattr(cfg, "sequence_len") else None

    def clear(self):
        self.messages = []

    def _render(self, text: str) -> list[int]:
        """Prompt ids for the conversation plus `text`; the oldest exchanges are dropped if too long."""
        def render():
            return self.tokenizer.render_for_completion({"messages": self.messages + [{"role": "user", "content": text}]})
        ids = render()
        while self.context and len(ids) + 64 > self.context and len(self.messages) >= 2:
            self.messages = self.messages[2:]
            ids = render()
        if self.context and len(ids) + 64 > self.context:  # one huge message: keep its end
            ids = ids[-(self.context - 64):]
        return ids

    def _display(self, ids: list[int]) -> str:
        text, chunk = [], []
        for t in ids:
            if t in self.pretty:
                if chunk:
                    text.append(self.tokenizer.decode(chunk))
                    chunk = []
                text.append(self.pretty[t])
            else:
                chunk.append(t)
        if chunk:
            text.append(self.tokenizer.decode(chunk))
        return "".join(text)

    def respond(self, text: str) -> str:
        import contextlib

        import torch
        from nanochat.engine import tokens_to_parts
        prompt = self._render(text)
        generated: list[int] = []
        shown = ""
        ctx = torch.autocast("cuda", dtype=torch.bfloat16) if self.device.type == "cuda" else contextlib.nullcontext()
        with ctx:
            for column, _ in self.engine.generate(prompt, num_samples=1, max_tokens=self.max_tokens,
                                                  temperature=self.temperature, top_k=self.top_k or None,
                                                  seed=self.seed + self.turn):
                tok = column[0]
                if tok in self.stop:
                    break
                generated.append(tok)
                now = self._display(generated)
                if now.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for the next token
                    continue
                self.out.write(now[len(shown):])
                self.out.flush()
                shown = now
        final = self._display(generated)
        if final != shown:
            self.out.write(final[len(shown):])
        self.out.write("\n")
        self.out.flush()
        self.turn += 1
        content = tokens_to_parts(self.tokenizer, generated)
        self.messages += [{"role": "user", "content": text}, {"role": "assistant", "content": content or ""}]
        return final


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    if args.max_tokens <= 0:
        raise UserError("--max-tokens must be positive")
    _, _, _, _, device = compute_init(args.device_type, seed=args.seed)
    from nanochat.checkpoint_manager import load_model
    model, tokenizer, meta = load_model(args.source, device, "eval", args.model_tag, args.step)
    chat = Chat(model, tokenizer, device, args.temperature, args.top_k, args.max_tokens, args.seed)
    if args.prompt:
        sys.stdout.write("Assistant: ")
        chat.respond(args.prompt)
        return
    print0(f"nanochat ({args.source}, step {meta.get('step')}). Type 'clear' to start over, 'quit' to exit.")
    while True:
        try:
            text = input("\nUser: ").strip()
        except (EOFError, KeyboardInterrupt):
            print()
            return
        if not text:
            continue
        if text.lower() in ("quit", "exit"):
            return
        if text.lower() == "clear":
            chat.clear()
            print("(conversation cleared)")
            continue
        sys.stdout.write("\nAssistant: ")
        chat.respond(text)


if __name__ == "__main__":
    run_main(main)
