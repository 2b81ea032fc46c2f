"""Where a run's workers live: in this process (`train_local`) or as Ray actors (`train_ray`).

Both drive the same run loop (training/loop.py) through the same workers: local.py and driver.py
(placement and call routing), actor_worker.py and learner_worker.py (the workers), supervisor.py
(actor restarts under Ray), weights.py (broadcast through the object store), cluster.py (Ray
start/connect and first-contact checks). The only package that imports ray.
"""

from critic_unlearn.runtime.driver import train_ray
from critic_unlearn.runtime.errors import ActorFailed, RuntimeFailure
from critic_unlearn.runtime.local import train_local

__all__ = ["ActorFailed", "RuntimeFailure", "train_local", "train_ray"]
