"""Knowledge distillation: schedules, losses (logit KD, hidden states, attention maps), teacher cache.

The training loop that uses them is ``edgekit.train.loop.distill_train``.
"""

from .losses import (AttentionConfig, DistillConfig, HiddenProjection, HiddenStateConfig, LogitKDConfig,
                     distill_loss)
from .schedules import Schedule
from .teacher_cache import TeacherCache, TeacherOutputs, estimate_bytes

__all__ = ["AttentionConfig", "DistillConfig", "HiddenProjection", "HiddenStateConfig", "LogitKDConfig", "Schedule",
           "TeacherCache", "TeacherOutputs", "distill_loss", "estimate_bytes"]
