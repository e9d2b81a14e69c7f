"""LDM Lab's web demo: ``python app.py`` opens it on http://127.0.0.1:7860.

Models come from the shipped zoo (``models/``) and any run folder under ``runs/``;
``--models FOLDER_OR_HUB_ID`` adds any diffusers model LDM Lab loads beside them. No public share link unless ``--share`` is given.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported (by demo.ui)

from diffusers.utils import logging as diffusers_logging  # noqa: E402
from transformers.utils import logging as transformers_logging  # noqa: E402

from demo.service import Lab  # noqa: E402
from demo.ui import build_app  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="LDM Lab web demo")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    parser.add_argument("--share", action="store_true", help="create a public gradio.live link (off by default)")
    parser.add_argument("--models", action="append", default=[], metavar="DIR_OR_ID", help=(
        "add a model: a pipeline folder in any layout LDM Lab loads (its own, DDPMPipeline, LDMPipeline) or a "
        "Hugging Face hub id when online; a folder of model folders replaces the default listing (models/, runs/)"))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--concurrency", type=int, default=2, help="requests run at once; the rest queue")
    args = parser.parse_args(argv)

    # "Loading pipeline components" bars on every first use of a model say nothing a demo user can act on
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()

    roots = [Path(m) for m in args.models if Path(m).is_dir() and not (Path(m) / "model_index.json").is_file()]
    singles = [m for m in args.models if Path(m) not in roots]
    try:
        lab = Lab(model_dirs=roots or None, device=args.device, user_models=singles)
    except ValueError as err:  # a folder that is not a pipeline, pickled weights, an unknown or offline hub id
        parser.exit(2, f"error: --models: {err}\n")
    app = build_app(lab)
    app.queue(default_concurrency_limit=args.concurrency, max_size=256)
    app.launch(server_name=args.host, server_port=args.port, share=args.share, max_file_size="10mb")


if __name__ == "__main__":
    main()
