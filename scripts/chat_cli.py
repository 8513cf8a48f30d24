"""Chat with a trained model in the terminal.

    python -m scripts.chat_cli                  # interactive; 'clear' starts over, 'quit' exits
    python -m scripts.chat_cli -p "Why is the sky blue?"   # one answer, then exit
    python -m scripts.chat_cli -i mid -g d20 -s 800 -t 0.6 -k 50

Tokens are printed as they are generated. Calculator tool calls are shown inline as
"[python: expr = result]"; they are kept in the conversation as tool parts (nanochat.chat.Chat).
"""
from __future__ import annotations

import argparse
import sys

from nanochat.chat import Chat, add_model_args, check_sampling
from nanochat.common import UserError, compute_init, print0, run_main

__all__ = ["Chat", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(allow_abbrev=False, description="Chat with a nanochat model")
    add_model_args(ap)
    ap.add_argument("-p", "--prompt", default="", help="answer this one prompt and exit")
    ap.add_argument("-t", "--temperature", type=float, default=0.6, help="sampling temperature: 0 (greedy) or 0.01..2")
    ap.add_argument("-k", "--top-k", type=int, default=50, help="top-k sampling (0 = no limit)")
    ap.add_argument("-m", "--max-tokens", type=int, default=512, help="max tokens per answer")
    ap.add_argument("--seed", type=int, default=42)
    return ap


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    if args.max_tokens <= 0:
        raise UserError("--max-tokens must be positive")
    try:  # before any model loads: a bad value is one line, not a sampler traceback
        args.temperature, args.top_k = check_sampling(args.temperature, args.top_k,
                                                      names=("-t/--temperature", "-k/--top-k"))
    except ValueError as exc:
        raise UserError(str(exc)) from None
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
