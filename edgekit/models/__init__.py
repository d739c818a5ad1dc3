"""The architecture table: what pruning, distillation and export need to know of each model family."""
