"""Adversarial training: learned soft prompts against the current adapter, in the loop.

`learn` finds k soft tokens that make the model draw the forgotten concept (the learned-prompt
attack; `critic-unlearn attack` judges them in `evaluation.attacks`); `pool` keeps what the attack
found, bounded, and encodes prompts with it; `loop` runs the attack every
`attack.in_loop_every` versions inside the learner worker and holds each version until the pool
goes out with it; `packets` carries the pool inside the adapter's weights packet. Nothing here
imports evaluation, the runtime or Ray: the learner process needs all of it and none of those.
"""
