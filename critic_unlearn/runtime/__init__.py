"""The distributed runtime on Ray; the only package that imports ray.

`train_ray(cfg)` runs the same Actor and Learner as `training.local.train_local`, as Ray actors:
see driver.py (the loop), supervisor.py (restarts), weights.py (broadcast), actor_worker.py and
learner_worker.py (the remote wrappers), progress.py (display and runtime metrics).
"""

from critic_unlearn.runtime.driver import train_ray
from critic_unlearn.runtime.errors import ActorFailed, RuntimeFailure

__all__ = ["ActorFailed", "RuntimeFailure", "train_ray"]
