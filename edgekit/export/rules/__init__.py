"""Built-in rewrite rules; importing this package registers each of them in ``base.RULES``."""

from . import gelu, int32_inputs, mask_fill  # noqa: F401
