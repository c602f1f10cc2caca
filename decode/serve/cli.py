"""mdlm-serve: an OpenAI-compatible HTTP server for a diffusion LM (see docs/serving.md).

    mdlm-serve --model runs/tiny                       # http://127.0.0.1:8000, the live page at /
    mdlm-serve --model GSAI-ML/LLaDA-8B-Instruct --trust-remote-code --port 8080 --api-key secret

Ctrl-C stops accepting connections, lets the running requests finish, and exits.
"""

from __future__ import annotations

import argparse
import os
import sys

from mdlm.decode.cli_errors import report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mdlm-serve", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", required=True, help="run folder, checkpoint folder or hub name")
    parser.add_argument("--family", default=None, help="model family (default: detected)")
    parser.add_argument("--served-model-name", default=None, help="the name /v1/models reports (default: --model)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 for every interface)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when available)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--trust-remote-code", action="store_true", help="for families whose code ships with the checkpoint")
    parser.add_argument("--max-batch", type=int, default=32, help="most sequences in the running batch; also the "
                        "most one request may ask for (prompts x n)")
    parser.add_argument("--max-queue", type=int, default=256, help="most requests waiting to join; beyond: 429")
    parser.add_argument("--max-tokens", type=int, default=64, help="max_tokens of a request that names none "
                        "(capped by the context)")
    parser.add_argument("--api-key", default=os.environ.get("MDLM_API_KEY"),
                        help="require 'Authorization: Bearer KEY' on /v1/ (default: $MDLM_API_KEY; none: open)")
    parser.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    return parser


def load(args):
    """(app, model name) of parsed arguments: loads the model (errors are one line)."""
    import torch

    from mdlm.decode.loading import load_denoiser
    from mdlm.decode.serve.app import create_app

    for name in ("max_batch", "max_queue", "max_tokens"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    denoiser, tokenizer, _ = load_denoiser(args.model, family=args.family, dtype=args.dtype, device=device,
                                           trust_remote_code=args.trust_remote_code)
    name = args.served_model_name or str(args.model)
    return create_app(denoiser, tokenizer, name, args.max_batch, args.max_queue, args.api_key, args.max_tokens), name


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        app, name = load(args)
    except Exception as error:  # noqa: BLE001  (one line, exit 2 for bad input)
        if os.environ.get("MDLM_TRACEBACK"):
            raise
        return report("mdlm-serve", error)
    import uvicorn

    where = f"http://{args.host}:{args.port}"
    print(f"mdlm-serve: {name} on {where} (page: {where}/, API: {where}/v1)"
          f"{'' if args.api_key else ', no API key'}", file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


if __name__ == "__main__":
    sys.exit(main())
