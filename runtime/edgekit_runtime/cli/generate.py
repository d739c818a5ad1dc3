"""edgekit-run generate: continue a prompt with a causal-lm bundle (docs/decoder.md)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..errors import InputError
from ..generation.generate import GenerationConfig
from ..model import CausalLMModel, load
from .common import (EXIT_OK, PROG, UsageError, add_signature_arguments, non_negative_int, positive_int,
                     signature_key_from_args, temperature, top_p)

SAMPLING_FLAGS = ("temperature", "top_k", "top_p", "seed")


def _read_prompt(text: str) -> str:
    if text != "-":
        return text
    if sys.stdin is None or sys.stdin.isatty():
        raise UsageError("PROMPT is '-' but nothing is piped on stdin; pipe the prompt in, or give it as an argument")
    return sys.stdin.read().rstrip("\n")


def _generation_options(args: argparse.Namespace) -> dict[str, Any]:
    """The command line as generate() options; contradictions are usage errors, before any load."""
    options: dict[str, Any] = {name: getattr(args, name) for name in ("max_new_tokens", "min_new_tokens",
                                                                      *SAMPLING_FLAGS)
                               if getattr(args, name) is not None}
    sampling = [f"--{n.replace('_', '-')}" for n in SAMPLING_FLAGS if n in options]
    if args.greedy and (args.do_sample or sampling):
        raise UsageError(f"--greedy contradicts {' '.join(['--do-sample'] * args.do_sample + sampling)}: greedy "
                         f"decoding draws nothing; drop --greedy to sample")
    if args.greedy:
        options["do_sample"] = False
    elif args.do_sample or sampling:  # asking for a temperature (or top-k, top-p, seed) asks for sampling
        options["do_sample"] = True
    if args.stop:
        options["stop"] = tuple(args.stop)
    if args.think_budget is not None:
        if args.think not in (None, "budget"):
            raise UsageError(f"--think-budget only applies with --think budget, not --think {args.think}")
        options.update(think="budget", think_budget=args.think_budget)
    elif args.think is not None:
        options["think"] = args.think
    if args.no_chat:
        options["chat"] = False
    if args.stream and args.json:
        raise UsageError("--stream and --json both write the text to stdout; pick one (--json holds the timings "
                         "and the reasoning too)")
    try:
        GenerationConfig(**options)  # every value checked now; the bundle's defaults fill the rest later
    except InputError as exc:
        raise UsageError(str(exc).rstrip(".")) from None
    return options


def cmd_generate(args: argparse.Namespace) -> int:
    options = _generation_options(args)
    key = signature_key_from_args(args)
    prompt = _read_prompt(args.prompt)
    if not prompt.strip():
        raise UsageError("the prompt is empty; there is nothing to continue")
    model = load(args.bundle, backend=args.backend, threads=args.threads, public_key=key,
                 require_signature=args.require_signature)
    with model:
        if not isinstance(model, CausalLMModel):
            raise UsageError(f"{args.bundle} is a {model.task.name} bundle; generate needs a causal-lm bundle "
                             f"(use `{PROG} predict` for this one)")

        def stream(index: int, text: str) -> None:
            sys.stdout.write(text)
            sys.stdout.flush()

        try:
            result = model.generate([prompt], stream=stream if args.stream else None, **options)[0]
        except InputError as exc:  # the prompt is too long for the context, the bundle has no template, ...
            raise UsageError(str(exc).rstrip(".").replace("prompt 0", "the prompt")) from None
    if args.json:
        print(json.dumps(result.to_dict(), indent=2, ensure_ascii=False))
    elif args.stream:
        print()
    else:
        print(result.text)
    t = result.timings
    rate = lambda v, unit: "n/a" if v is None else f"{v:.1f} {unit}"  # noqa: E731
    print(f"{PROG} generate: {result.completion_tokens} tokens (finish: {result.finish_reason}"
          + (f", {result.think_tokens} in the think section" if result.think_tokens else "")
          + (", reasoning stripped" if options.get("think") == "strip" and result.reasoning else "")
          + f"); prompt {result.prompt_tokens} tokens; time to first token {t['time_to_first_token_s'] * 1e3:.1f} ms; "
          f"prefill {rate(t['prefill_tokens_per_s'], 'tokens/s')}; decode {rate(t['decode_tokens_per_s'], 'tokens/s')}",
          file=sys.stderr)
    return EXIT_OK


def add_generate_parser(sub, fmt, verbose: argparse.ArgumentParser, bundle_help: str, backends) -> None:
    p = sub.add_parser("generate", formatter_class=fmt, parents=[verbose],
                       help="generate text with a causal-lm bundle (Qwen2, DeepSeek-R1-Distill, Llama)",
                       description="Verify the bundle, pick the first backend of its profile that works here, and "
                                   "continue PROMPT (or stdin, when PROMPT is '-'). The bundle's chat template "
                                   "wraps the prompt as a user turn unless --no-chat. Decoding is greedy unless "
                                   "--do-sample or any of --temperature/--top-k/--top-p/--seed is given. The text "
                                   "goes to stdout; the token counts and timings (time to first token, prefill and "
                                   "decode tokens/s) go to stderr. Neither the prompt nor the text is logged or "
                                   "written anywhere else.",
                       epilog=f"examples:\n  {PROG} generate bundles/r1-1.5b \"What is 17 * 23?\" --stream\n"
                              f"  {PROG} generate bundles/r1-1.5b \"Plan a 3-day trip\" --think strip "
                              f"--max-new-tokens 512\n"
                              f"  {PROG} generate bundles/r1-1.5b \"Prove it\" --think-budget 256 --stream\n"
                              f"  {PROG} generate bundles/r1-1.5b \"Write a haiku\" --temperature 0.7 --top-p 0.9 "
                              f"--seed 1\n"
                              f"  cat question.txt | {PROG} generate bundles/qwen-0.5b - --no-chat "
                              f"--stop $'\\n\\n' --json")
    p.add_argument("bundle", metavar="BUNDLE", help=bundle_help)
    p.add_argument("prompt", metavar="PROMPT", help="the prompt; '-' reads it from stdin")
    p.add_argument("--stream", action="store_true", help="print the text as it is generated")
    p.add_argument("--json", action="store_true",
                   help="print the result as JSON: text, token_ids, finish_reason, reasoning, counts, timings")
    p.add_argument("--max-new-tokens", type=positive_int, default=None, metavar="N",
                   help="most tokens to generate (default: the bundle's; prompt + N must fit its max_context)")
    p.add_argument("--min-new-tokens", type=non_negative_int, default=None, metavar="N",
                   help="generate at least N tokens: end-of-sequence and stop token ids are not chosen before "
                        "(default 0)")
    sampling = p.add_argument_group("decoding (default: the bundle's, usually greedy)")
    sampling.add_argument("--do-sample", action="store_true", help="sample instead of taking the most likely token")
    sampling.add_argument("--greedy", action="store_true", help="always take the most likely token")
    sampling.add_argument("--temperature", type=temperature, default=None, metavar="T",
                          help="sampling temperature > 0 (below 1: more focused; implies --do-sample)")
    sampling.add_argument("--top-k", type=non_negative_int, default=None, metavar="K",
                          help="sample among the K most likely tokens (0: all; implies --do-sample)")
    sampling.add_argument("--top-p", type=top_p, default=None, metavar="P",
                          help="sample among the fewest tokens whose probability adds up to P (implies --do-sample)")
    sampling.add_argument("--seed", type=non_negative_int, default=None, metavar="S",
                          help="seed: the same seed, prompt and bundle give the same text (implies --do-sample)")
    p.add_argument("--stop", action="append", default=[], metavar="STR",
                   help="stop when the text contains STR (repeatable; the bundle's eos tokens always stop)")
    p.add_argument("--think", choices=("keep", "strip", "budget"), default=None,
                   help="R1 reasoning (<think>...</think>): keep it in the text (default), strip it (stdout gets "
                        "the answer only; --json keeps it under 'reasoning'), or budget (see --think-budget)")
    p.add_argument("--think-budget", type=non_negative_int, default=None, metavar="N",
                   help="after N reasoning tokens, force </think> and go on with the answer (implies --think budget)")
    p.add_argument("--no-chat", action="store_true",
                   help="feed PROMPT as is, without the bundle's chat template")
    p.add_argument("--threads", type=positive_int, default=None, metavar="N",
                   help="onnxruntime intra-op threads (default: onnxruntime's choice)")
    p.add_argument("--backend", choices=backends, default=None,
                   help="force one of the profile's backends (default: the first that works here)")
    add_signature_arguments(p)
    p.set_defaults(func=cmd_generate)
