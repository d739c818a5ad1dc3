"""The run loop every task shares: preflight, the work directory, the passes, the atomic bundle write.

``compile_bundle(recipe, profile)`` resolves the task adapter from the recipe, the Target once
(preflight), runs the adapter's ordered pass list (each timed into the pass log, progress echoed),
then writes the bundle atomically. A failure (Ctrl-C and kill -9 included) writes no bundle and
keeps the work directory; rerunning with ``resume=True`` continues from what the passes saved there.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

import edgekit_runtime
from edgekit_runtime.bundle.signing import load_private_key
from edgekit_runtime.errors import BundleError, EdgekitError

from ..tasks import get_task
from .state import CompileState
from .target import resolve_target

VOLATILE = ("bundle", "threads")  # recipe sections a resumed run may change


def work_dir(out: Path) -> Path:
    """Where a compile keeps what --resume needs; removed after a successful compile."""
    return out.parent / f".{out.name}.work"


def check_resumable(workdir: Path, recipe) -> None:
    saved = workdir / "recipe.json"
    if not saved.is_file():
        raise EdgekitError(f"--resume: nothing to resume in {workdir}. Fix: run the compile without --resume.")
    before = json.loads(saved.read_text())
    now = json.loads(json.dumps(recipe.to_dict()))
    for volatile in VOLATILE:
        before.pop(volatile, None)
        now.pop(volatile, None)
    if before != now:
        changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
        raise EdgekitError(f"--resume: the recipe changed since the interrupted run (sections {changed}). "
                           f"Fix: resume with the same recipe and flags, or run without --resume to start over.")


def start_state(recipe, profile, *, resume: bool = False, echo: Callable[[str], None] = print) -> CompileState:
    """Preflight (refuse what cannot finish), then the work directory (fresh, or the one to resume)."""
    adapter = get_task(recipe.task)
    out = Path(recipe.bundle.out) if recipe.bundle.out else adapter.default_out(profile)
    # An interrupted --force run may have left the old bundle at --out: resuming it is what --resume is for.
    if out.exists() and not recipe.bundle.force and not (resume and work_dir(out).is_dir()):
        raise BundleError(f"{out} already exists. Fix: pass --force to replace it, or choose another --out.")
    target = resolve_target(recipe, profile, adapter)
    if recipe.threads:
        import torch

        torch.set_num_threads(recipe.threads)
    workdir = work_dir(out)
    if resume:
        check_resumable(workdir, recipe)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
        workdir.mkdir(parents=True)
        (workdir / "recipe.json").write_text(json.dumps(recipe.to_dict(), indent=2))
    return CompileState(recipe=recipe, profile=profile, target=target, adapter=adapter, workdir=workdir,
                        echo=echo, resume=resume, bundle_path=out)


def run_passes(state: CompileState, names: list[str] | None = None) -> None:
    """Run the adapter's passes in order, each timed into the pass log.

    ``names`` None: the adapter's list for ``state.recipe``, re-read whenever a pass rewrites the
    recipe (the budget plan decides whether a student and int8 follow) and resumed after the
    pass that did it; a pass's ``rerun_from`` sends the run back to that pass (a back-off retry).
    """
    echo = state.echo
    fixed = names is not None
    names = list(names) if fixed else state.adapter.pass_names(state.recipe)
    i = 0
    while i < len(names):
        name = names[i]
        echo(f"[{i + 1}/{len(names)}] {name}")
        recipe = state.recipe
        start = time.perf_counter()
        result = state.adapter.PASSES[name](state)
        seconds = time.perf_counter() - start
        state.pass_log.append({"name": name, "seconds": round(seconds, 2), "changed": result.changed,
                               "figures": result.figures, "notes": result.notes})
        for note in result.notes:
            echo(f"      {note}")
        echo(f"      done in {seconds:.1f}s")
        if state.recipe is not recipe:  # a pass rewrote the recipe: preflight it again
            state.target = resolve_target(state.recipe, state.profile, state.adapter)
            if not fixed:
                names = state.adapter.pass_names(state.recipe)
        # pass names are unique within a list: carry on after this one, or go back to the retry's start
        i = names.index(result.rerun_from) if result.rerun_from else names.index(name) + 1


def write_output(state: CompileState, signing_key=None) -> None:
    """The bundle, atomically (the runtime's writer), then its signature and archive."""
    recipe = state.recipe
    state.bundle_path = edgekit_runtime.write_bundle(state.bundle_path, state.adapter.bundle_files(state),
                                                     state.adapter.manifest(state),
                                                     overwrite=recipe.bundle.force or state.bundle_path.exists())
    if signing_key is not None:  # before the archive, so the .tar carries manifest.sig
        record = edgekit_runtime.sign_bundle(state.bundle_path, signing_key)
        state.echo(f"signed {state.bundle_path}: manifest.sig, ed25519 key id {record['key_id'][:16]}...")
    if recipe.bundle.archive:
        edgekit_runtime.archive_bundle(state.bundle_path)


def compile_bundle(recipe, profile, *, echo: Callable[[str], None] = print, resume: bool = False,
                   sign_key: str | Path | None = None) -> CompileState:
    """Run every pass of the recipe's task, then write the bundle atomically. A failure leaves no
    bundle and keeps the work directory so that ``resume=True`` continues. ``sign_key``: an ed25519
    private key PEM; the bundle gets manifest.sig before it is archived."""
    signing_key = load_private_key(sign_key) if sign_key is not None else None  # preflight: before any training
    state = start_state(recipe, profile, resume=resume, echo=echo)
    try:
        run_passes(state)
        write_output(state, signing_key)
    except BaseException:
        echo(f"compile stopped; work kept in {state.workdir} (rerun the same command with --resume to continue)")
        raise
    shutil.rmtree(state.workdir, ignore_errors=True)
    return state


def plan_only(recipe, profile) -> str:
    """`--plan`: load the data and the teacher, and print what pruning would cut (nothing is trained)."""
    adapter = get_task(recipe.task)
    target = resolve_target(recipe, profile, adapter)
    state = CompileState(recipe=recipe, profile=profile, target=target, adapter=adapter,
                         workdir=Path(tempfile.mkdtemp(prefix="edgekit-plan-")), echo=lambda s: None)
    try:
        return adapter.plan(state)
    finally:
        shutil.rmtree(state.workdir, ignore_errors=True)
