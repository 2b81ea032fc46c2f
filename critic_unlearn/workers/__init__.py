"""The learner's and an actor's workers, without Ray: what both runtimes run.

`learner.LearnerWorker`: sample a fresh-enough batch from the replay, step, publish (the stale-
buffer release when the rate limiter and the staleness bound deadlock; the adversarial pool in
the loop). `actor.ActorWorker`: wait for room in the replay, sample with the newest weights,
write; a version offered mid-batch waits as pending until the batch boundary. The local runtime
(runtime/local.py) calls them in its own process; the Ray runtime wraps them as Ray actors
(runtime/actor_worker.py, runtime/learner_worker.py). Nothing here imports Ray.
"""
