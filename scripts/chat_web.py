"""Chat with a trained model in the browser (server logic: nanochat/web.py).

    python -m scripts.chat_web                          # http://127.0.0.1:8000/, the newest SFT model
    python -m scripts.chat_web -i mid -g d20 -s 800 --port 0      # --port 0: any free port (URL printed)
    python -m scripts.chat_web --host 0.0.0.0 --num-gpus 8        # one model copy per GPU
    python -m scripts.chat_web --allowed-host chat.example.org    # behind a reverse proxy with that name

The URL is printed on one line ("nanochat web chat: http://HOST:PORT/") once the model is loaded.
API: POST /chat/completions (Server-Sent Events, Content-Type: application/json), GET /health.
Requests for another Host name (421) or from another site's page (403) are refused: see nanochat/web_request.py.
SIGINT/SIGTERM stop it gracefully.
"""
from __future__ import annotations

import argparse

from nanochat.chat import add_model_args, check_sampling
from nanochat.common import UserError, run_main


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(allow_abbrev=False, description="Serve a nanochat model as a web chat")
    add_model_args(ap)
    ap.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    ap.add_argument("--port", type=int, default=8000, help="port (0 = pick a free one and print the URL)")
    ap.add_argument("--num-gpus", type=int, default=None,
                    help="model copies, one per GPU (default: every visible CUDA device; 1 on CPU)")
    ap.add_argument("--max-concurrent", type=int, default=0,
                    help="completion requests in flight before 429 (default: 4 per model copy)")
    ap.add_argument("--max-chars", type=int, default=32000, help="most characters in a conversation (else 413)")
    ap.add_argument("-m", "--max-tokens", type=int, default=512, help="most (and default) tokens per answer")
    ap.add_argument("-t", "--temperature", type=float, default=0.6, help="default sampling temperature")
    ap.add_argument("-k", "--top-k", type=int, default=50, help="default top-k (0 = no limit)")
    ap.add_argument("--request-timeout", type=float, default=30.0,
                    help="seconds a client may stall while sending or receiving")
    ap.add_argument("--request-deadline", type=float, default=60.0,
                    help="seconds a client has to send a whole request, headers and body (else 408)")
    ap.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                    help="another name this server answers to, e.g. a reverse proxy's (repeatable); "
                         "requests for other Host names get 421")
    return ap


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port={args.port} is not a port: use 0..65535 (0 = any free port)")
    for name in ("max_chars", "max_tokens", "request_timeout", "request_deadline"):
        if not getattr(args, name) > 0:  # NaN too
            raise UserError(f"--{name.replace('_', '-')} must be positive")
    if args.max_concurrent < 0:
        raise UserError("--max-concurrent must be positive (0 = 4 per model copy)")
    for name in args.allowed_host:
        if not name.strip() or any(c in name for c in "/@ \t*"):
            raise UserError(f"--allowed-host takes a host name such as chat.example.org (no scheme, path or "
                            f"wildcard), got {name!r}")
    try:
        args.temperature, args.top_k = check_sampling(args.temperature, args.top_k,
                                                      names=("-t/--temperature", "-k/--top-k"))
    except ValueError as exc:
        raise UserError(str(exc)) from None
    from nanochat.web import make_server, serve
    serve(make_server(args))


if __name__ == "__main__":
    run_main(main)
