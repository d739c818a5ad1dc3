"""The one compiler every task goes through: the pass contract (state), preflight (target) and the
run loop (run). Import the submodules; this file imports nothing, so the leaf state module loads alone."""
