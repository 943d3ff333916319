"""`microgpt-lm-eval`: lm-eval's own command line, with the `microgpt` model registered.

    microgpt-lm-eval --model microgpt --model_args ckpt=<path>,batch_size=16 --tasks arc_easy,piqa

takes exactly lm-eval's arguments (`microgpt-lm-eval --help` is lm-eval's help). lm-eval 0.4.13
discovers no models outside its own package (it reads no plugin entry points), so a plain
`lm_eval --model microgpt` cannot find this one: this command is lm-eval's CLI with one model more.
"""

from __future__ import annotations

import sys

from microgpt.core.errors import ConfigError, report_user_errors


@report_user_errors
def main(argv: list[str] | None = None) -> None:
    """Run lm-eval's CLI on `argv` (default: the command line's own arguments)."""
    from microgpt.evals.lm_eval import register_microgpt

    register_microgpt()
    from lm_eval.__main__ import cli_evaluate

    saved = list(sys.argv)
    if argv is not None:
        sys.argv[1:] = list(argv)  # lm-eval's parser reads sys.argv itself
    try:
        cli_evaluate()
    except ValueError as e:
        if not str(e).startswith("Tasks not found"):
            raise
        raise ConfigError(f"lm-eval: {e}; `lm-eval ls tasks` lists lm-eval's own tasks, "
                          f"and --include_path <folder of task YAMLs> adds your own") from None
    finally:
        sys.argv[:] = saved


if __name__ == "__main__":
    main()
